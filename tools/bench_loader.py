"""Loaders: memory of a split held in memory and batch assembly time, or a streamed epoch's RSS.

``--loader memory`` (default): loads the train split of a processed dataset with
``SplitTensors.load`` (``ctr-train``'s memory loader), reports load time and the process's peak
RSS, then times ``BatchLoader.batch`` (index gather) at each batch size. Compare the assembly
times with the training step times of ``tools/bench_train.py``: the loader must be at least 10x
faster than a step.

``--loader stream``: streams one epoch of the train split with ``StreamLoader`` (``ctr-train
--loader stream``) at the first batch size and reports rows/s and the RSS before and during the
epoch (sampled every 10 batches): it stays flat, bounded by the shuffle window, however large
the split.

Usage::

    python tools/bench_loader.py --data data/criteo-shaped          # any processed dataset
    python tools/bench_loader.py --rows 45840617 --workdir /tmp/x   # generate the Criteo-sized
                                                                    # synthetic dataset first
    python tools/bench_loader.py --data data/criteo-shaped --loader stream --batches 8k \
        --shuffle-buffer 262144
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


def stream_epoch(data_dir: str, batch: int, shuffle_buffer: int, json_out: str | None) -> int:
    from ctr.data.dataset import read_schema
    from ctr.data.stream import SplitLayout, StreamLoader
    ds = read_schema(data_dir)
    base = rss_mb()
    layout = SplitLayout(ds, "train")
    loader = StreamLoader(layout, batch, seed=0, shuffle_buffer=shuffle_buffer)
    split_mb = layout.rows * ds.row_bytes / 2**20
    t0 = time.perf_counter()
    peak, rows, first_mb = 0.0, 0, 0.0
    for i, b in enumerate(loader.epoch(0)):
        rows += b.labels.numel()
        if i == 0:
            first_mb = rss_mb()
        if i % 10 == 0:
            peak = max(peak, rss_mb())
    dt = time.perf_counter() - t0
    result = {"data": data_dir, "rows": rows, "groups": len(layout.groups), "batch": batch,
              "shuffle_buffer": shuffle_buffer, "split_in_memory_mb": split_mb, "rss_before_mb": base,
              "rss_first_batch_mb": first_mb, "rss_peak_during_epoch_mb": peak,
              "peak_window_rows": loader.peak_resident_rows,
              "bound_mb": loader.resident_bound_rows() * ds.row_bytes / 2**20,
              "seconds": dt, "rows_per_s": rows / dt, "threads": torch.get_num_threads()}
    print(f"streamed {rows:,} rows ({len(layout.groups)} row groups, {split_mb:,.0f} MB in memory) in "
          f"{dt:.1f}s ({rows / dt:,.0f} rows/s) at batch {format_batch(batch)}, window {shuffle_buffer:,} "
          f"rows; RSS {base:,.0f} MB before, {first_mb:,.0f} MB at the first batch, peak {peak:,.0f} MB "
          f"during the epoch (bound of the loader's rows: {result['bound_mb']:,.0f} MB)")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main() -> int:
    allocator.ensure(main)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="processed dataset")
    p.add_argument("--rows", type=int, help="generate a synthetic dataset of this many rows first")
    p.add_argument("--workdir", default="/tmp/ctr-bench-loader")
    p.add_argument("--batches", default="1k,8k,64k,128k")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--loader", choices=("memory", "stream"), default="memory")
    p.add_argument("--shuffle-buffer", type=int, default=1 << 20, help="stream: rows per window")
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
    if args.loader == "stream":
        return stream_epoch(data_dir, parse_batch(args.batches.split(",")[0]), args.shuffle_buffer, args.json)
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
