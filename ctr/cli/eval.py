"""``ctr-eval``: AUC, logloss, positive rate and calibration of a trained run on a split.

Example::

    ctr-eval --run runs/deepfm-128K-cowclip --split test            # the run's own dataset
    ctr-eval --run runs/deepfm-128K-cowclip --data data/other --json out.json

Loads the run's latest checkpoint in one process (the checkpoint is keyed by table rows, so
a run trained on N ranks evaluates on one), reads the split in memory or streamed a row group
at a time (``--loader``; auto: in memory when it fits half the available memory), prints the
metrics and writes them as JSON (default ``RUN/eval-<split>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ctr import allocator
from ctr.data.dataset import SPLITS, DatasetError, read_schema
from ctr.data.source import LOADERS
from ctr.distributed.choices import DEVICES, EMBEDDING_BACKENDS
from ctr.exitcodes import EXIT_OK, EXIT_USAGE
from ctr.argtypes import positive_int
from ctr.fsutil import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(prog="ctr-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory made by ctr-train")
    p.add_argument("--data", help="processed dataset (default: the one the run trained on)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--embedding-backend", default="auto", choices=EMBEDDING_BACKENDS,
                   help="torchrec or torch (plain PyTorch); auto: torchrec where it imports. Either "
                   "one reads a checkpoint of either")
    p.add_argument("--batch", type=positive_int, help="evaluation batch (default: the run's eval_batch)")
    p.add_argument("--loader", default="auto", choices=LOADERS,
                   help="memory: the split read into memory; stream: a row group at a time (bounded "
                   "memory); auto: memory when it fits half the available memory. Same metrics")
    p.add_argument("--json", help="where to write the metrics (default RUN/eval-SPLIT.json)")
    args = p.parse_args(argv)
    from ctr.train.checkpoint import CheckpointError
    out = Path(args.json) if args.json else Path(args.run) / f"eval-{args.split}.json"
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        print(f"ctr-eval: cannot write {out}: {out.parent} is not a writable directory", file=sys.stderr)
        return EXIT_USAGE
    try:
        metrics = evaluate_run(args.run, args.data, args.split, args.device, args.batch,
                               args.embedding_backend, args.loader)
    except (DatasetError, CheckpointError, FileNotFoundError) as e:
        print(f"ctr-eval: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    try:
        write_json_atomic(out, metrics)
    except OSError as e:
        print(f"ctr-eval: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"written: {out}")
    return EXIT_OK


def evaluate_run(run: str, data: str | None, split: str, device: str, batch: int | None = None,
                 embedding_backend: str = "auto", loader: str = "auto") -> dict:
    """The metrics of ``run``'s latest checkpoint on ``split``, in one process; ``loader``:
    memory, stream or auto (:func:`ctr.data.source.choose_loader` for this split alone)."""
    from ctr.distributed.choices import resolve_embedding_backend

    from ctr.data.source import choose_loader, eval_source
    from ctr.distributed.env import init_distributed, shutdown_distributed
    from ctr.models import ModelConfig
    from ctr.train.build import build_model_parts
    from ctr.train import checkpoint as ckpt
    from ctr.train.config import TrainConfig
    from ctr.train.metrics import click_metrics
    from ctr.train.trainer import predict

    run_dir = Path(run)
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{cfg_file}: unreadable run configuration ({e})") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
        raise DatasetError(f"{cfg_file}: not a ctr-train configuration (no 'model')")
    data = data or cfg.get("data")
    if not data:
        raise DatasetError(f"{cfg_file}: names no dataset; pass --data")
    dataset = read_schema(data)
    state = ckpt.load_checkpoint(run_dir)
    try:
        backend = resolve_embedding_backend(embedding_backend)
    except (ValueError, RuntimeError) as e:
        raise DatasetError(str(e)) from e
    t0 = time.time()
    env = init_distributed(device)
    try:
        try:
            settings = ModelConfig.from_dict(cfg.get("model_config", {}))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{cfg_file}: bad model_config ({e})") from e
        parts = build_model_parts(cfg["model"], settings, dataset, env, "auto", embedding_backend=backend)
        ckpt.restore_(state, parts.module, parts.groups, None)
        kind, _ = choose_loader(dataset, loader, splits=(split,))
        source = eval_source(kind, dataset, split, batch or int(cfg.get("eval_batch") or TrainConfig.eval_batch), env)
        probs, labels = predict(parts.module, source, env)
    finally:
        shutdown_distributed()
    metrics = {"run": str(run_dir), "data": str(data), "split": split, "model": cfg["model"],
               "embedding_backend": backend, "loader": kind, **click_metrics(labels, probs), "seconds": time.time() - t0}
    return metrics


if __name__ == "__main__":
    sys.exit(main())
