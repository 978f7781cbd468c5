"""Loader: memory of a split held in memory, and batch assembly time per batch size.

Loads the train split of a processed dataset with ``SplitTensors.load`` (the loader
``ctr-train`` uses), reports load time and the process's peak RSS, then times
``BatchLoader.batch`` (index gather + KeyedJaggedTensor) at each batch size. Compare the
assembly times with the training step times of ``tools/bench_train.py``: the loader must
be at least 10x faster than a step.

Usage::

    python tools/bench_loader.py --data data/criteo-shaped          # any processed dataset
    python tools/bench_loader.py --rows 45840617 --workdir /tmp/x   # generate the Criteo-sized
                                                                    # synthetic dataset first
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr import allocator  # noqa: E402
from ctr.data.loader import BatchLoader, SplitTensors  # noqa: E402
from ctr.optim.scaling import format_batch, parse_batch  # noqa: E402


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> int:
    allocator.ensure(main)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="processed dataset")
    p.add_argument("--rows", type=int, help="generate a synthetic dataset of this many rows first")
    p.add_argument("--workdir", default="/tmp/ctr-bench-loader")
    p.add_argument("--batches", default="1k,8k,64k,128k")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    data_dir = args.data
    if data_dir is None:
        if not args.rows:
            p.error("give --data or --rows")
        from ctr.data.synth import generate_dataset
        data_dir = os.path.join(args.workdir, f"synthetic-{args.rows}")
        if not os.path.isfile(os.path.join(data_dir, "meta.json")):
            t0 = time.time()
            generate_dataset(data_dir, args.rows, seed=0, overwrite=os.path.exists(data_dir))
            print(f"generated {args.rows:,} rows in {time.time() - t0:.0f}s -> {data_dir}")
    print(f"allocator: {allocator.describe_active()}")
    base = rss_mb()
    t0 = time.time()
    data = SplitTensors.load(data_dir, "train")
    load_s = time.time() - t0
    held = rss_mb()
    tensor_mb = sum(t.numel() * t.element_size() for t in (data.ids, data.dense, data.labels)) / 2**20
    print(f"train split: {data.num_rows:,} rows x ({len(data.sparse_fields)} ids + "
          f"{len(data.dense_fields)} dense) in {load_s:.1f}s; tensors {tensor_mb:,.0f} MB; "
          f"RSS {base:,.0f} -> {held:,.0f} MB; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    rows = []
    for b in (parse_batch(x) for x in args.batches.split(",")):
        loader = BatchLoader(data, b, seed=0)
        perm = loader.order(0)
        n = min(args.repeats, len(loader))
        loader.batch(perm[:b])  # warm-up
        t0 = time.perf_counter()
        for i in range(n):
            loader.batch(perm[i * b:(i + 1) * b])
        dt = (time.perf_counter() - t0) / n
        rows.append({"batch": b, "assembly_ms": dt * 1e3, "rows_per_s": b / dt})
        print(f"batch {format_batch(b)}: {dt * 1e3:.2f} ms per batch ({b / dt:,.0f} rows/s)")
    result = {"data": data_dir, "rows": data.num_rows, "load_seconds": load_s, "tensor_mb": tensor_mb,
              "rss_before_mb": base, "rss_after_load_mb": held,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads(), "allocator": allocator.active_allocator(),
              "batches": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"command: python tools/bench_loader.py --data {data_dir} --batches {args.batches}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
