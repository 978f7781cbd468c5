"""Criteo 1TB end to end: day files -> ``ctr-preprocess`` -> ``ctr-train --loader stream --nproc N``.

For each ``--rows`` count R (a list shows how memory scales with the data) it

1. writes R synthetic rows as Criteo-1TB-shaped raw day files ``day_0 .. day_{D-1}`` (TAB, 40
   fields, 8-hex ids) from ONE planted model (:func:`ctr.data.synth.write_raw_criteo_days`:
   the rows cut into D consecutive days of equal size, so every day has the same
   distribution), with the last day's oracle AUC (the true probability scored on its labels);
2. preprocesses them in a child process: ``ctr-preprocess day_0 .. day_{D-1} --split
   files:D-1,1`` (the last day is the test split, as in TorchRec's DLRM example; valid aliases
   test) with ``--min-count K`` or ``--hash-buckets N``; its peak RSS and rows/s;
3. trains ``--model`` (DeepFM) at ``--batch`` (64K) for ``--steps`` steps in a child: ``ctr-train
   --loader stream --nproc N --max-steps S``; from its ``summary.json``, per rank: peak RSS (over
   the run and before the first evaluation pass), the rank's table shards (weights ``w``, Adam's
   ``m`` and ``v``, each rows x dim x 4 B, plus the dense kernel's table-sized gradient) and
   *everything else* = peak RSS - tables; the step rate (samples/s of the steps after the first,
   which also waits for the loader's first window) and test AUC on the last day;
4. measures the streaming loader on its own on the same train split: N child processes at once,
   rank r of N reading its streams as in training (no model, no all-gather), for at least four
   shuffle windows' worth of rows or the rank's whole epoch; rows/s of all ranks together vs
   the training step rate (the issue's target: >= 10x).

Day files and processed datasets are kept in ``--workdir`` and reused when a marker beside them
(``NAME.bench.json``) records the same parameters; ``--delete-days`` removes the day files once
the processed dataset exists (it stays reusable). Targets (issue 12, at 100M rows): everything
else under 2 GB per rank and flat over 25M / 50M / 100M rows; loader >= 10x the step rate.

Usage::

    python tools/bench_criteo1tb.py --rows 2m,4m --days 3 --steps 10            # a small check
    python tools/bench_criteo1tb.py --rows 25m,50m,100m --days 4 --steps 50 --min-count 10 \\
        --workdir /data/ctr-c1tb --delete-days --json c1tb.json                   # the issue's run

Prints a Markdown table and the command; writes ``--json`` (default WORKDIR/bench_criteo1tb.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr import allocator  # noqa: E402
from ctr.data.synth.cli import parse_rows, rows_tag  # noqa: E402
from ctr.optim.scaling import format_batch, parse_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
ELSE_TARGET_MB = 2048          # "everything else" per rank at 100M rows (issue 12)
LOADER_TARGET = 10.0           # loader rows/s over training samples/s
FLAT_SHARE = 0.10             # "flat": the steps' memory besides the tables varies by < 10%
WINDOWS_TIMED = 4              # the loader is timed over at least this many shuffle windows


# ---------------------------------------------------------------------------- children

def run_child(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Runs ``cmd`` with its output in ``log``; returns (exit code, its peak RSS in bytes, wall
    seconds). ``os.wait4`` gives that one child's own peak (RUSAGE_CHILDREN would be the
    largest of every child so far)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024.0, time.perf_counter() - t


def fail(what: str, log: Path, rc: int) -> None:
    tail = log.read_text(errors="replace").splitlines()[-30:]
    raise SystemExit(f"{what} failed with exit code {rc}; the end of {log}:\n" + "\n".join(tail))


def loader_child(spec: dict[str, Any]) -> int:
    """One rank's streaming loader alone (``--loader-child``): rows/s and peak RSS as JSON."""
    import resource

    from ctr.data.dataset import read_schema
    from ctr.data.stream import SplitLayout, StreamLoader
    t0 = time.perf_counter()
    layout = SplitLayout(read_schema(spec["data"]), "train")
    loader = StreamLoader(layout, spec["batch"], seed=0, streams=spec["world"], rank=spec["rank"],
                          world_size=spec["world"], shuffle_buffer=spec["shuffle_buffer"])
    rows, batches, first = 0, 0, None
    for b in loader.epoch(0):
        rows += b.labels.numel()
        batches += 1
        first = first if first is not None else time.perf_counter() - t0
        if rows >= spec["rows"]:
            break
    secs = time.perf_counter() - t0
    print(json.dumps({"rank": spec["rank"], "rows": rows, "batches": batches, "seconds": secs,
                      "first_batch_seconds": first, "rows_per_s": rows / secs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def measure_loader(data: Path, batch: int, world: int, shuffle_buffer: int, steps: int,
                   logs: Path) -> dict[str, Any]:
    """The N ranks' loaders at once, each in its own process, as in a run of N ranks."""
    from ctr.data.dataset import read_schema
    train_rows = read_schema(data).rows("train")
    local = batch // world
    per_rank = min(train_rows // world, max(steps * local, WINDOWS_TIMED * shuffle_buffer))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = []
    for r in range(world):
        spec = {"data": str(data), "batch": batch, "world": world, "rank": r, "rows": per_rank,
                "shuffle_buffer": shuffle_buffer}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--loader-child",
                                       json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    ranks = []
    for r, p in enumerate(procs):
        out, err = p.communicate()
        if p.returncode != 0:
            (logs / f"loader-rank{r}.log").write_text(out + err)
            fail(f"the loader of rank {r}", logs / f"loader-rank{r}.log", p.returncode)
        ranks.append(json.loads(out.strip().splitlines()[-1]))
    rows = sum(x["rows"] for x in ranks)
    wall = max(x["seconds"] for x in ranks)
    return {"ranks": ranks, "rows": rows, "seconds": wall, "rows_per_s": rows / wall,
            "rows_per_rank_target": per_rank, "shuffle_buffer": shuffle_buffer}


# ---------------------------------------------------------------------------- the stages

def _marker_matches(marker: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("params") == params else None


def _write_marker(marker: Path, params: dict[str, Any], info: dict[str, Any]) -> None:
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"params": params, "info": info}, indent=2) + "\n")
    os.replace(tmp, marker)


@dataclass
class DayFiles:
    """Where one row count's day files go and what they are (the marker's parameters)."""

    dir: Path
    files: list[Path]
    params: dict[str, Any]

    @property
    def marker(self) -> Path:
        return self.dir.with_name(self.dir.name + ".bench.json")

    def saved_info(self) -> dict[str, Any] | None:
        """The generator's summary of these days (rows/s, oracle), kept in the marker even once
        ``--delete-days`` has removed the files."""
        saved = _marker_matches(self.marker, self.params)
        return saved["info"] if saved is not None else None


def day_files(work: Path, rows: int, days: int, seed: int, gz: bool) -> DayFiles:
    from ctr.data.synth import GENERATOR_VERSION, day_file_names
    out = work / f"days-{rows_tag(rows)}-d{days}-s{seed}{'-gz' if gz else ''}"
    return DayFiles(out, [out / n for n in day_file_names(days, gz)],
                    {"rows": rows, "days": days, "seed": seed, "gzip": gz,
                     "generator": GENERATOR_VERSION})


def ensure_days(d: DayFiles, quiet: bool) -> tuple[dict[str, Any], str]:
    """The day files: reused when the marker says they are these, else generated."""
    from ctr.data.synth import write_raw_criteo_days
    info = d.saved_info()
    if info is not None and all(f.is_file() for f in d.files):
        return info, "reused"
    d.marker.unlink(missing_ok=True)
    p = d.params
    info = write_raw_criteo_days(d.dir, p["rows"], p["days"], seed=p["seed"], gzip=p["gzip"],
                                 progress=not quiet, oracle_last=True)
    _write_marker(d.marker, p, info)
    return info, "generated"


def processed_target(work: Path, d: DayFiles, encoding: list[str], row_group_rows: int
                     ) -> tuple[Path, dict[str, Any]]:
    """Where the processed dataset of these days goes, and its marker's parameters."""
    enc_tag = "-".join(a.lstrip("-").replace("-", "") for a in encoding)
    out = work / f"processed-{d.dir.name.removeprefix('days-')}-{enc_tag}-rg{row_group_rows}"
    return out, {"days": d.params, "encoding": encoding, "split": f"files:{len(d.files) - 1},1",
                 "row_group_rows": row_group_rows}


def reusable_processed(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    saved = _marker_matches(out.with_name(out.name + ".bench.json"), params)
    return saved["info"] if saved is not None and (out / "meta.json").is_file() else None


def preprocess(out: Path, params: dict[str, Any], d: DayFiles, logs: Path) -> dict[str, Any]:
    """``ctr-preprocess`` of the day files in a child: its peak RSS, rows/s, splits, tables."""
    marker = out.with_name(out.name + ".bench.json")
    marker.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ctr.cli.preprocess", *map(str, d.files), "--out", str(out),
           "--split", params["split"], *params["encoding"], "--row-group-rows",
           str(params["row_group_rows"]), "--quiet"]
    if out.exists():
        cmd.append("--overwrite")
    log = logs / f"preprocess-{out.name}.log"
    rc, rss, wall = run_child(cmd, log)
    if rc != 0:
        fail("ctr-preprocess", log, rc)
    meta = json.loads((out / "meta.json").read_text())
    info = {"command": shlex.join(["ctr-preprocess", *cmd[3:]]), "peak_rss_bytes": rss,
            "wall_seconds": wall, "seconds": meta["seconds"], "rows": meta["rows_total"],
            "rows_per_s": meta["rows_total"] / meta["seconds"],
            "splits": {k: v["rows"] for k, v in meta["splits"].items()},
            "table_rows": sum(meta["vocab_sizes"].values()),
            "output_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
    _write_marker(marker, params, info)
    return info


def train(work: Path, data: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """``ctr-train --loader stream --nproc N --max-steps S`` in a child; its summary.json."""
    run = work / "runs" / f"{data.name}-{args.model}-{format_batch(args.batch)}-n{args.nproc}"
    if run.is_dir() and ((run / "config.json").is_file() or (run / "summary.json").is_file()):
        shutil.rmtree(run)   # this benchmark's previous run of the same cell
    cmd = [sys.executable, "-m", "ctr.cli.train", "--model", args.model, "--batch", str(args.batch),
           "--data", str(data), "--loader", "stream", "--nproc", str(args.nproc), "--epochs", "1",
           "--max-steps", str(args.steps), "--shuffle-buffer", str(args.shuffle_buffer),
           "--device", "cpu", "--out", str(run), "--quiet", *shlex.split(args.train_args)]
    log = logs / f"train-{run.name}.log"
    rc, _, wall = run_child(cmd, log)
    if rc != 0:
        fail("ctr-train", log, rc)
    summary = json.loads((run / "summary.json").read_text())
    summary["command"] = shlex.join(["ctr-train", *cmd[3:]])
    summary["child_wall_seconds"] = wall
    return summary


def memory_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rank: peak RSS split into the tables and everything else (MB)."""
    out = []
    for r in summary["ranks"]:
        wmv = 3 * r["table_bytes"] / MB          # weights, Adam's m and v
        grad = r["table_bytes"] / MB             # the dense kernel's table-sized gradient
        before = r.get("peak_rss_mb_before_eval")
        out.append({"rank": r["rank"], "peak_rss_mb": r["peak_rss_mb"],
                    "peak_rss_mb_before_eval": before, "table_rows": r["table_rows"],
                    "tables_wmv_mb": wmv, "table_grad_mb": grad,
                    "else_mb": r["peak_rss_mb"] - wmv - grad,
                    "else_without_grad_mb": r["peak_rss_mb"] - wmv,
                    "else_before_eval_mb": None if before is None else before - wmv - grad})
    return out


# ---------------------------------------------------------------------------- report

def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.model} at batch {format_batch(args.batch)}, {args.nproc} ranks (gloo, CPU), "
             f"{args.steps} steps, {args.days} day files (test = the last), "
             f"{' '.join(args.encoding)}; {platform.machine()}, {os.cpu_count()} cores, "
             f"allocator {allocator.describe_active()}", "",
             "| rows | rank | peak RSS | peak before eval | tables w+m+v | table grad | "
             "everything else | else before eval |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for m in res["memory"]:
            before = "" if m["peak_rss_mb_before_eval"] is None else f"{m['peak_rss_mb_before_eval']:,.0f} MB"
            eb = "" if m["else_before_eval_mb"] is None else f"{m['else_before_eval_mb']:,.0f} MB"
            lines.append(f"| {res['rows']:,} | {m['rank']} | {m['peak_rss_mb']:,.0f} MB | {before} | "
                         f"{m['tables_wmv_mb']:,.0f} MB ({m['table_rows']:,} rows) | "
                         f"{m['table_grad_mb']:,.0f} MB | **{m['else_mb']:,.0f} MB** | {eb} |")
    lines += ["", "| rows | train / test rows | table rows | generate rows/s | preprocess rows/s "
              "(peak RSS) | train samples/s (steady) | loader rows/s | loader / step | test AUC "
              "(oracle) |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        pp, tr, ld = res["preprocess"], res["train"], res["loader"]
        gen = res["days"].get("rows_per_second")
        gen_s = (f"{gen:,.0f}" if gen is not None else "") + \
            (f" ({res['days_how']})" if res["days_how"] != "generated" else "")
        pp_s = (f"{pp['rows_per_s']:,.0f} ({pp['peak_rss_bytes'] / MB:,.0f} MB)"
                + (" (reused)" if res["processed_how"] == "reused" else ""))
        oracle = res["days"].get("oracle_last", {}).get("test_auc")
        auc = f"{tr.get('test_auc', float('nan')):.4f}" + (f" ({oracle:.4f})" if oracle is not None else "")
        lines.append(f"| {res['rows']:,} | {pp['splits'].get('train', 0):,} / {pp['splits'].get('test', 0):,} | "
                     f"{pp['table_rows']:,} | {gen_s} | {pp_s} | "
                     f"{tr['samples_per_second']:,.0f} ({res['step_rate']:,.0f}) | "
                     f"{ld['rows_per_s']:,.0f} | **{res['loader_over_step']:.1f}x** | {auc} |")
    spread = [max(m["else_mb"] for m in res["memory"]) for res in results]
    before = [max((m["else_before_eval_mb"] or 0.0) for m in res["memory"]) for res in results]
    at_scale = [s for r, s in zip(results, spread) if r["rows"] >= 100_000_000]
    verdict = (("met" if max(at_scale) < ELSE_TARGET_MB else "NOT met") if at_scale
               else "not judged: below 100M rows")
    # flat: the steps' "everything else" varies by less than FLAT_SHARE of its largest value
    flat = ("flat" if max(before) - min(before) < FLAT_SHARE * max(before) else "NOT flat") \
        if len(results) > 1 else "one row count"
    lines += ["", "everything else, largest rank per row count: "
              + ", ".join(f"{rows_tag(r['rows'])} {s:,.0f} MB" for r, s in zip(results, spread))
              + f" (target < {ELSE_TARGET_MB:,} MB at 100M rows: {verdict}); before the test pass "
              + ", ".join(f"{b:,.0f} MB" for b in before)
              + f" ({flat}: spread {max(before) - min(before):,.0f} MB, limit {FLAT_SHARE:.0%}; the test "
              + "pass adds the gathered predictions, 5 B a test row on every rank, and the AUC's sort, 8 B); "
              + "loader / step " + ", ".join(f"{r['loader_over_step']:.1f}x" for r in results)
              + f" (target >= {LOADER_TARGET:.0f}x)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--loader-child"]:
        return loader_child(json.loads(argv[1]))
    from ctr.data.source import DEFAULT_SHUFFLE_BUFFER
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="2m", help="total rows of the day files, a comma-separated "
                   "list for the scaling (decimal: 25m,50m,100m; default 2m)")
    p.add_argument("--days", type=int, default=3, help="day files; the last is the test split "
                   "(default 3)")
    p.add_argument("--workdir", default="/tmp/ctr-bench-criteo1tb")
    p.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    p.add_argument("--batch", type=parse_batch, default=parse_batch("64k"), help="global batch (default 64k)")
    p.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--model", default="deepfm")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min-count", type=int, metavar="K", help="ctr-preprocess --min-count K "
                   "(the default, K = 10)")
    g.add_argument("--hash-buckets", type=int, metavar="N", help="ctr-preprocess --hash-buckets N")
    p.add_argument("--seed", type=int, default=0, help="seed of the day files (default 0)")
    p.add_argument("--gzip", action="store_true", help="write day_N.gz")
    p.add_argument("--row-group-rows", type=int, default=None, metavar="N",
                   help="ctr-preprocess --row-group-rows (default its own, 64Ki)")
    p.add_argument("--shuffle-buffer", type=int, default=DEFAULT_SHUFFLE_BUFFER,
                   help=f"rows per shuffle window, training and loader alike (default {DEFAULT_SHUFFLE_BUFFER:,})")
    p.add_argument("--train-args", default="", help="more ctr-train flags, e.g. \"--embedding-backend torch\"")
    p.add_argument("--delete-days", action="store_true",
                   help="remove the day files once their processed dataset exists (saves disk)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", help="result file (default WORKDIR/bench_criteo1tb.json)")
    args = p.parse_args(argv)
    try:
        row_counts = [parse_rows(x) for x in args.rows.split(",") if x.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(f"--rows: {e}")
    if not row_counts:
        p.error("--rows: give at least one row count")
    for flag, value, low in (("--days", args.days, 2), ("--steps", args.steps, 1),
                             ("--nproc", args.nproc, 1)):
        if value < low:
            p.error(f"{flag} must be at least {low} (got {value})")
    if args.batch % args.nproc:
        p.error(f"--batch {args.batch} is not a multiple of --nproc {args.nproc}")
    if args.hash_buckets is not None:
        args.encoding = ["--hash-buckets", str(args.hash_buckets)]
    else:
        args.encoding = ["--min-count", str(args.min_count if args.min_count is not None else 10)]
    from ctr.data.dataset import ROW_GROUP_ROWS
    rg = args.row_group_rows or ROW_GROUP_ROWS
    work = Path(args.workdir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    results = []
    for rows in row_counts:
        t = time.perf_counter()
        d = day_files(work, rows, args.days, args.seed, args.gzip)
        data, pp_params = processed_target(work, d, args.encoding, rg)
        pp = reusable_processed(data, pp_params)
        if pp is not None:   # the day files are not needed (and may have been deleted)
            days_info, days_how, pp_how = d.saved_info() or {}, "not needed", "reused"
        else:
            days_info, days_how = ensure_days(d, args.quiet)
            print(f"{rows:,} rows: day files {d.dir} ({days_how}, {time.perf_counter() - t:.0f} s, "
                  f"{days_info['bytes'] / 1e9:.2f} GB)", flush=True)
            t = time.perf_counter()
            pp, pp_how = preprocess(data, pp_params, d, logs), "preprocessed"
        print(f"{rows:,} rows: processed {data} ({pp_how}, {time.perf_counter() - t:.0f} s): "
              f"{pp['splits']}, {pp['table_rows']:,} table rows", flush=True)
        if args.delete_days:
            for f in d.files:
                f.unlink(missing_ok=True)
        summary = train(work, data, args, logs)
        step_rate = summary.get("steady_samples_per_second") or summary["samples_per_second"]
        print(f"  trained {summary['global_steps']} steps: {step_rate:,.0f} samples/s (steady), "
              f"test AUC {summary.get('test_auc', float('nan')):.4f}", flush=True)
        loader = measure_loader(data, args.batch, args.nproc, args.shuffle_buffer, args.steps, logs)
        print(f"  loader alone: {loader['rows_per_s']:,.0f} rows/s over {args.nproc} ranks", flush=True)
        results.append({"rows": rows, "days_dir": str(d.dir), "days_how": days_how, "days": days_info,
                        "data": str(data), "processed_how": pp_how, "preprocess": pp,
                        "train": summary, "memory": memory_rows(summary), "step_rate": step_rate,
                        "loader": loader, "loader_over_step": loader["rows_per_s"] / step_rate})

    command = "python tools/bench_criteo1tb.py " + shlex.join(argv)
    text = report(results, args)
    print("\n" + text + f"\n\ncommand: {command.strip()}")
    out = Path(args.json) if args.json else work / "bench_criteo1tb.json"
    out.write_text(json.dumps({"command": command.strip(), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0]}, "allocator": allocator.active_allocator(),
        "targets": {"else_mb_at_100m": ELSE_TARGET_MB, "loader_over_step": LOADER_TARGET},
        "results": results}, indent=2, default=str) + "\n")
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
