"""The batch-size sweep: every (model, batch, rule, seed) cell trained the same way, resumably.

::

    SweepSpec (preset YAML + flags)
        │ cells = models x batches x rules (x extra seeds of one cell, for the noise level)
        ▼
    for each cell not yet done:   python -m ctr.cli.train ... --out OUT/runs/<cell>
        │ (a subprocess: memory is returned between cells, --nproc works, a crash
        │  or a divergence stays inside its cell; an interrupted cell resumes)
        ▼
    after each cell: OUT/results.json, OUT/report.md, OUT/auc_vs_batch.png (ctr.sweep.report)

A cell counts as done once its ``summary.json`` says ``ok`` or ``diverged``; re-running the
sweep skips those, so a sweep stopped at any point continues where it was.

Example::

    spec = SweepSpec.from_preset("quick")
    run_sweep(spec)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctr.data.dataset import read_meta
from ctr.optim.scaling import RULES, format_batch, parse_batch
from ctr.train.config import CONFIG_DIR

PRESET_DIR = CONFIG_DIR / "sweeps"
DONE = ("ok", "diverged")


@dataclass
class SweepSpec:
    name: str = "sweep"
    models: list[str] = field(default_factory=lambda: ["deepfm"])
    batches: list[int] = field(default_factory=lambda: [1024, 8192])
    rules: list[str] = field(default_factory=lambda: list(RULES))
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 1
    base_batch: int | None = None            # the scaling rules' base (default: the model config's)
    data: str | None = None                  # processed dataset; None: synthetic per `synthetic`
    synthetic: dict[str, Any] = field(default_factory=dict)   # {rows, seed} of generated data
    train_args: list[str] = field(default_factory=list)       # extra ctr-train flags for every cell
    spread: dict[str, Any] = field(default_factory=dict)      # {batch, rule, seeds}: noise check
    nproc: int = 1
    jobs: int = 1                             # cells trained at once (threads split between them)
    out: str | None = None

    @classmethod
    def from_preset(cls, name_or_path: str, **overrides: Any) -> "SweepSpec":
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no sweep preset {name_or_path!r} (presets: {names})")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        values.setdefault("name", path.stem)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).normalised()

    def normalised(self) -> "SweepSpec":
        self.batches = [parse_batch(b) for b in self.batches]
        if self.base_batch is not None:
            self.base_batch = parse_batch(self.base_batch)
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise ValueError(f"unknown scaling rule(s) {bad}; choose from {RULES}")
        if self.spread:
            self.spread = {**self.spread, "batch": parse_batch(self.spread["batch"])}
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("sweeps") / self.name)


@dataclass(frozen=True)
class Cell:
    model: str
    batch: int
    rule: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-{format_batch(self.batch)}-{self.rule}-s{self.seed}"


def alias_of(cell: Cell, spec: SweepSpec) -> Cell | None:
    """At the base batch (s = 1) the none / sqrt / linear rules resolve to the same
    hyperparameters, so their cells share the `none` cell's run instead of repeating it."""
    base = spec.base_batch
    if base and cell.batch == base and cell.rule in ("sqrt", "linear") and "none" in spec.rules:
        return Cell(cell.model, cell.batch, "none", cell.seed)
    return None


def cell_dir(out: Path, cell: Cell, spec: SweepSpec) -> Path:
    return out / "runs" / (alias_of(cell, spec) or cell).name


def cells(spec: SweepSpec) -> list[Cell]:
    out = [Cell(m, b, r, s) for m in spec.models for s in spec.seeds
           for b in sorted(spec.batches) for r in spec.rules]
    if spec.spread:
        for m in spec.models:
            for s in spec.spread.get("seeds", []):
                c = Cell(m, spec.spread["batch"], spec.spread.get("rule", "cowclip"), int(s))
                if c not in out:
                    out.append(c)
    return out


def resolve_data(spec: SweepSpec) -> str:
    """The sweep's dataset: the given one, or synthetic data generated once for it."""
    if spec.data:
        return spec.data
    from ctr.data.synth import ensure_demo_dataset  # reuses it unless the generator changed
    rows = int(spec.synthetic.get("rows", 1_000_000))
    seed = int(spec.synthetic.get("seed", 0))
    path = ensure_demo_dataset(Path("data") / f"synthetic-{rows}-s{seed}", rows=rows, seed=seed)
    return str(path)


def cell_summary(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / "summary.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def run_cell(cell: Cell, spec: SweepSpec, data: str, run_dir: Path, threads: int | None = None) -> int:
    cmd = [sys.executable, "-m", "ctr.cli.train", "--model", cell.model, "--batch", str(cell.batch),
           "--scaling", cell.rule, "--seed", str(cell.seed), "--epochs", str(spec.epochs),
           "--data", data, "--out", str(run_dir), "--quiet", *map(str, spec.train_args)]
    if spec.base_batch:
        cmd += ["--base-batch", str(spec.base_batch)]
    if spec.nproc > 1:
        cmd += ["--nproc", str(spec.nproc)]
    if (run_dir / "checkpoint" / "latest.json").is_file():
        cmd.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(run_dir / "train.log", "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_sweep(spec: SweepSpec, progress: bool = True) -> dict[str, Any]:
    """Trains every cell not yet done, rewriting the report after each; returns the results."""
    from ctr.sweep.report import write_report
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    data = resolve_data(spec)
    all_cells = cells(spec)
    todo = [c for c in all_cells if alias_of(c, spec) is None
            and (cell_summary(out / "runs" / c.name) or {}).get("status") not in DONE]
    if progress:
        shared = sum(alias_of(c, spec) is not None for c in all_cells)
        print(f"sweep {spec.name}: {len(all_cells)} cells ({shared} share a run), "
              f"{len(all_cells) - shared - len(todo)} done, {len(todo)} to run -> {out}", flush=True)
    t0 = time.time()
    lock = threading.Lock()
    started = [0]
    # The ETA weighs cells by optimizer steps: at small batch the whole-table pass per step,
    # not the samples, sets a cell's time (a batch-8 cell takes ~12x as long as a batch-128 one here).
    train_rows = int(read_meta(data)["splits"]["train"]["rows"])
    steps_of = {c: spec.epochs * -(-train_rows // c.batch) for c in todo}
    steps_done = [0]
    # Small batches are latency-bound: several cells with fewer threads each use the cores better.
    threads = max(1, (os.cpu_count() or 1) // spec.jobs) if spec.jobs > 1 else None

    def one(cell: Cell) -> None:
        with lock:
            started[0] += 1
            i = started[0]
            if progress:
                left = sum(steps_of.values()) - steps_done[0]
                eta = (f", ~{(time.time() - t0) / steps_done[0] * left / 60:.0f} min left"
                       if steps_done[0] else "")
                print(f"[{i}/{len(todo)}] {cell.model} batch {format_batch(cell.batch)} rule {cell.rule} "
                      f"seed {cell.seed} ({len(todo) - i} remain after this{eta})", flush=True)
        code = run_cell(cell, spec, data, out / "runs" / cell.name, threads)
        s = cell_summary(out / "runs" / cell.name) or {}
        with lock:
            steps_done[0] += steps_of[cell]
            if progress:
                print(f"      {cell.name} -> {s.get('status', f'failed (exit {code}, see train.log)')}"
                      + (f", test AUC {s['test_auc']:.4f}" if "test_auc" in s else ""), flush=True)
            write_report(spec, all_cells, out, data)

    with ThreadPoolExecutor(max_workers=max(1, spec.jobs)) as pool:
        list(pool.map(one, todo))
    return write_report(spec, all_cells, out, data)
