"""The sweep's outputs: ``results.json``, ``report.md`` and a plot of AUC against batch size.

::

    OUT/runs/<cell>/summary.json ──collect──▶ results.json   one record per cell
                                            ▶ report.md      a table per model: batch x rule
                                            ▶ auc_vs_batch.png  one line per rule, the smallest
                                                             batch's AUC as a dashed reference

Every file is written to a temporary name and renamed (:mod:`ctr.fsutil`), so a reader never
sees half of one and a killed sweep's temporaries are cleaned by the next.
"""

from __future__ import annotations

import os
import math
import statistics
from pathlib import Path
from typing import Any

from ctr.fsutil import temp_path, write_bytes_atomic, write_json_atomic
from ctr.optim.scaling import format_batch
from ctr.sweep.spec import Cell, SweepSpec, cell_dir
from ctr.train.rundir import read_summary


def collect(spec: SweepSpec, all_cells: list[Cell], out: Path) -> list[dict[str, Any]]:
    rows = []
    for c in all_cells:
        s = read_summary(cell_dir(out, c, spec))
        rec = {"model": c.model, "batch": c.batch, "rule": c.rule, "seed": c.seed, "cell": c.name,
               "status": (s or {}).get("status", "pending")}
        if s:
            for k in ("update", "test_auc", "test_logloss", "wall_seconds", "train_seconds",
                      "samples_per_second", "global_steps", "peak_rss_mb", "message", "hparams", "sparse_l2",
                      "numerics"):
                if k in s:
                    rec[k] = s[k]
        rows.append(rec)
    return rows


def _fmt_cell(r: dict[str, Any] | None) -> str:
    if r is None or r["status"] == "pending":
        return "—"
    if r["status"] == "diverged":
        return "**diverged**"
    if r["status"] != "ok":
        return r["status"]
    return (f"{r['test_auc']:.4f} / {r['test_logloss']:.4f} / {r['train_seconds'] / 60:.1f} min / "
            f"{r['samples_per_second']:,.0f}")


def spread(results: list[dict[str, Any]], model: str, batch: int, rule: str) -> dict[str, Any] | None:
    aucs = [r["test_auc"] for r in results if r["model"] == model and r["batch"] == batch
            and r["rule"] == rule and r["status"] == "ok"]
    if len(aucs) < 2:
        return None
    return {"model": model, "batch": batch, "rule": rule, "seeds": len(aucs),
            "mean": statistics.mean(aucs), "std": statistics.stdev(aucs),
            "range": max(aucs) - min(aucs)}


def auc_changes(spec, results: list[dict[str, Any]], model: str) -> list[str]:
    """Per rule, AUC at the largest batch minus AUC at the base batch (the spec's base_batch,
    else the smallest batch): the number the paper is about. Said to be absent when the base
    batch is not in the sweep or is its only batch, rather than a difference of a batch with itself."""
    base, hi = spec.base_batch or min(spec.batches), max(spec.batches)
    if base not in spec.batches:
        return [f"- no AUC change from the base batch: the base batch {format_batch(base)} is absent "
                f"from this sweep (batches {', '.join(format_batch(b) for b in sorted(spec.batches))})"]
    if hi == base:
        return [f"- no AUC change from the base batch: {format_batch(base)} is this sweep's only batch"]
    ok = {(r["batch"], r["rule"]): r["test_auc"] for r in results
          if r["model"] == model and r["status"] == "ok" and r["seed"] == spec.seeds[0]}
    lines = []
    for rule in spec.rules:
        iv = change_interval(results, model, rule, base, hi)
        if iv is not None:
            lines.append(f"- {rule}: AUC at {format_batch(hi)} minus AUC at {format_batch(base)} = "
                         f"{iv['mean']:+.4f}, 95% interval [{iv['low']:+.4f}, {iv['high']:+.4f}] "
                         f"({iv['seeds_base']} / {iv['seeds_top']} seeds): {iv['verdict']}")
        elif (base, rule) in ok and (hi, rule) in ok:
            lines.append(f"- {rule}: AUC at {format_batch(hi)} minus AUC at {format_batch(base)} = "
                         f"{ok[(hi, rule)] - ok[(base, rule)]:+.4f} (one seed)")
    return lines


HOLDS_WITHIN = 0.002   # "holds the AUC": loses at most this much at the top batch (the paper's bar)


def change_interval(results: list[dict[str, Any]], model: str, rule: str, base: int, top: int
                    ) -> dict[str, Any] | None:
    """Mean AUC at ``top`` minus mean AUC at ``base`` over the seeds each has (at least 2 each),
    with a 95% Welch t-interval (the seeds' runs at the two batches are independent draws), and
    what it says: ``holds`` when the whole interval is above ``-HOLDS_WITHIN``, ``loses`` when it
    is all below, else undecided. None with fewer than 2 seeds at either batch."""
    def aucs(batch: int) -> list[float]:
        return [r["test_auc"] for r in results if r["model"] == model and r["rule"] == rule
                and r["batch"] == batch and r["status"] == "ok"]
    a, b = aucs(top), aucs(base)
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        low = high = diff
    else:
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = float(stats.t.ppf(0.975, dof)) * se
        low, high = diff - half, diff + half
    verdict = ("holds" if low > -HOLDS_WITHIN else "loses" if high < -HOLDS_WITHIN else
               f"undecided: the interval straddles -{HOLDS_WITHIN}")
    return {"mean": diff, "low": low, "high": high, "seeds_top": len(a), "seeds_base": len(b),
            "verdict": verdict}


def _machine(results: list[dict[str, Any]]) -> str:
    """`` on <CPU>, <threads> threads`` as the cells' summaries recorded it (each distinct one)."""
    seen = sorted({(n.get("cpu", "?"), n.get("threads", "?")) for r in results
                   if isinstance(n := r.get("numerics"), dict)}, key=str)
    return "".join(f" on {cpu}, {threads} threads" if i == 0 else f"; {cpu}, {threads} threads"
                   for i, (cpu, threads) in enumerate(seen))


def _updates(results: list[dict[str, Any]]) -> str:
    """``table update dense`` (or ``sparse, L2 count``) as the cells' summaries recorded it."""
    seen = sorted({r["update"] + (f", L2 {r.get('sparse_l2', 'batch')}" if r["update"] == "sparse" else "")
                   for r in results if "update" in r})
    return f"; table update {' / '.join(seen)}" if seen else ""


def render_markdown(spec, results: list[dict[str, Any]], data: str) -> str:
    lines = [f"# Sweep `{spec.name}`", "",
             f"Data: `{data}`; {spec.epochs} epoch(s) per cell; seeds {spec.seeds}{_updates(results)}; "
             f"numerics {spec.numerics}{_machine(results)}. "
             "Each cell: test AUC / logloss / training time / samples per second.", ""]
    for model in spec.models:
        lines += [f"## {model}", "", "| batch | " + " | ".join(spec.rules) + " |",
                  "|---|" + "---|" * len(spec.rules)]
        for b in sorted(spec.batches):
            cells = []
            for rule in spec.rules:
                rs = [r for r in results if r["model"] == model and r["batch"] == b and r["rule"] == rule
                      and r["seed"] == spec.seeds[0]]
                cells.append(_fmt_cell(rs[0] if rs else None))
            lines.append(f"| {format_batch(b)} | " + " | ".join(cells) + " |")
        lines.append("")
        if spec.spread:
            sp = spread(results, model, spec.spread["batch"], spec.spread.get("rule", "cowclip"))
            if sp:
                lines += [f"Seed-to-seed spread of {model} at {format_batch(sp['batch'])} / {sp['rule']}: "
                          f"{sp['seeds']} seeds, mean AUC {sp['mean']:.4f}, std {sp['std']:.4f}, "
                          f"range {sp['range']:.4f}.", ""]
        lines += auc_changes(spec, results, model) + [""]
    diverged = [r["cell"] for r in results if r["status"] == "diverged"]
    if diverged:
        lines += ["Diverged cells: " + ", ".join(diverged), ""]
    return "\n".join(lines)


def plot(spec, results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = spec.models
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        base = None
        for rule in spec.rules:
            pts = sorted((r["batch"], r["test_auc"]) for r in results if r["model"] == model
                         and r["rule"] == rule and r["status"] == "ok" and r["seed"] == spec.seeds[0])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rule)
                if pts[0][0] == min(spec.batches) and (base is None or rule == "cowclip"):
                    base = pts[0][1]
            div = [r["batch"] for r in results if r["model"] == model and r["rule"] == rule
                   and r["status"] == "diverged"]
            for b in div:
                ax.annotate("✗", (b, ax.get_ylim()[0]), ha="center", color="red")
        if base is not None:
            ax.axhline(base, ls="--", color="grey", lw=1,
                       label=f"AUC at {format_batch(min(spec.batches))}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(spec.batches), [format_batch(b) for b in sorted(spec.batches)])
        ax.set_xlabel("batch size")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{model}: AUC vs batch size ({spec.name})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = temp_path(path)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def write_report(spec, all_cells: list, out: Path, data: str) -> dict[str, Any]:
    results = collect(spec, all_cells, out)
    spreads = [s for m in spec.models if spec.spread
               for s in [spread(results, m, spec.spread["batch"], spec.spread.get("rule", "cowclip"))] if s]
    payload = {"name": spec.name, "data": data, "epochs": spec.epochs, "results": results,
               "spread": spreads}
    write_json_atomic(out / "results.json", payload)
    write_bytes_atomic(out / "report.md", render_markdown(spec, results, data).encode())
    if any(r["status"] == "ok" for r in results):
        plot(spec, results, out / "auc_vs_batch.png")
    return payload
