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
sweep skips those, so a sweep stopped at any point continues where it was. One sweep at a time
per OUT (its ``DirLock``); a cell whose run directory another live process holds is skipped,
not started a second time. Cells are :func:`ctr.procs.run_child` children: they end when the
sweep is killed, and on Ctrl-C the sweep starts nothing new, waits for the running cells to save
their checkpoint and raises :class:`SweepInterrupted`.

Example::

    spec = SweepSpec.from_preset("quick")
    run_sweep(spec)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctr.data.dataset import read_meta
from ctr.faults import fault_point
from ctr.fsutil import DirLock, DirLockError, clean_stale_temps, write_json_atomic
from ctr.optim.scaling import RULES, format_batch, parse_batch
from ctr.procs import forward_signals, run_child
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
        """The preset (a name under configs/sweeps or a YAML path) with ``overrides`` (None: keep).
        Raises FileNotFoundError or ValueError with a message that names the file."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no sweep preset {name_or_path!r}: {path} is not a file "
                                    f"(presets: {names}, or a YAML path)")
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f)  # a stream: YAML errors then name the file
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read it ({e})") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a sweep preset is a mapping (models: ..., batches: ...), "
                             f"not a {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        values.setdefault("name", path.stem)
        try:
            spec = cls(**values).normalised()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(spec, **given).normalised()

    def normalised(self) -> "SweepSpec":
        """Checks every field (ValueError naming it), parses batch sizes, drops repeated values
        (a cell listed twice would run twice, at once under --jobs)."""
        self.name = _text("name", self.name)
        self.models = _unique(_values("models", self.models, str))
        batches = _values("batches", self.batches, (int, float, str))
        self.batches = _unique([_batch("batches", b) for b in batches])
        self.rules = _unique(_values("rules", self.rules, str))
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise ValueError(f"unknown scaling rule(s) {bad}; choose from {RULES}")
        self.seeds = _unique(_values("seeds", self.seeds, int))
        for key in ("epochs", "nproc", "jobs"):
            setattr(self, key, _count(key, getattr(self, key)))
        if self.base_batch is not None:
            self.base_batch = _batch("base_batch", self.base_batch)
        for key in ("data", "out"):
            if getattr(self, key) is not None:
                setattr(self, key, _text(key, getattr(self, key)))
        self.synthetic = _mapping("synthetic", self.synthetic, {"rows": int, "seed": int})
        self.train_args = [str(a) for a in _values("train_args", self.train_args, (str, int, float),
                                                   allow_empty=True)]
        self.spread = _mapping("spread", self.spread,
                               {"batch": (int, float, str), "rule": str, "seeds": list})
        if self.spread:
            if "batch" not in self.spread:
                raise ValueError("spread needs a batch (spread: {batch: 1k, rule: cowclip, seeds: [1, 2]})")
            self.spread["batch"] = _batch("spread.batch", self.spread["batch"])
            if self.spread.get("rule", "cowclip") not in RULES:
                raise ValueError(f"spread.rule must be one of {RULES}, not {self.spread['rule']!r}")
            self.spread["seeds"] = _unique(_values("spread.seeds", self.spread.get("seeds", []), int,
                                                   allow_empty=True))
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("sweeps") / self.name)


def _kind(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "a whole number", str: "text", float: "a number", list: "a list"}[k]
                       for k in kinds)


def _is(value: Any, kind: type | tuple) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _values(key: str, value: Any, kind: type | tuple, allow_empty: bool = False) -> list:
    """A list of ``kind`` (one bare value counts as a list of one)."""
    if _is(value, kind) and not isinstance(value, list):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ValueError(f"{key} must be a{'' if allow_empty else ' non-empty'} list, not {value!r}")
    for v in value:
        if not _is(v, kind):
            raise ValueError(f"{key}: {v!r} is not {_kind(kind)}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be non-empty text, not {value!r}")
    return value


def _count(key: str, value: Any) -> int:
    if not _is(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number >= 1, not {value!r}")
    return value


def _batch(key: str, value: Any) -> int:
    try:
        return parse_batch(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def _mapping(key: str, value: Any, kinds: dict[str, type | tuple]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping with keys {sorted(kinds)}, not {value!r}")
    for k, v in value.items():
        if k not in kinds:
            raise ValueError(f"{key}: unknown key {k!r}; known: {sorted(kinds)}")
        if not _is(v, kinds[k]):
            raise ValueError(f"{key}.{k} must be {_kind(kinds[k])}, not {v!r}")
    return dict(value)


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


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
                out.append(c)
    return _unique(out)


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
    except (OSError, json.JSONDecodeError):
        return None


def run_cells(spec: SweepSpec, all_cells: list[Cell] | None = None) -> list[Cell]:
    """The cells that train a run of their own: each run once, aliases folded into theirs."""
    return _unique([alias_of(c, spec) or c for c in (cells(spec) if all_cells is None else all_cells)])


def run_status(out: Path, cell: Cell) -> str:
    """``ok`` / ``diverged`` (done), ``interrupted``, ... from its summary; ``pending`` without one."""
    return str((cell_summary(out / "runs" / cell.name) or {}).get("status", "pending"))


def tally(spec: SweepSpec, out: Path) -> dict[str, list[str]]:
    """Run names by status, every run counted once (cells that share a run are one run)."""
    by: dict[str, list[str]] = {}
    for c in run_cells(spec):
        by.setdefault(run_status(out, c), []).append(c.name)
    return by


def run_in_use(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be trained now: ctr-train holds its lock for the whole run, so a
    held lock means a live process is still training (or saving) it; None when it is free."""
    if not run_dir.is_dir():
        return None
    try:
        DirLock(run_dir, what="run directory").acquire().release()
    except DirLockError as e:
        return str(e)
    return None


class SweepInterrupted(Exception):
    """The sweep stopped on a signal: no new cell was started, the running ones were waited for."""

    def __init__(self, signum: int, finished: list[str], payload: dict[str, Any]):
        super().__init__(f"sweep interrupted by {signal.Signals(signum).name}")
        self.signum, self.finished, self.payload = signum, finished, payload

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for Ctrl-C, EXIT_INTERRUPTED


def run_cell(cell: Cell, spec: SweepSpec, data: str, run_dir: Path, threads: int | None = None) -> int:
    cmd = [sys.executable, "-m", "ctr.cli.train", "--model", cell.model, "--batch", str(cell.batch),
           "--scaling", cell.rule, "--seed", str(cell.seed), "--epochs", str(spec.epochs),
           "--data", data, "--out", str(run_dir), "--quiet", *map(str, spec.train_args)]
    if spec.base_batch:
        cmd += ["--base-batch", str(spec.base_batch)]
    if spec.nproc > 1:
        cmd += ["--nproc", str(spec.nproc)]
    # a cell that started before (a config.json or a checkpoint) continues: ctr-train refuses to
    # start over in a directory that holds an interrupted run, and resumes from scratch when it
    # has no checkpoint yet
    if (run_dir / "config.json").is_file() or (run_dir / "checkpoint" / "latest.json").is_file():
        cmd.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(run_dir / "train.log", "a") as log:
        return run_child(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_sweep(spec: SweepSpec, progress: bool = True) -> dict[str, Any]:
    """Trains every run not yet done, rewriting the report after each; returns the results.
    Raises DirLockError when another sweep holds OUT, SweepInterrupted on SIGINT / SIGTERM."""
    out = spec.out_dir
    with DirLock(out, what="sweep directory"):
        clean_stale_temps(out)
        return _run_locked(spec, out, progress)


def _run_locked(spec: SweepSpec, out: Path, progress: bool) -> dict[str, Any]:
    from ctr.sweep.report import write_report
    write_json_atomic(out / "spec.json", dataclasses.asdict(spec))
    data = resolve_data(spec)
    all_cells = cells(spec)
    runs = run_cells(spec, all_cells)
    todo = [c for c in runs if run_status(out, c) not in DONE]
    if progress:
        print(f"sweep {spec.name}: {len(all_cells)} cells ({len(all_cells) - len(runs)} share a run), "
              f"{len(runs) - len(todo)} done, {len(todo)} to run -> {out}", flush=True)
    t0 = time.time()
    lock = threading.Lock()
    started = [0]
    finished: list[str] = []
    # The ETA weighs cells by optimizer steps: at small batch the whole-table pass per step,
    # not the samples, sets a cell's time (a batch-8 cell takes ~12x as long as a batch-128 one here).
    train_rows = int(read_meta(data)["splits"]["train"]["rows"])
    steps_of = {c: spec.epochs * -(-train_rows // c.batch) for c in todo}
    steps_done = [0]
    # Small batches are latency-bound: several cells with fewer threads each use the cores better.
    threads = max(1, (os.cpu_count() or 1) // spec.jobs) if spec.jobs > 1 else None

    def one(cell: Cell, received: list[int]) -> None:
        run_dir = out / "runs" / cell.name
        if received:
            return  # a signal came after it was submitted: start nothing new
        busy = run_in_use(run_dir)
        with lock:
            if busy:
                steps_done[0] += steps_of[cell]
                if progress:
                    print(f"      {cell.name} -> skipped: {busy}", flush=True)
                return
            started[0] += 1
            i = started[0]
            if progress:
                left = sum(steps_of.values()) - steps_done[0]
                eta = (f", ~{(time.time() - t0) / steps_done[0] * left / 60:.0f} min left"
                       if steps_done[0] else "")
                print(f"[{i}/{len(todo)}] {cell.model} batch {format_batch(cell.batch)} rule {cell.rule} "
                      f"seed {cell.seed} ({len(todo) - i} remain after this{eta})", flush=True)
        code = run_cell(cell, spec, data, run_dir, threads)
        s = cell_summary(run_dir) or {}
        with lock:
            steps_done[0] += steps_of[cell]
            if s.get("status") in DONE:
                finished.append(cell.name)
            if progress:
                print(f"      {cell.name} -> {s.get('status', f'failed (exit {code}, see train.log)')}"
                      + (f", test AUC {s['test_auc']:.4f}" if "test_auc" in s else ""), flush=True)
            write_report(spec, all_cells, out, data)
        fault_point("sweep.cell_done")

    # The main thread decides what starts: Python runs signal handlers only there, so a Ctrl-C
    # is recorded before the next cell would be submitted, never raced by a pool thread.
    with forward_signals() as received, ThreadPoolExecutor(max_workers=spec.jobs) as pool:
        pending, running = list(todo), set()
        while pending or running:
            while pending and len(running) < spec.jobs and not received:
                running.add(pool.submit(one, pending.pop(0), received))
            if not running:
                break
            finished_now, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished_now:
                f.result()
        stop = received[0] if received else None
    payload = write_report(spec, all_cells, out, data)
    if stop is not None:
        raise SweepInterrupted(stop, finished, payload)
    return payload
