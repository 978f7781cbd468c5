"""Training throughput: ctr's full step vs the DNN alone (the compute floor), per batch size.

For each batch size it times, in the same process and on the same data:
  - ``ctr``: the real training step (whole-table L2, CowClip, Adam on both groups) exactly as
    ``ctr-train`` runs it (``Trainer.train_step``), batch assembly included, once per embedding
    backend of ``--backends``: ``torchrec`` (DMP-sharded TorchRec tables, dense kernel) and
    ``torch`` (plain PyTorch, one fused table per kind), the same batches for both;
  - ``dnn floor``: a plain-PyTorch step (forward, backward, Adam) of the same MLP alone on a
    dense input of the same width (fields x dim + dense features): what no CTR framework
    can beat on this model;
  - ``cowclip``: the time of CowClip within the step (``CTROptimizer.clip_`` timed alone on the
    last step's gradients: a step-minus-step difference drowns in noise at large batch; the
    whole-table L2 costs nothing extra, it is Adam's fused ``weight_decay``) and batch
    assembly by the loader.

Usage::

    python tools/bench_train.py                         # batches 1k,8k,64k on the demo data
    python tools/bench_train.py --batches 1k,8k,64k --data data/synthetic-demo --json out.json
    python tools/bench_train.py --backends torchrec,torch   # both embedding backends, one run

Prints a Markdown table and the command; writes JSON when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr import allocator  # noqa: E402
from ctr.optim.scaling import format_batch, parse_batch  # noqa: E402
from ctr.train.config import load_config  # noqa: E402
from ctr.train.trainer import Trainer  # noqa: E402


def time_steps(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def dnn_floor(width: int, mlp: list[int], batch: int, warmup: int, steps: int) -> float:
    layers, d = [], width
    for h in mlp:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, 1))
    net = nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, width), torch.randint(0, 2, (batch,)).float()

    def step():
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y).backward()
        opt.step()
    return time_steps(step, warmup, steps)


def bench(args) -> list[dict]:
    rows = []
    for batch, backend in ((b, k) for b in args.batches for k in args.backends):
        cfg = load_config(args.model, "synthetic", overrides={"batch": batch, "data": args.data,
                                                              "scaling": "cowclip",
                                                              "embedding_backend": backend})
        tr = Trainer(cfg, quiet=True)
        tr.setup()
        loader = tr.loader   # the run's own loader (memory or stream, as --loader chose)
        it = iter(loader.epoch(0))

        def next_batch():
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader.epoch(1))
                return next(it)
        steps = max(3, min(args.steps, len(loader) - 2))
        t_step = time_steps(lambda: tr.train_step(next_batch()), args.warmup, steps)
        t_batch = time_steps(next_batch, 1, steps)
        last = next_batch()
        tr.train_step(last)  # leaves this batch's gradients in place for clip_ to work on
        t_clip = time_steps(lambda: tr.opt.clip_(last.global_ids), 1, steps)
        mcfg = cfg.model_config
        width = len(tr.dataset.sparse_fields) * mcfg.get("embedding_dim", 10) + len(tr.dataset.dense_fields)
        if backend == args.backends[0]:   # the floor depends on the batch only
            t_floor = dnn_floor(width, list(mcfg.get("mlp", [400, 400, 400])), batch, args.warmup, steps)
        table_rows = tr.dataset.table_rows
        from ctr.distributed.env import shutdown_distributed
        shutdown_distributed()
        row = {"batch": batch, "backend": backend, "ctr_samples_per_s": batch / t_step,
               "floor_samples_per_s": batch / t_floor,
               "ratio_to_floor": t_floor / t_step, "step_s": t_step, "cowclip_s": t_clip,
               "batch_assembly_s": t_batch,
               "step_over_assembly": t_step / t_batch, "steps_timed": steps, "table_rows": table_rows}
        rows.append(row)
        print(f"batch {format_batch(batch)}, {backend}: ctr {row['ctr_samples_per_s']:,.0f}/s, floor "
              f"{row['floor_samples_per_s']:,.0f}/s ({row['ratio_to_floor']:.0%}), CowClip "
              f"{t_clip * 1e3:.1f} ms/step ({t_clip / t_step:.0%}), assembly {t_batch * 1e3:.1f} ms", flush=True)
    return rows


def main() -> int:
    allocator.ensure(main)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1k,8k,64k")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--backends", default="torchrec",
                   help="embedding backends to time, comma-separated: torchrec, torch")
    p.add_argument("--data", default=None, help="processed dataset (default: the demo data)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    args.batches = [parse_batch(b) for b in args.batches.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in ("torchrec", "torch")]
    if bad or not args.backends:
        p.error(f"--backends: choose from torchrec, torch (got {args.backends.__repr__()})")
    if args.data is None:
        from ctr.data.synth import resolve_dataset
        args.data = str(resolve_dataset(None).path)
    rows = bench(args)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads, allocator {allocator.describe_active()}"
    print(f"\n{args.model} on {args.data} ({rows[0]['table_rows']:,} table rows); {machine}")
    print("| batch | backend | ctr samples/s | DNN-alone floor samples/s | ctr / floor | CowClip ms/step (share) | "
          "batch assembly ms | step / assembly |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {format_batch(r['batch'])} | {r['backend']} | {r['ctr_samples_per_s']:,.0f} | "
              f"{r['floor_samples_per_s']:,.0f} | "
              f"{r['ratio_to_floor']:.0%} | {r['cowclip_s'] * 1e3:.1f} ({r['cowclip_s'] / r['step_s']:.0%}) | "
              f"{r['batch_assembly_s'] * 1e3:.1f} | {r['step_over_assembly']:.0f}x |")
    print(f"\ncommand: python tools/bench_train.py --batches "
          f"{','.join(format_batch(b) for b in args.batches)} --backends {','.join(args.backends)} "
          f"--model {args.model} --data {args.data}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "allocator": allocator.active_allocator(), "data": args.data,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
