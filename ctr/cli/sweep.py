"""``ctr-sweep``: AUC across batch sizes and scaling rules, resumable.

Examples::

    ctr-sweep --preset quick                         # ~10 min on 2 CPU cores, synthetic data
    ctr-sweep --preset cpu                           # the paper's 128x batch ratio, ~1 hour, resumable
    ctr-sweep --model deepfm --batches 1k,2k,4k,8k,16k,32k,64k,128k \\
              --scaling none,sqrt,linear,cowclip --data data/criteo --epochs 10

Writes OUT/report.md, OUT/results.json and OUT/auc_vs_batch.png (OUT defaults to
sweeps/<preset>); running it again skips the cells already done. One sweep at a time per OUT.
Ctrl-C lets the running cells save a checkpoint, then exits 130; the same command resumes.
Exit codes: 0 every cell done, 1 some cell failed or was skipped, 2 bad flags or preset or OUT
in use, 130 interrupted (143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from ctr import allocator
from ctr.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ctr.numerics import NUMERICS


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(prog="ctr-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="quick | cpu | paper | a YAML path")
    p.add_argument("--model", type=_list, dest="models", help="model(s), comma-separated")
    p.add_argument("--batches", type=_list, help="e.g. 1k,2k,4k,...,128k")
    p.add_argument("--scaling", type=_list, dest="rules", help="e.g. none,sqrt,linear,cowclip")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in _list(t)])
    p.add_argument("--interval-seeds", type=lambda t: [int(x) for x in _list(t)],
                   help="more seeds of every rule at the base and the top batch, e.g. 1,2,3,4: "
                   "the report gives top - base with a 95%% interval")
    p.add_argument("--numerics", choices=NUMERICS,
                   help="ctr-train --numerics of every cell (default: the preset's, portable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--data", help="processed dataset (default: the preset's synthetic data)")
    p.add_argument("--nproc", type=int, help="processes per cell (ctr-train --nproc)")
    p.add_argument("--jobs", type=int, help="cells trained at once, threads split between them")
    p.add_argument("--out", help="output directory (default sweeps/<preset>)")
    p.add_argument("--train-args", type=lambda t: t.split(),
                   help="more ctr-train flags for every cell, quoted, after the preset's own "
                   "(which they add to; a flag given again wins), e.g. '--update sparse'")
    args = p.parse_args(argv)
    resume = "ctr-sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, resume)
    except KeyboardInterrupt:  # outside the cells (imports, data generation, the last report)
        print(f"\nctr-sweep: interrupted; finished cells are kept. Resume with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, resume: str) -> int:
    from ctr.fsutil import DirLockError
    from ctr.sweep.runner import SweepInterrupted, run_sweep, tally
    from ctr.sweep.spec import DONE, SweepSpec
    try:
        spec = SweepSpec.from_preset(args.preset, models=args.models, batches=args.batches,
                                     rules=args.rules, seeds=args.seeds, epochs=args.epochs,
                                     data=args.data, nproc=args.nproc, jobs=args.jobs, out=args.out,
                                     more_train_args=args.train_args, interval_seeds=args.interval_seeds,
                                     numerics=args.numerics)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctr-sweep: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = spec.out_dir
    try:
        run_sweep(spec)
    except DirLockError as e:
        print(f"ctr-sweep: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SweepInterrupted as e:
        runs = tally(spec, out)
        total = sum(map(len, runs.values()))
        done = sum(len(runs.get(s, [])) for s in DONE)
        stopped = len(runs.get("interrupted", []))
        never = sum(not (out / "runs" / n / "train.log").exists() for n in runs.get("pending", []))
        print(f"\nctr-sweep: stopped by {signal.Signals(e.signum).name}; no cell is running. "
              f"{done} of {total} runs done ({len(e.finished)} in this session), {stopped} interrupted "
              f"(they continue from their checkpoint), {total - done - stopped - never} failed, "
              f"{never} not started. Report so far: {out / 'report.md'}. Resume with: {resume}",
              file=sys.stderr)
        return e.exit_code
    print(f"report: {out / 'report.md'}  results: {out / 'results.json'}  plot: {out / 'auc_vs_batch.png'}")
    failed = [name for status, names in tally(spec, out).items() if status not in DONE for name in names]
    if failed:
        print(f"cells that did not finish: {failed} (see their train.log; re-run to retry)")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
