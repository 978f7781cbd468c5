"""The torch embedding backend on one device: throughput, memory and step phases; CowClip vs none.

Runs with torch alone (no TorchRec, no FBGEMM: ``--embedding-backend torch`` is forced), from a
source checkout without installing it; ``tools/gpu_check.sh`` calls it on a GPU machine.

``throughput``: DeepFM (dim 10, MLP 400x3, the CowClip rule, whole-table L2 + Adam) on a
synthetic dataset with ``--table-rows`` table rows (26 Criteo-shaped fields; large fields scaled
down from Criteo's cardinalities to reach the total; ids log-uniform over each vocabulary, a
heavy head and a long tail), generated on the fly and written through the normal
:class:`~ctr.data.dataset.DatasetWriter` (a few seconds for 6.5M table rows: the vocabulary
sizes are declared, not counted, so the rows needed do not grow with the tables). Per batch:

- samples/s of ``Trainer.train_step``, exactly ``ctr-train``'s step (host batch assembly, copy
  to the device, forward, backward, CowClip, both Adams; one host read of the loss);
- the same step split into phases with a device synchronisation between them: batch
  assembly, host-to-device copy, forward (+ loss), backward, optimizer (CowClip + Adam), and
  CowClip alone on the last gradients;
- peak device memory (``torch.cuda.max_memory_allocated``; peak RSS on the CPU).

``cowclip``: the built-in synthetic generator (planted model, known oracle AUC), DeepFM with
the synthetic configs, each batch size under ``--scaling cowclip`` and ``none``: test AUC,
logloss, steps, seconds.

Usage::

    python tools/gpu_bench.py throughput --device cuda --batches 1k,8k,64k,128k \\
        --table-rows 6.5m --rows 1.5m --json bench.json
    python tools/gpu_bench.py cowclip --device cuda --rows 1m --batches 1k,128k --json cowclip.json
    python tools/gpu_bench.py summary --bench bench.json --cowclip cowclip.json --out summary.md

Sizes are small enough on a CPU to dry-run it (``tools/gpu_check.sh`` with
``CTR_GPU_CHECK_DEVICE=cpu``; ``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ctr import allocator  # noqa: E402
from ctr.data.dataset import CRITEO_DENSE, CRITEO_SPARSE, LABEL, DatasetSchema, DatasetWriter, read_schema  # noqa: E402
from ctr.optim.scaling import format_batch, parse_batch  # noqa: E402

BACKEND = "torch"
# Criteo Kaggle's cardinalities (ctr.data.synth keeps the same table); fields up to this size
# keep theirs, the larger ones are scaled to make up the requested total.
KEEP_BELOW = 100_000
CHUNK_ROWS = 1 << 18


def parse_rows(text: str) -> int:
    """1500000, 1.5m, 500k (k = 1,000) -> rows."""
    t = str(text).strip().lower()
    mult = {"k": 10**3, "m": 10**6}.get(t[-1:], 1)
    value = float(t[:-1] if mult > 1 else t) * mult
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"not a row count: {text!r}")
    return int(value)


def scaled_vocab(table_rows: int) -> dict[str, int]:
    """Vocabulary per field summing to exactly ``table_rows`` (at least the small fields' sum + 26)."""
    from ctr.data.synth import CRITEO_CARDINALITY
    small = {f: v for f, v in CRITEO_CARDINALITY.items() if v < KEEP_BELOW}
    big = {f: v for f, v in CRITEO_CARDINALITY.items() if v >= KEEP_BELOW}
    room = table_rows - sum(small.values())
    if room < len(big):
        raise ValueError(f"--table-rows {table_rows:,} is below the small fields' {sum(small.values()):,} rows")
    scale = room / sum(big.values())
    vocab = dict(small)
    vocab.update({f: max(1, int(v * scale)) for f, v in big.items()})
    largest = max(big, key=big.get)
    vocab[largest] += table_rows - sum(vocab.values())   # the rounding, on the largest field
    return {f: vocab[f] for f in CRITEO_SPARSE}


def make_bench_dataset(out: Path, rows: int, table_rows: int, test_rows: int, seed: int = 0) -> DatasetSchema:
    """Random Criteo-shaped rows over fixed vocabularies, through DatasetWriter (train + test)."""
    vocab = scaled_vocab(table_rows)
    rng = np.random.default_rng(seed)
    log_v = {f: math.log(v) for f, v in vocab.items()}
    with DatasetWriter(out, overwrite=out.exists()) as writer:
        for split, n in (("train", rows), ("test", test_rows)):
            for start in range(0, n, CHUNK_ROWS):
                m = min(CHUNK_ROWS, n - start)
                cols: dict[str, np.ndarray] = {LABEL: (rng.random(m) < 0.25).astype(np.float32)}
                dense = rng.random((m, len(CRITEO_DENSE)), dtype=np.float32)
                cols.update({f: dense[:, j] for j, f in enumerate(CRITEO_DENSE)})
                for f in CRITEO_SPARSE:   # log-uniform over [0, V): P(id = k) ~ 1/(k+1)
                    ids = np.exp(rng.random(m) * log_v[f]).astype(np.int64) - 1
                    cols[f] = np.minimum(ids, vocab[f] - 1).astype(np.int32)
                writer.write(split, pa.table(cols))
        writer.commit({"dataset": "gpu-bench", "label": LABEL, "dense_fields": list(CRITEO_DENSE),
                       "sparse_fields": list(CRITEO_SPARSE), "vocab_sizes": vocab,
                       "generator": {"tool": "tools/gpu_bench.py", "ids": "log-uniform per field",
                                     "labels": "Bernoulli(0.25), no signal", "seed": seed}})
    return read_schema(out)


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _peak_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_device_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def bench_batch(data: str, batch: int, device: str, steps: int, warmup: int, model: str) -> dict[str, Any]:
    from ctr.distributed.env import shutdown_distributed
    from ctr.train.config import load_config
    from ctr.train.trainer import Trainer
    cfg = load_config(model, "criteo", overrides={"batch": batch, "data": data, "device": device,
                                                  "embedding_backend": BACKEND, "scaling": "cowclip"})
    tr = Trainer(cfg, quiet=True)
    t0 = time.perf_counter()
    tr.setup()
    setup_s = time.perf_counter() - t0
    dev = tr.env.device
    sync = _sync(dev)
    loader = tr.loader   # the run's own loader (memory or stream, as the config chose)
    epoch = [0]
    it = iter(loader.epoch(0))

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            epoch[0] += 1
            it = iter(loader.epoch(epoch[0]))
            return next(it)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tr.dmp.train()
    for _ in range(warmup):
        tr.train_step(next_batch())
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step(next_batch())
    sync()
    t_step = (time.perf_counter() - t0) / steps
    phases = {k: 0.0 for k in ("assembly", "to_device", "forward", "backward", "optimizer")}
    world = tr.env.world_size
    b = None
    for _ in range(steps):   # the same step, a synchronisation between its phases
        ta = time.perf_counter()
        b = next_batch()
        tb = time.perf_counter()
        b = b.to(dev)
        sync()
        tc = time.perf_counter()
        logits = tr.dmp(b.dense, b.ids)
        loss_sum = F.binary_cross_entropy_with_logits(logits, b.labels, reduction="sum")
        sync()
        td = time.perf_counter()
        tr.opt.zero_grad()
        (loss_sum * (world / b.global_size)).backward()
        tr.parts.sync_gradients(b.global_ids)
        sync()
        te = time.perf_counter()
        tr.opt.step(tr.parts.row_counts(b.global_ids))
        sync()
        tf = time.perf_counter()
        for k, v in zip(phases, (tb - ta, tc - tb, td - tc, te - td, tf - te)):
            phases[k] += v / steps
    assert b is not None
    # the last batch's gradients again (the step consumed them) for CowClip alone
    tr.opt.zero_grad()
    (F.binary_cross_entropy_with_logits(tr.dmp(b.dense, b.ids), b.labels, reduction="sum")
     * (world / b.global_size)).backward()
    tr.parts.sync_gradients(b.global_ids)
    counts = tr.parts.row_counts(b.global_ids)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.opt.clip_(counts)
    sync()
    t_clip = (time.perf_counter() - t0) / steps
    row = {"batch": batch, "samples_per_s": batch / t_step, "step_ms": t_step * 1e3,
           **{f"{k}_ms": v * 1e3 for k, v in phases.items()}, "cowclip_ms": t_clip * 1e3,
           "phases_sum_ms": sum(phases.values()) * 1e3, "steps_timed": steps, "warmup_steps": warmup,
           "setup_s": setup_s, "clip_fraction": tr.opt.last_clip_fraction,
           "table_rows": tr.dataset.table_rows, "device": str(dev), **_peak_mb(dev)}
    del tr, b
    shutdown_distributed()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpus": os.cpu_count(), "device": device,
                            "allocator": allocator.describe_active()}
    if device == "cuda" and torch.cuda.is_available():
        info.update({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                     "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30})
    return info


def cmd_throughput(args) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="ctr-gpu-bench-"))
    data = work / f"bench-{args.table_rows}"
    t0 = time.perf_counter()
    if not (data / "meta.json").is_file():
        make_bench_dataset(data, args.rows, args.table_rows, args.test_rows, seed=0)
    gen_s = time.perf_counter() - t0
    print(f"dataset {data}: {args.rows:,} train rows, {args.table_rows:,} table rows ({gen_s:.1f}s)", flush=True)
    result: dict[str, Any] = {"machine": machine(args.device), "model": args.model, "backend": BACKEND,
                              "data": str(data), "rows": args.rows, "table_rows": args.table_rows,
                              "dataset_seconds": gen_s, "rows_by_batch": []}
    for batch in args.batches:
        try:
            row = bench_batch(str(data), batch, args.device, args.steps, args.warmup, args.model)
        except Exception as e:  # noqa: BLE001 - record it and go on with the next size
            row = {"batch": batch, "error": f"{type(e).__name__}: {e}"}
            if args.device == "cuda":
                torch.cuda.empty_cache()
        result["rows_by_batch"].append(row)
        print(json.dumps(row), flush=True)
        _write(args.json, result)   # after every batch size: a timeout keeps what was measured
    print(throughput_table(result))
    return 0 if all("error" not in r for r in result["rows_by_batch"]) else 1


def cmd_cowclip(args) -> int:
    from ctr.data.synth import generate_dataset
    from ctr.train.config import load_config
    from ctr.train.trainer import Trainer
    work = Path(args.work or tempfile.mkdtemp(prefix="ctr-gpu-cowclip-"))
    data = work / f"synth-{args.rows}"
    t0 = time.perf_counter()
    if not (data / "meta.json").is_file():
        generate_dataset(data, args.rows, seed=0, progress=False, overwrite=data.exists())
    dataset = read_schema(data)
    result: dict[str, Any] = {"machine": machine(args.device), "model": args.model, "backend": BACKEND,
                              "data": str(data), "rows": args.rows, "epochs": args.epochs,
                              "dataset_seconds": time.perf_counter() - t0,
                              "oracle_test_auc": dataset.oracle_test_auc, "runs": []}
    print(f"dataset {data} ({result['dataset_seconds']:.1f}s), oracle AUC {result['oracle_test_auc']}", flush=True)
    for batch in args.batches:
        for scaling in ("cowclip", "none"):
            t0 = time.perf_counter()
            try:
                cfg = load_config(args.model, "synthetic", overrides={
                    "batch": batch, "data": str(data), "device": args.device, "embedding_backend": BACKEND,
                    "scaling": scaling, "epochs": args.epochs})
                s = Trainer(cfg, quiet=True).run()
                run = {"batch": batch, "scaling": scaling, "status": s["status"], "test_auc": s.get("test_auc"),
                       "test_logloss": s.get("test_logloss"), "global_steps": s["global_steps"],
                       "samples_per_second": s["samples_per_second"], "seconds": time.perf_counter() - t0,
                       "hparams": s["hparams"]}
            except Exception as e:  # noqa: BLE001
                run = {"batch": batch, "scaling": scaling, "error": f"{type(e).__name__}: {e}"}
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            _write(args.json, result)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(cowclip_table(result))
    return 0 if all("error" not in r for r in result["runs"]) else 1


def throughput_table(r: dict[str, Any]) -> str:
    lines = [f"{r['model']}, embedding backend {r['backend']}, {r['table_rows']:,} table rows, "
             f"{r['rows']:,} train rows; {r['machine'].get('gpu', r['machine']['device'])}, torch "
             f"{r['machine']['torch']}, allocator {r['machine'].get('allocator', '?')}", "",
             "| batch | samples/s | step ms | assembly | to device | forward | backward | optimizer "
             "| CowClip alone | peak memory MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows_by_batch"]:
        if "error" in x:
            lines.append(f"| {format_batch(x['batch'])} | error: {x['error'][:120]} |||||||||")
            continue
        mem = x.get("peak_device_mb", x["peak_rss_mb"])
        lines.append(f"| {format_batch(x['batch'])} | {x['samples_per_s']:,.0f} | {x['step_ms']:.2f} | "
                     f"{x['assembly_ms']:.2f} | {x['to_device_ms']:.2f} | {x['forward_ms']:.2f} | "
                     f"{x['backward_ms']:.2f} | {x['optimizer_ms']:.2f} | {x['cowclip_ms']:.2f} | {mem:,.0f} |")
    lines.append("\n(ms per step; the phases are synchronised, the samples/s step is not: it is "
                 "ctr-train's own step. Peak memory: the device's, or peak RSS on the CPU.)")
    return "\n".join(lines)


def cowclip_table(r: dict[str, Any]) -> str:
    oracle = r["oracle_test_auc"]
    lines = [f"{r['model']} on {r['rows']:,} synthetic rows (oracle test AUC "
             f"{'?' if oracle is None else format(oracle, '.4f')}), "
             f"{r['epochs']} epoch(s), embedding backend {r['backend']}", "",
             "| batch | scaling | test AUC | test logloss | steps | samples/s | seconds |",
             "|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        if "error" in x:
            lines.append(f"| {format_batch(x['batch'])} | {x['scaling']} | error: {x['error'][:120]} ||||")
            continue
        auc = f"{x['test_auc']:.4f}" if x.get("test_auc") is not None else x["status"]
        ll = f"{x['test_logloss']:.4f}" if x.get("test_logloss") is not None else "-"
        lines.append(f"| {format_batch(x['batch'])} | {x['scaling']} | {auc} | {ll} | {x['global_steps']} | "
                     f"{x['samples_per_second']:,.0f} | {x['seconds']:.1f} |")
    return "\n".join(lines)


def cmd_summary(args) -> int:
    parts = ["# ctr GPU check", ""]
    if args.phases and Path(args.phases).is_file():
        parts += ["| phase | exit code | seconds |", "|---|---|---|"]
        for line in Path(args.phases).read_text().splitlines():
            name, rc, sec = line.split()
            parts.append(f"| {name} | {rc} | {sec} |")
        parts.append("")
    if args.junit and Path(args.junit).is_file():
        import xml.etree.ElementTree as ET
        root = ET.parse(args.junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        parts += [f"pytest on the device: {tot['tests']} tests, {tot['failures']} failed, "
                  f"{tot['errors']} errors, {tot['skipped']} skipped", ""]
    for path, table in ((args.bench, throughput_table), (args.cowclip, cowclip_table)):
        if path and Path(path).is_file():
            parts += [table(json.loads(Path(path).read_text())), ""]
    text = "\n".join(parts)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _write(path: str | None, obj: Any) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    batches = lambda s: [parse_batch(b) for b in s.split(",") if b.strip()]  # noqa: E731
    t = sub.add_parser("throughput", help="samples/s, memory, phases per batch size")
    t.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    t.add_argument("--batches", type=batches, default=batches("1k,8k,64k,128k"))
    t.add_argument("--table-rows", type=parse_rows, default=6_500_000)
    t.add_argument("--rows", type=parse_rows, default=1_500_000, help="train rows")
    t.add_argument("--test-rows", type=parse_rows, default=20_000)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--model", default="deepfm")
    t.add_argument("--work", help="where the dataset goes (default: a new temporary directory)")
    t.add_argument("--json")
    c = sub.add_parser("cowclip", help="test AUC under cowclip and none at each batch size")
    c.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    c.add_argument("--batches", type=batches, default=batches("1k,128k"))
    c.add_argument("--rows", type=parse_rows, default=1_000_000)
    c.add_argument("--epochs", type=int, default=1)
    c.add_argument("--model", default="deepfm")
    c.add_argument("--work")
    c.add_argument("--json")
    s = sub.add_parser("summary", help="one Markdown page from the JSON results")
    s.add_argument("--bench")
    s.add_argument("--cowclip")
    s.add_argument("--junit")
    s.add_argument("--phases")
    s.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if getattr(args, "device", None) == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    if getattr(args, "device", None) == "cpu":
        torch.set_flush_denormal(True)
    return {"throughput": cmd_throughput, "cowclip": cmd_cowclip, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
