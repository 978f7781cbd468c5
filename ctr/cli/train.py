"""``ctr-train``: train one model at one batch size and report AUC.

Examples::

    ctr-train --model deepfm --batch 128k                 # built-in synthetic data, CowClip rule
    ctr-train --model dcn --batch 8k --data data/criteo --epochs 10 --out runs/dcn-8k
    ctr-train --model deepfm --batch 4k --nproc 2 --sharding row_wise   # 2 processes (gloo/nccl)
    ctr-train --out runs/dcn-8k --resume ...              # continue after Ctrl-C or a crash
    # 2 hosts x 8 processes; run on each host with its --node-rank, --out on a shared filesystem
    ctr-train --model deepfm --batch 64k --data /shared/c1tb --loader stream --out /shared/runs/a \
        --nproc 8 --nnodes 2 --node-rank 0 --master host0:29500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ctr import allocator
from ctr.data.dataset import DatasetError
from ctr.exitcodes import EXIT_USAGE, exit_code_for_status
from ctr.optim.scaling import format_batch
from ctr.train.config import CONFIG_DIR, load_config
from ctr.argtypes import positive_int
from ctr.train.settings import add_setting_flags, overrides_from


def build_parser() -> argparse.ArgumentParser:
    """The flags: the run's own, then one per setting of :mod:`ctr.train.settings`."""
    p = argparse.ArgumentParser(prog="ctr-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="processed dataset dir (default: the built-in synthetic data)")
    p.add_argument("--config", help="YAML config (default: configs/<dataset>/<model>.yaml)")
    p.add_argument("--dataset", help="which configs/<dataset>/ to take defaults from "
                   "(default: the dataset's meta.json 'dataset')")
    p.add_argument("--nproc", type=positive_int, default=1, help="launch this many local worker processes")
    p.add_argument("--nnodes", type=positive_int, default=1,
                   help="hosts in the run (each runs ctr-train with its --node-rank; --out must be "
                   "a directory all of them share)")
    p.add_argument("--node-rank", type=int, default=0, help="this host's index, 0..nnodes-1 (node 0 "
                   "owns the run directory: it checks and locks it)")
    p.add_argument("--master", metavar="HOST:PORT",
                   help="node 0's address and a free port, the same on every node (with --nnodes > 1)")
    p.add_argument("--out", help="run directory (default: runs/<model>-<batch>-<scaling>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--quiet", action="store_true")
    add_setting_flags(p)
    return p


def resolve_data(data: str | None) -> tuple[str, str]:
    """The dataset dir (generating the built-in one on first use) and its config family."""
    from ctr.data.synth import resolve_dataset
    ds = resolve_dataset(data)
    family = ds.family
    if not (CONFIG_DIR / family).is_dir():
        family = "criteo"  # Criteo-style data without its own configs: the paper's Criteo values
    return str(ds.path), family


# The launcher's own flags: they say how to start the workers, not what they train.
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master")


def _strip_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        if a.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            continue
        out.append(a)
    return out


def _refuse_reuse(run_dir: Path, resume: bool) -> str | None:
    """Why ``run_dir`` cannot be used as asked (None if it can). Never modifies it."""
    from ctr.train.checkpoint import has_checkpoint
    from ctr.train.rundir import read_summary
    if resume:
        if not run_dir.is_dir():
            return f"--resume: {run_dir} does not exist (mistyped --out?)"
        if not (run_dir / "config.json").is_file() and not has_checkpoint(run_dir):
            return f"--resume: {run_dir} holds no run (no config.json, no checkpoint)"
        return None
    summary = read_summary(run_dir)
    if summary is not None:
        if summary.get("status") == "interrupted":
            return f"{run_dir} holds an interrupted run; pass --resume to continue it, or pick another --out"
        return f"{run_dir} already holds a finished run (status {summary.get('status')}); pick another --out"
    if has_checkpoint(run_dir):
        return f"{run_dir} has a checkpoint; pass --resume to continue it"
    return None


def _check_resume_config(run_dir: Path, cfg) -> None:
    """Refuses, before anything is written, a --resume with another model or batch than the
    run's config.json (the workers check the checkpoint itself again)."""
    import json

    from ctr.train.checkpoint import CheckpointError, check_compatible
    f = run_dir / "config.json"
    if not f.is_file():
        return
    try:
        saved = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    check_compatible(saved, cfg.to_dict(), run_dir)


def _check_backend_before_launch(cfg) -> None:
    """Refuses in the launcher, not in N workers, a sharding that ``auto`` resolving to the torch
    backend (no TorchRec here) cannot do. Costs a TorchRec import only in that case."""
    from ctr.distributed.choices import (TORCH_BACKEND_SHARDINGS, check_backend_sharding,
                                         resolve_embedding_backend)
    from ctr.train.config import ConfigError
    if cfg.sharding in TORCH_BACKEND_SHARDINGS or cfg.embedding_backend == "torchrec":
        return
    try:
        check_backend_sharding(resolve_embedding_backend(cfg.embedding_backend), cfg.sharding)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    worker = "RANK" in os.environ   # a torchrun worker: the launcher did the checks and holds the lock
    from ctr.distributed.env import Nodes
    nodes = Nodes(args.nnodes, args.node_rank, args.master)
    if not worker and args.nnodes > 1:
        try:
            nodes.torchrun_args()
        except ValueError as e:
            print(f"ctr-train: {e}", file=sys.stderr)
            return EXIT_USAGE
        if not args.out:
            print("ctr-train: --nnodes > 1 needs --out: every node must name the same run directory "
                  "(on a filesystem they share)", file=sys.stderr)
            return EXIT_USAGE
    if worker:
        from ctr.distributed.env import die_with_parent
        die_with_parent()
    from ctr.fsutil import DirLockError
    from ctr.train.checkpoint import CheckpointError
    from ctr.train.config import ConfigError
    from ctr.train.rundir import hold_run_lock, release_run_lock, run_lock_fd
    try:
        data, family = resolve_data(args.data)
    except (DatasetError, FileNotFoundError) as e:
        print(f"ctr-train: {e}", file=sys.stderr)
        return EXIT_USAGE
    dataset = args.dataset or family
    # Under torchrun every rank must agree on the name: its run id is shared, a clock is not.
    stamp = os.environ.get("TORCHELASTIC_RUN_ID") if worker else None
    out = args.out or str(Path("runs") / f"{args.model}-{format_batch(args.batch or 1024)}-"
                          f"{args.scaling or 'default'}-{stamp or time.strftime('%Y%m%d-%H%M%S')}")
    overrides = {**overrides_from(args), "data": data, "out": out}
    run_dir = Path(out)
    locked = False
    try:
        cfg = load_config(args.model, dataset, path=args.config, overrides=overrides)
        from ctr import numerics
        numerics.apply(cfg.numerics)   # before any kernel runs; torchrun workers inherit it
        if not worker and nodes.rank == 0:   # node 0 owns the run directory; the others only join
            reason = _refuse_reuse(run_dir, args.resume)
            if reason:
                print(f"ctr-train: {reason}", file=sys.stderr)
                return EXIT_USAGE
            locked = hold_run_lock(run_dir)
            if args.resume:
                _check_resume_config(run_dir, cfg)
        if (args.nproc > 1 or nodes.count > 1) and not worker:
            _check_backend_before_launch(cfg)
            world = args.nproc * nodes.count
            if cfg.loader_streams is not None and cfg.loader_streams % world:
                raise ConfigError(f"--loader-streams {cfg.loader_streams} is not a multiple of the "
                                  f"{world} ranks (--nproc x --nnodes): each rank reads the same "
                                  "number of streams")
            from ctr.distributed.env import launch_workers
            child = _strip_launch_flags(argv) + ["--data", data, "--out", out, "--dataset", dataset]
            fd = run_lock_fd(run_dir) if locked else None
            return launch_workers(args.nproc, "ctr.cli.train", child, run_dir=run_dir,
                                  pass_fds=(fd,) if fd is not None else (), nodes=nodes)
        from ctr.train.trainer import Trainer
        summary = Trainer(cfg, resume=args.resume, quiet=args.quiet).run()
    except (ConfigError, DatasetError, CheckpointError, DirLockError, FileNotFoundError) as e:
        print(f"ctr-train: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if locked:
            release_run_lock(run_dir)
    if not args.quiet and int(os.environ.get("RANK", 0)) == 0:
        print(f"run: {out}  status: {summary['status']}  test AUC: {summary.get('test_auc', float('nan')):.4f}"
              + (f"  oracle AUC: {summary['oracle_test_auc']:.4f}" if "oracle_test_auc" in summary else "")
              + f"  samples/s: {summary['samples_per_second']:,.0f}  peak RSS: {summary['peak_rss_mb']:,.0f} MB")
    return exit_code_for_status(summary["status"])


if __name__ == "__main__":
    sys.exit(main())
