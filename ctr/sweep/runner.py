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
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any


from ctr.data.dataset import DatasetSchema
from ctr.faults import fault_point
from ctr.fsutil import DirLock, DirLockError, clean_stale_temps, write_json_atomic
from ctr.optim.scaling import format_batch
from ctr.procs import forward_signals, run_child
from ctr.sweep.report import write_report
from ctr.sweep.spec import DONE, Cell, SweepSpec, cells, run_cells
from ctr.train.rundir import read_summary


def resolve_data(spec: SweepSpec) -> DatasetSchema:
    """The sweep's dataset: the given one, or synthetic data generated once for it (the same
    rule and place as ``ctr-train``'s built-in data, :func:`ctr.data.synth.resolve_dataset`)."""
    from ctr.data.synth import DEMO_ROWS, resolve_dataset  # reuses it unless the generator changed
    from ctr.sweep.spec import SYNTH_KNOBS
    knobs = {k: float(v) for k, v in spec.synthetic.items() if k in SYNTH_KNOBS}
    return resolve_dataset(spec.data or None, rows=int(spec.synthetic.get("rows", DEMO_ROWS)),
                           seed=int(spec.synthetic.get("seed", 0)), model=knobs or None)


def run_status(out: Path, cell: Cell) -> str:
    """``ok`` / ``diverged`` (done), ``interrupted``, ... from its summary; ``pending`` without one."""
    return str((read_summary(out / "runs" / cell.name) or {}).get("status", "pending"))


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
           "--data", data, "--out", str(run_dir), "--quiet", "--numerics", spec.numerics,
           *map(str, spec.train_args)]
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
    write_json_atomic(out / "spec.json", dataclasses.asdict(spec))
    dataset = resolve_data(spec)
    data = str(dataset.path)
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
    train_rows = dataset.rows("train")
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
        s = read_summary(run_dir) or {}
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
        pending = list(todo)
        running: set[Future[None]] = set()
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
