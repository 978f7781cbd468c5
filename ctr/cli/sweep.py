"""``ctr-sweep``: AUC across batch sizes and scaling rules, resumable.

Examples::

    ctr-sweep --preset quick                         # ~10 min on 2 CPU cores, synthetic data
    ctr-sweep --preset cpu                           # the paper's 128x batch ratio, ~1 hour, resumable
    ctr-sweep --model deepfm --batches 1k,2k,4k,8k,16k,32k,64k,128k \\
              --scaling none,sqrt,linear,cowclip --data data/criteo --epochs 10

Writes OUT/report.md, OUT/results.json and OUT/auc_vs_batch.png (OUT defaults to
sweeps/<preset>); running it again skips the cells already done.
"""

from __future__ import annotations

import argparse
import sys

from ctr.optim.scaling import parse_batch


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctr-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help="quick | cpu | paper | a YAML path")
    p.add_argument("--model", type=_list, dest="models", help="model(s), comma-separated")
    p.add_argument("--batches", type=_list, help="e.g. 1k,2k,4k,...,128k")
    p.add_argument("--scaling", type=_list, dest="rules", help="e.g. none,sqrt,linear,cowclip")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in _list(t)])
    p.add_argument("--epochs", type=int)
    p.add_argument("--data", help="processed dataset (default: the preset's synthetic data)")
    p.add_argument("--nproc", type=int, help="processes per cell (ctr-train --nproc)")
    p.add_argument("--jobs", type=int, help="cells trained at once, threads split between them")
    p.add_argument("--out", help="output directory (default sweeps/<preset>)")
    p.add_argument("--train-args", type=lambda t: t.split(), help="extra ctr-train flags, quoted")
    args = p.parse_args(argv)
    from ctr.sweep.runner import SweepSpec, run_sweep
    try:
        batches = [parse_batch(b) for b in args.batches] if args.batches else None
        spec = SweepSpec.from_preset(args.preset, models=args.models, batches=batches, rules=args.rules,
                                     seeds=args.seeds, epochs=args.epochs, data=args.data,
                                     nproc=args.nproc, jobs=args.jobs, out=args.out, train_args=args.train_args)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctr-sweep: {e}", file=sys.stderr)
        return 2
    result = run_sweep(spec)
    out = spec.out_dir
    failed = [r["cell"] for r in result["results"] if r["status"] not in ("ok", "diverged")]
    print(f"report: {out / 'report.md'}  results: {out / 'results.json'}  plot: {out / 'auc_vs_batch.png'}")
    if failed:
        print(f"cells that did not finish: {failed} (see their train.log; re-run to retry)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
