"""Side by side: the AUC tables and curves of several finished sweeps (e.g. the `cpu` ladder with
``--update dense`` and with ``--update sparse``), one model.

    python tools/compare_sweeps.py dense=sweeps/cpu sparse=sweeps/cpu-sparse --out docs/sweeps/cpu-regimes

Reads each sweep's ``results.json`` (seed 0 of every cell, as the sweep's own table) and writes
``OUT/compare.md`` (batch x rule x sweep, then each rule's top-minus-base change per sweep) and
``OUT/auc_vs_batch.png`` (a colour per rule, a line style per sweep). The sweeps must share
their batches' base; a cell missing from one shows as a dash.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctr.optim.scaling import RULES, format_batch  # noqa: E402

STYLES = ["-", "--", ":", "-."]


def load(label_dir: str) -> tuple[str, dict[str, Any]]:
    label, sep, path = label_dir.partition("=")
    if not sep:
        label, path = Path(label_dir).name, label_dir
    f = Path(path) / "results.json"
    if not f.is_file():
        raise SystemExit(f"compare_sweeps: {f} is not a file (is {path} a finished ctr-sweep directory?)")
    return label, json.loads(f.read_text())


def table(sweeps: dict[str, dict[str, Any]], model: str
          ) -> tuple[list[int], list[str], dict[tuple[str, int, str], float]]:
    auc: dict[tuple[str, int, str], float] = {}
    for label, res in sweeps.items():
        for r in res["results"]:
            if r["model"] == model and r["seed"] == 0 and r["status"] == "ok":
                auc[(label, r["batch"], r["rule"])] = r["test_auc"]
    batches = sorted({b for (_, b, _) in auc})
    rules = [r for r in RULES if any(k[2] == r for k in auc)]
    return batches, rules, auc


def render(sweeps: dict[str, dict[str, Any]], model: str, sources: dict[str, str]) -> str:
    batches, rules, auc = table(sweeps, model)
    labels = list(sweeps)
    head = [f"{rule} ({label})" for rule in rules for label in labels]
    lines = [f"# {model}: {' vs '.join(labels)}", "",
             "Test AUC, seed 0 of each cell. Sweeps: " +
             "; ".join(f"{k} = `{v}`" for k, v in sources.items()) + ".", "",
             "| batch | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]

    def cell(label: str, b: int, rule: str) -> str:
        v = auc.get((label, b, rule))
        return "—" if v is None else f"{v:.4f}"
    for b in batches:
        lines.append(f"| {format_batch(b)} | " + " | ".join(cell(la, b, ru) for ru in rules for la in labels) + " |")
    if len(batches) >= 2:
        lo, hi = batches[0], batches[-1]
        diffs = []
        for ru in rules:
            for la in labels:
                a, z = auc.get((la, lo, ru)), auc.get((la, hi, ru))
                diffs.append("—" if a is None or z is None else f"**{z - a:+.4f}**")
        lines.append(f"| **{format_batch(hi)} − {format_batch(lo)}** | " + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n"


def plot(sweeps: dict[str, dict[str, Any]], model: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batches, rules, auc = table(sweeps, model)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rule in enumerate(rules):
        for j, label in enumerate(sweeps):
            pts = [(b, auc[(label, b, rule)]) for b in batches if (label, b, rule) in auc]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLES[j % len(STYLES)], marker="o",
                        color=colours[i % len(colours)], label=f"{rule} ({label})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [format_batch(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{model}: AUC vs batch size, {' vs '.join(sweeps)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", help="LABEL=DIR (or DIR) of a finished ctr-sweep")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--out", required=True, help="directory for compare.md and auc_vs_batch.png")
    args = p.parse_args(argv)
    loaded = [load(s) for s in args.sweeps]
    sweeps = dict(loaded)
    if len(sweeps) != len(loaded):
        raise SystemExit("compare_sweeps: two sweeps have the same label; name them LABEL=DIR")
    sources = {label: s.partition("=")[2] or s for (label, _), s in zip(loaded, args.sweeps)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = render(sweeps, args.model, sources)
    (out / "compare.md").write_text(md)
    plot(sweeps, args.model, out / "auc_vs_batch.png")
    print(md, end="")
    print(f"wrote {out / 'compare.md'} and {out / 'auc_vs_batch.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
