"""``ctr-preprocess`` throughput and memory on a Criteo-Kaggle-shaped raw TSV.

Writes a synthetic raw ``train.txt`` (TAB, 40 fields, Kaggle-like cardinalities up to
~10M distinct values in a field, 8-hex-digit categoricals, missing values) of ``--rows``
rows into ``--workdir`` (kept and reused if it is already there with the right size), then
runs the full pipeline (full label encoding, minmax, random 90/10 split) in a child
process and reports rows/s per pass, wall time and the child's peak RSS.

Target: Criteo Kaggle size (45,840,617 rows, ~11 GB) in under 20 minutes on 2 cores with
peak RSS under 10 GB.

Usage::

    python tools/bench_preprocess.py --rows 3000000 --workdir /tmp/ctr-bench
    python tools/bench_preprocess.py                       # full Kaggle size (45.8M rows)
    python tools/bench_preprocess.py --rows 3000000 --gzip --json out.json

Prints a table, the JSON result and the reproducing command; writes ``--json``
(default ``WORKDIR/bench_preprocess.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr import allocator  # noqa: E402

KAGGLE_ROWS = 45_840_617
KAGGLE_BYTES = 11_147_184_845  # train.txt


def make_raw(path: Path, rows: int, seed: int) -> str:
    """Writes the raw file with the project's generator (gzip when ``path`` ends in ``.gz``;
    Kaggle's per-field cardinalities, :data:`ctr.data.synth.CRITEO_CARDINALITY`), reused when
    already there with ``rows`` rows; returns how it was made."""
    from ctr.data.synth import write_raw_criteo_tsv
    marker = path.with_name(path.name + ".rows")
    if path.exists() and marker.exists() and marker.read_text().strip() == str(rows):
        return "reused"
    write_raw_criteo_tsv(path, rows, seed=seed, progress=True)
    marker.write_text(f"{rows}\n")
    return "ctr.data.synth.write_raw_criteo_tsv" + (" (gzip)" if path.suffix == ".gz" else "")


_CHILD = r"""
import json, resource, sys, time
from ctr.allocator import describe_active
from ctr.data.preprocess import preprocess
args = json.loads(sys.argv[1])
stats = {}
t = time.perf_counter()
meta = preprocess([args["raw"]], args["out"], overwrite=True, progress=args["progress"],
                  stats=stats, parse_threads=args["parse_threads"],
                  block_bytes=args["block_mb"] << 20, **args["options"])
stats["wall_seconds"] = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
stats["maxrss_bytes"] = ru.ru_maxrss * 1024
stats["cpu_seconds"] = ru.ru_utime + ru.ru_stime
stats["vocab_total"] = sum(meta["vocab_sizes"].values())
stats["vocab_max"] = max(meta["vocab_sizes"].values())
stats["splits"] = {k: v["rows"] for k, v in meta["splits"].items()}
stats["allocator"] = describe_active()
print("@@RESULT@@" + json.dumps(stats))
"""


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=KAGGLE_ROWS)
    p.add_argument("--workdir", default="/tmp/ctr-bench-preprocess")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gzip", action="store_true", help="benchmark a gzip-compressed input")
    p.add_argument("--min-count", type=int, default=None, help="BARS-style min-count encoding")
    p.add_argument("--no-parse-threads", action="store_true", help="pyarrow parsing single-threaded")
    p.add_argument("--block-mb", type=int, default=64)
    p.add_argument("--keep-output", action="store_true", help="keep the processed dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", help="result file (default WORKDIR/bench_preprocess.json)")
    args = p.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    raw = work / (f"train-{args.rows}.txt" + (".gz" if args.gzip else ""))
    t = time.perf_counter()
    how = make_raw(raw, args.rows, args.seed)
    gen_s = time.perf_counter() - t
    raw_bytes = raw.stat().st_size
    print(f"raw input: {raw} ({raw_bytes / 1e9:.2f} GB, {args.rows:,} rows; {how}, {gen_s:.0f} s)",
          flush=True)

    out = work / "processed"
    child_args = {"raw": str(raw), "out": str(out), "progress": not args.quiet,
                  "parse_threads": not args.no_parse_threads, "block_mb": args.block_mb,
                  "options": {"min_count": args.min_count} if args.min_count else {}}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(child_args)], env=env,
                          stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        print(proc.stdout)
        print(f"preprocess failed with exit code {proc.returncode}", file=sys.stderr)
        return 1
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@"))
    stats = json.loads(line[len("@@RESULT@@"):])
    out_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if not args.keep_output:
        import shutil
        shutil.rmtree(out, ignore_errors=True)

    rows = stats["rows"]
    scale = KAGGLE_ROWS / rows
    result = {
        "rows": rows, "raw_bytes": raw_bytes, "gzip": args.gzip, "raw_writer": how,
        "encoding": "min_count" if args.min_count else "label", "min_count": args.min_count,
        "pass1_rows_per_s": stats["pass1"]["rows_per_s"], "pass1_seconds": stats["pass1"]["seconds"],
        "finalize_seconds": stats["finalize_seconds"],
        "pass2_rows_per_s": stats["pass2"]["rows_per_s"], "pass2_seconds": stats["pass2"]["seconds"],
        "wall_seconds": wall, "preprocess_seconds": stats["seconds"],
        "cpu_seconds": stats["cpu_seconds"],
        "load_average_1min": os.getloadavg()[0],
        "rows_per_s": rows / stats["seconds"],
        "peak_rss_bytes": max(stats["maxrss_bytes"], child_rss),
        "output_bytes": out_bytes, "vocab_total": stats["vocab_total"],
        "vocab_max": stats["vocab_max"], "splits": stats["splits"],
        "extrapolated_kaggle_seconds": stats["seconds"] * scale,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "allocator": stats["allocator"],   # the preprocessing child's (inherited from this process)
    }
    cmd = "python tools/bench_preprocess.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    result["command"] = cmd.strip()
    gb = 1 << 30
    print()
    print("| rows | pass 1 rows/s | pass 2 rows/s | wall s | CPU s | peak RSS | vocab max | Kaggle-size extrapolation |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {rows:,} | {result['pass1_rows_per_s']:,.0f} | {result['pass2_rows_per_s']:,.0f} | "
          f"{wall:.1f} | {result['cpu_seconds']:.1f} | {result['peak_rss_bytes'] / gb:.2f} GiB | {result['vocab_max']:,} | "
          f"{result['extrapolated_kaggle_seconds'] / 60:.1f} min (target < 20 min) |")
    path = Path(args.json) if args.json else work / "bench_preprocess.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nallocator: {result['allocator']}\nresult: {path}\nreproduce: {result['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
