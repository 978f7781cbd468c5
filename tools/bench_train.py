"""Training throughput: ctr's full step against its floors and against TorchRec's fused peer.

For each batch size it times, in the same process and on the same data:

- ``ctr``: the real training step (L2, CowClip, Adam on both groups) exactly as ``ctr-train``
  runs it (``Trainer.train_step``), batch assembly included, once per embedding backend of
  ``--backends`` (``torchrec``: DMP-sharded TorchRec tables, dense kernel; ``torch``: plain
  PyTorch, one fused table per kind, row gradients) and per table update of ``--update``
  (``dense``: the paper's, every row every step; ``sparse``: the batch's rows only);
- ``DNN floor``: a plain-PyTorch step (forward, backward, Adam) of the same MLP alone on a
  dense input of the same width (fields x dim + dense features), with the gradient of that
  input, which a CTR model must hand back to its embeddings: what no CTR framework can beat on
  this model. (Until 2026-12-07 the floor left that gradient out: the first layer's backward
  GEMM for the input, 8% of the MLP's multiply-adds at 273 x 400 x 400 x 400, which the real
  step and TorchRec's peer both do, so the floor understated the work);
- ``bandwidth floor``: one streaming read + write of every byte of w, m and v of all tables:
  ``buf.neg_()`` on one float32 buffer of ``3 x table rows x (D + 1)`` elements (the size of
  the embedding and first-order tables' w, m, v together): each element is read once and
  written once, in order, by all threads. (Six separate in-place passes, one per tensor, or
  ``torch._foreach_mul_``, measured 10-40% slower than one pass on this 2-core VM, and slower
  than torch's fused Adam over the same tables, so they overstate the floor.) The dense update
  must at least do that every step; ``step / (DNN + bandwidth floor)`` is how far the dense
  regime is from its floor (the issue's target: <= 1.3 at 6M table rows);
- ``TorchRec peer``: TorchRec's ``EmbeddingBagCollection`` sharded by DMP with the FUSED
  compute kernel and FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (``fused_params``: the update runs
  inside the backward; CowClip cannot be done there), plus the same DNN with Adam, same data,
  same batches. FBGEMM's TBE needs dims that are multiples of 4, so the peer's tables are
  ``ceil4(D)`` wide (10 -> 12) and its first-order tables 4 wide; the model sees the first
  ``D`` columns and the first one, so the DNN and the rest are ctr's shapes exactly. The peer
  thus moves 12/10 of ctr's embedding bytes and 4x its first-order bytes;
- ``CowClip``: its time within the step (``CTROptimizer.clip_`` timed alone on one batch's
  gradients), and batch assembly by the loader.

Usage::

    python tools/bench_train.py                         # batches 1k,8k,64k on the demo data
    python tools/bench_train.py --batches 1k,8k,64k --backends torch --update dense,sparse \\
        --data DIR --json out.json                      # both regimes and the peer, one run

A ~6.4M-table-row, Criteo-shaped dataset with many rare ids takes a minute to make:
``python -m ctr.data.synth --rows 2.2m --vocab-scale 30 --zipf 0.72 --out DIR``.

Prints a Markdown table and the command; writes JSON when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctr import allocator  # noqa: E402
from ctr.data.loader import BatchLoader  # noqa: E402
from ctr.distributed.choices import torchrec_importable  # noqa: E402
from ctr.optim.options import UPDATE_MODES  # noqa: E402
from ctr.optim.scaling import format_batch, parse_batch  # noqa: E402
from ctr.train.config import load_config  # noqa: E402
from ctr.train.trainer import Trainer  # noqa: E402


def time_steps(fn, warmup: int, steps: int) -> float:
    """Seconds per call: the median of ``steps`` timed calls after ``warmup`` untimed ones (a
    median, not a mean: on a machine shared with other jobs a few calls take several times
    longer, and would move a mean of 10 by tens of percent)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dnn_floor(width: int, mlp: list[int], batch: int, warmup: int, steps: int) -> float:
    layers, d = [], width
    for h in mlp:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, 1))
    net = nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, width, requires_grad=True), torch.randint(0, 2, (batch,)).float()

    def step():
        opt.zero_grad()
        x.grad = None            # a fresh input gradient every step, as the embeddings get
        nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y).backward()
        opt.step()
    return time_steps(step, warmup, steps)


def bandwidth_floor(table_rows: int, dims: list[int], warmup: int, steps: int) -> tuple[float, int]:
    """(seconds, bytes moved) of one in-place pass over a buffer the size of w, m, v of tables of
    ``table_rows`` rows and each dim of ``dims``: every float read once and written once."""
    buf = torch.ones(3 * table_rows * sum(dims))     # ones: every page touched before timing
    seconds = time_steps(buf.neg_, warmup, steps)
    moved = 2 * buf.numel() * buf.element_size()
    del buf
    gc.collect()
    return seconds, moved


class _Batches:
    """This run's batches, epoch after epoch (the same sequence for every timed step kind)."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch, self.it = 0, iter(self.loader.epoch(0))

    def __call__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.loader.epoch(self.epoch))
            return next(self.it)


def _backward_only(tr: Trainer, batch) -> None:
    """The gradients of one step (what ``train_step`` does before the optimizer step)."""
    import torch.nn.functional as F
    logits = tr.dmp(batch.dense, batch.ids)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
    tr.opt.zero_grad()
    (loss * (tr.env.world_size / batch.global_size)).backward()
    tr.parts.sync_gradients(batch.global_ids)


def time_ctr(args, batch: int, backend: str, update: str) -> dict:
    cfg = load_config(args.model, "synthetic", overrides={"batch": batch, "data": args.data, "scaling": "cowclip",
                                                          "embedding_backend": backend, "update": update})
    tr = Trainer(cfg, quiet=True)
    tr.setup()
    nxt = _Batches(tr.loader)   # the run's own loader (memory or stream, as --loader chose)
    steps = max(3, min(args.steps, len(nxt.loader) - 2))
    t_step = time_steps(lambda: tr.train_step(nxt()), args.warmup, steps)
    t_batch = time_steps(nxt, 1, steps)
    last = nxt()
    _backward_only(tr, last)
    counts = tr.parts.row_counts(last.global_ids)   # what its forward's lookups received
    t_clip = time_steps(lambda: tr.opt.clip_(counts), 1, steps)
    tr.opt.zero_grad()
    mcfg = cfg.model_config
    out = {"step_s": t_step, "cowclip_s": t_clip, "batch_assembly_s": t_batch, "steps_timed": steps,
           "table_rows": tr.dataset.table_rows, "dim": int(mcfg.get("embedding_dim", 10)),
           "width": len(tr.dataset.sparse_fields) * mcfg.get("embedding_dim", 10) + len(tr.dataset.dense_fields),
           "mlp": list(mcfg.get("mlp", [400, 400, 400])), "dataset": tr.dataset, "cfg": cfg}
    from ctr.distributed.env import shutdown_distributed
    shutdown_distributed()
    return out      # the trainer (tables, moments) is freed with this frame


# ------------------------------------------------------------------ TorchRec's fused peer

def _ceil4(d: int) -> int:
    return -(-d // 4) * 4


class PeerSparse(nn.Module):
    """Two TorchRec EBCs of FBGEMM-legal widths (``ceil4(D)`` and 4) with ctr's SparseArch's
    interface: ``emb`` [B, F, D] (the first D columns), ``lin`` [B] (the first column)."""

    def __init__(self, fields: list[str], vocab_sizes: dict[str, int], dim: int):
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        from ctr.models.config import EMBEDDING_PREFIX, LINEAR_PREFIX

        def tables(prefix: str, d: int):
            return [EmbeddingBagConfig(name=f"{prefix}{f}", embedding_dim=d, num_embeddings=int(vocab_sizes[f]),
                                       feature_names=[f], pooling=PoolingType.SUM) for f in fields]
        self.fields, self.embedding_dim, self.width = list(fields), int(dim), _ceil4(dim)
        self.embedding = EmbeddingBagCollection(tables=tables(EMBEDDING_PREFIX, self.width), device=torch.device("meta"))
        self.linear = EmbeddingBagCollection(tables=tables(LINEAR_PREFIX, 4), device=torch.device("meta"))

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchrec import KeyedJaggedTensor
        b, f = ids.shape
        kjt = KeyedJaggedTensor(keys=self.fields, values=ids.t().reshape(-1).to(torch.int64),
                                lengths=torch.ones(b * f, dtype=torch.int32))
        emb = self.embedding(kjt).values().view(b, f, self.width)[:, :, :self.embedding_dim]
        lin = self.linear(kjt).values().view(b, f, 4)[:, :, 0].sum(dim=1)
        return emb, lin


def time_peer(args, batch: int, ctr_run: dict) -> float:
    """Seconds per step of TorchRec EBC + fused row-wise Adagrad + the same DNN with Adam."""
    import torch.nn.functional as F
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import (
        construct_module_sharding_plan,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    from ctr.data.loader import SplitTensors
    from ctr.distributed.env import init_distributed, shutdown_distributed
    from ctr.distributed.sharding import quiet_library_noise
    from ctr.distributed.shards import SPARSE_MODULES, dense_parameters
    from ctr.models import build_model

    quiet_library_noise()
    cfg, ds = ctr_run["cfg"], ctr_run["dataset"]
    hp = cfg.resolved_hparams()
    env = init_distributed("cpu")
    torch.manual_seed(0)
    net = build_model(cfg.model, list(ds.dense_fields), list(ds.sparse_fields), dict(ds.vocab_sizes),
                      cfg.model_settings(), device="cpu", sparse_device="meta", embedding_backend="torchrec")
    net.sparse = PeerSparse(list(ds.sparse_fields), dict(ds.vocab_sizes), ctr_run["dim"])
    sharder = EmbeddingBagCollectionSharder(fused_params={
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": hp.embedding_lr, "eps": 1e-8})
    plan = {path: construct_module_sharding_plan(
        net.get_submodule(path), sharder=sharder, local_size=1, world_size=1, device_type="cpu",
        per_param_sharding={t.name: table_wise(rank=0, compute_kernel="fused")
                            for t in net.get_submodule(path).embedding_bag_configs()})
        for path in SPARSE_MODULES}
    dmp = DistributedModelParallel(net, plan=ShardingPlan(plan), device=env.device, sharders=[sharder],
                                   init_data_parallel=False)
    opt = torch.optim.Adam(list(dense_parameters(dmp).values()), lr=hp.dense_lr, fused=True)
    nxt = _Batches(BatchLoader(SplitTensors.load(ds, "train"), batch, seed=cfg.seed))

    def step():
        b = nxt()
        loss = F.binary_cross_entropy_with_logits(dmp(b.dense, b.ids), b.labels)
        opt.zero_grad()
        loss.backward()          # the tables are updated inside (row-wise Adagrad)
        opt.step()
        return loss.item()       # the one host read, as ctr's step
    seconds = time_steps(step, args.warmup, ctr_run["steps_timed"])
    shutdown_distributed()
    return seconds


# ------------------------------------------------------------------ the run

def bench(args) -> dict:
    rows, peers, floors = [], {}, {}
    bw: tuple[float, int] | None = None
    for batch in args.batches:
        for backend in args.backends:
            for update in args.update:
                r = time_ctr(args, batch, backend, update)
                gc.collect()
                if bw is None:    # the tables' size only: once per run
                    bw = bandwidth_floor(r["table_rows"], [r["dim"], 1], args.warmup, max(5, args.steps // 2))
                    print(f"bandwidth floor: {bw[0] * 1e3:.1f} ms for {bw[1] / 1e9:.2f} GB "
                          f"({bw[1] / bw[0] / 1e9:.1f} GB/s)", flush=True)
                if batch not in floors:
                    floors[batch] = dnn_floor(r["width"], r["mlp"], batch, args.warmup, r["steps_timed"])
                if args.peer and batch not in peers:
                    peers[batch] = time_peer(args, batch, r)
                    gc.collect()
                t_floor, t_step = floors[batch], r["step_s"]
                row = {"batch": batch, "backend": backend, "update": update,
                       "ctr_samples_per_s": batch / t_step, "step_s": t_step,
                       "dnn_floor_s": t_floor, "floor_samples_per_s": batch / t_floor,
                       "bandwidth_floor_s": bw[0], "bandwidth_floor_bytes": bw[1],
                       "step_over_dnn_plus_bandwidth": t_step / (t_floor + bw[0]),
                       "share_of_dnn_floor": t_floor / t_step,
                       "peer_s": peers.get(batch), "over_peer": peers[batch] / t_step if batch in peers else None,
                       **{k: r[k] for k in ("cowclip_s", "batch_assembly_s", "steps_timed", "table_rows")}}
                rows.append(row)
                peer = (f", TorchRec peer {batch / peers[batch]:,.0f}/s (ctr {row['over_peer']:.2f}x)"
                        if batch in peers else "")
                print(f"batch {format_batch(batch)}, {backend}, update {update}: ctr {row['ctr_samples_per_s']:,.0f}/s "
                      f"({t_step * 1e3:.0f} ms), DNN floor {t_floor * 1e3:.0f} ms, step / (DNN + bandwidth floor) "
                      f"{row['step_over_dnn_plus_bandwidth']:.2f}, {row['share_of_dnn_floor']:.0%} of the DNN floor"
                      f"{peer}, CowClip {r['cowclip_s'] * 1e3:.1f} ms", flush=True)
    return {"rows": rows, "peer_s": {str(b): s for b, s in peers.items()}}


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets at this run's table size, each with the measured figure."""
    out = []
    for r in rows:
        b = format_batch(r["batch"])
        if r["update"] == "dense":
            out.append(f"- {b} {r['backend']} dense: step / (DNN + bandwidth floor) = "
                       f"{r['step_over_dnn_plus_bandwidth']:.2f} (target <= 1.3)"
                       + (f"; vs TorchRec peer {r['over_peer']:.2f}x (target >= 1 at 8K, 64K)"
                          if r["over_peer"] is not None else ""))
        else:
            out.append(f"- {b} {r['backend']} sparse: vs TorchRec peer "
                       + (f"{r['over_peer']:.2f}x" if r["over_peer"] is not None else "n/a")
                       + f" (target >= 1.3 at 1K, 8K; >= 1 at 64K); {r['share_of_dnn_floor']:.0%} of the "
                         "DNN floor (target >= 90% at 64K)")
    return out


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1k,8k,64k")
    p.add_argument("--model", default="deepfm")
    p.add_argument("--backends", default="torchrec",
                   help="embedding backends to time, comma-separated: torchrec, torch")
    p.add_argument("--update", default="dense",
                   help=f"table updates to time, comma-separated: {', '.join(UPDATE_MODES)}")
    p.add_argument("--no-peer", dest="peer", action="store_false",
                   help="skip TorchRec's fused row-wise Adagrad peer (on where TorchRec imports)")
    p.add_argument("--data", default=None, help="processed dataset (default: the demo data)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.batches = [parse_batch(b) for b in args.batches.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in ("torchrec", "torch")]
    if bad or not args.backends:
        p.error(f"--backends: choose from torchrec, torch (got {args.backends!r})")
    args.update = [u.strip() for u in args.update.split(",") if u.strip()]
    if not args.update or any(u not in UPDATE_MODES for u in args.update):
        p.error(f"--update: choose from {', '.join(UPDATE_MODES)} (got {args.update!r})")
    args.peer = args.peer and torchrec_importable()
    if args.data is None:
        from ctr.data.synth import resolve_dataset
        args.data = str(resolve_dataset(None).path)
    result = bench(args)
    rows = result["rows"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads, allocator {allocator.describe_active()}"
    r0 = rows[0]
    print(f"\n{args.model} on {args.data} ({r0['table_rows']:,} table rows); {machine}")
    print(f"bandwidth floor: {r0['bandwidth_floor_s'] * 1e3:.1f} ms per pass over w, m, v "
          f"({r0['bandwidth_floor_bytes'] / 1e9:.2f} GB read + written)")
    print("| batch | backend | update | ctr samples/s | step ms | DNN floor ms | step / (DNN + bw floor) | "
          "% of DNN floor | TorchRec peer samples/s | ctr / peer | CowClip ms | assembly ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peer = (f"{r['batch'] / r['peer_s']:,.0f} | {r['over_peer']:.2f}x" if r["peer_s"] else "— | —")
        # the bandwidth floor bounds the dense update only (the sparse one touches U rows)
        to_floor = f"{r['step_over_dnn_plus_bandwidth']:.2f}" if r["update"] == "dense" else "—"
        print(f"| {format_batch(r['batch'])} | {r['backend']} | {r['update']} | {r['ctr_samples_per_s']:,.0f} | "
              f"{r['step_s'] * 1e3:.0f} | {r['dnn_floor_s'] * 1e3:.0f} | {to_floor} | "
              f"{r['share_of_dnn_floor']:.0%} | {peer} | {r['cowclip_s'] * 1e3:.1f} | "
              f"{r['batch_assembly_s'] * 1e3:.1f} |")
    print("\ntargets (issue 11, at 6M table rows):")
    print("\n".join(targets(rows)))
    print(f"\ncommand: python tools/bench_train.py --batches "
          f"{','.join(format_batch(b) for b in args.batches)} --backends {','.join(args.backends)} "
          f"--update {','.join(args.update)} --model {args.model} --data {args.data} --steps {args.steps}"
          + ("" if args.peer else " --no-peer"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "allocator": allocator.active_allocator(), "data": args.data, **result}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
