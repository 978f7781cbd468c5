"""Test helper: the torch backend's fast step (row gradients) and a plain reference step, side by
side on the same batches, at 1 rank in-process or at N ranks (gloo, ``torch.multiprocessing``).

The reference is, for ``update="dense"``, the whole-table step: ``F.embedding``'s full-size
gradient, a full-table all-reduce at N ranks and :class:`CTROptimizer`'s step on
``weight.grad`` (TorchRec's path, itself checked against a brute-force Algorithm 1 in
``tests/test_optimizer.py``); for ``update="sparse"``, a loop over the present rows with a
textbook lazy Adam (Keras' epsilon form), L2 and CowClip written out (:func:`lazy_reference_step`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ctr.data.dataset import read_schema
from ctr.data.loader import BatchLoader, SplitTensors
from ctr.distributed.env import DistEnv
from ctr.distributed.shards import FusedGroup
from ctr.models import ModelConfig
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.options import OptimizerOptions
from ctr.optim.scaling import Hyperparams
from ctr.train.build import ModelParts, build_model_parts

MODEL_SETTINGS = ModelConfig(embedding_dim=8, mlp=(16, 16), cross_layers=2)


@dataclass
class Setup:
    data: str
    update: str = "dense"
    model: str = "deepfm"
    batch: int = 128
    steps: int = 32
    # r 1e-2: a good share of the present rows is clipped every step; 2λ <= r (present rows only)
    hp: Hyperparams = field(default_factory=lambda: Hyperparams(
        dense_lr=1e-3, embedding_lr=1e-2, l2=1e-3, warmup_epochs=0, cowclip=True, r=1e-2, zeta=1e-5))
    warmup_steps: int = 10


def build(setup: Setup, env: DistEnv, fast: bool) -> ModelParts:
    parts = build_model_parts(setup.model, MODEL_SETTINGS, read_schema(setup.data), env, seed=0,
                              embedding_backend="torch")
    if not fast:   # plain autograd gradients: weight.grad [Σ V, D], full-table all-reduce
        parts.module.sparse.use_row_grads(False)
        parts.groups = parts.module.sparse.fused_groups()
    assert all((g.row_grad is not None) == fast for g in parts.groups)
    return parts


def _rows_of(g: FusedGroup, ids: torch.Tensor, fields: list[str]) -> dict[int, int]:
    """{fused row: count} of the global batch, from the ids by plain Python."""
    out: dict[int, int] = {}
    pos = {f: i for i, f in enumerate(fields)}
    for s in g.shards:
        for i in ids[:, pos[s.field]].tolist():
            if s.row_offset <= i < s.row_offset + s.rows:
                row = s.fused_row + i - s.row_offset
                out[row] = out.get(row, 0) + 1
    return out


@torch.no_grad()
def lazy_reference_step(groups: list[FusedGroup], ids: torch.Tensor, fields: list[str], hp: Hyperparams,
                        opts: OptimizerOptions, state: dict[int, tuple[torch.Tensor, torch.Tensor]],
                        t: int) -> None:
    """The row-sparse update by hand: per present row, g + 2λw, CowClip on it (embedding tables),
    then Adam on that row only, bias-corrected by the global step ``t``. Reads ``weight.grad``.
    (Row by row in float32 NumPy, which shares the tensors' memory: a small-array op costs a
    microsecond there, tens in torch.)"""
    b1, b2, eps = 0.9, 0.999, opts.adam_epsilon
    for g in groups:
        w_t = g.view().detach().cpu()        # the table itself on the CPU, a copy elsewhere
        w, grad = w_t.numpy(), g.view(g.weight.grad).cpu().numpy()
        m_t, v_t = state.setdefault(id(g), (torch.zeros_like(w_t), torch.zeros_like(w_t)))
        m, v = m_t.numpy(), v_t.numpy()
        for row, cnt in sorted(_rows_of(g, ids, fields).items()):
            l2 = hp.l2
            if opts.sparse_l2 == "count" and hp.l2_batch_ratio != 1.0:
                l2 = hp.l2 / hp.l2_batch_ratio * min(cnt, hp.l2_batch_ratio)
            gr = grad[row] + np.float32(2 * l2) * w[row]
            if hp.cowclip and g.kind == "embedding":
                wn = float(np.linalg.norm(w[row]))
                if opts.lower_bound == "paper":
                    thr = cnt * max(hp.r * wn, hp.zeta)
                else:
                    thr = hp.r * cnt * max(wn, hp.r * math.sqrt(g.dim) * hp.zeta)
                gn = float(np.linalg.norm(gr))
                if gn > 0:
                    gr = gr * np.float32(min(1.0, thr / gn))
            m[row] = b1 * m[row] + (1 - b1) * gr
            v[row] = b2 * v[row] + (1 - b2) * gr * gr
            if opts.adam_epsilon_form == "keras":
                w[row] -= hp.embedding_lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[row] / (np.sqrt(v[row]) + eps)
            else:
                w[row] -= hp.embedding_lr * (m[row] / (1 - b1 ** t)) / (np.sqrt(v[row] / (1 - b2 ** t)) + eps)
        if g.weight.device.type != "cpu":
            g.view().copy_(w_t)


def run(setup: Setup, env: DistEnv, options: OptimizerOptions | None = None,
        check_untouched: bool = False) -> dict[str, Any]:
    """Trains the fast and the reference model ``setup.steps`` steps on this rank's batches.
    Returns both models' weights and table moments (CPU tensors), the clip fractions seen and
    (``check_untouched``, sparse) whether every absent row kept its w, m, v bit for bit."""
    opts = options or OptimizerOptions(update=setup.update)
    fields = list(read_schema(setup.data).sparse_fields)
    fast, ref = build(setup, env, True), build(setup, env, False)
    fast_opt = CTROptimizer(fast.dense_parameters(), fast.groups, setup.hp, setup.warmup_steps, fields, opts)
    lazy = opts.update == "sparse"
    # the sparse reference: CTROptimizer for the dense weights only, the tables by hand
    ref_opt = CTROptimizer(ref.dense_parameters(), [] if lazy else ref.groups, setup.hp, setup.warmup_steps,
                           fields, opts)
    ref_state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    loader = BatchLoader(SplitTensors.load(setup.data, "train"), setup.batch, seed=0, rank=env.rank,
                         world_size=env.world_size)
    clip, untouched_kept = [], True
    for step, b in enumerate(loader.epoch(0)):
        if step >= setup.steps:
            break
        b = b.to(env.device)
        before = None
        if check_untouched:
            before = [(g.view().clone(), {k: v.clone() for k, v in fast_opt.sparse_state_of(g).items()})
                      for g in fast.groups]
        for parts, opt in ((fast, fast_opt), (ref, ref_opt)):
            if isinstance(dist.all_reduce, _ReduceLog):
                dist.all_reduce.recording = parts is fast
            logits = parts.module(b.dense, b.ids)
            loss = F.binary_cross_entropy_with_logits(logits, b.labels, reduction="sum")
            opt.zero_grad()
            for g in parts.groups:
                g.weight.grad = None
            (loss * (env.world_size / b.global_size)).backward()
            parts.sync_gradients(b.global_ids)
            opt.step(b.global_ids)
            if parts is ref and lazy:
                lazy_reference_step(ref.groups, b.global_ids, fields, setup.hp, opts, ref_state, step + 1)
        clip.append((fast_opt.last_clip_fraction, ref_opt.last_clip_fraction))
        if before is not None:
            for g, (w0, st0) in zip(fast.groups, before):
                present = torch.zeros(g.rows, dtype=torch.bool, device=g.weight.device)
                present[list(_rows_of(g, b.global_ids, fields))] = True
                st = fast_opt.sparse_state_of(g)
                for now, then in [(g.view(), w0)] + [(g.view(st[k]), g.view(st0[k])) for k in st0 if k != "step"]:
                    if not torch.equal(now[~present], then[~present]):
                        untouched_kept = False

    def weights(parts: ModelParts, opt: CTROptimizer, lazy_state: bool) -> dict[str, torch.Tensor]:
        out = {n: p.detach().cpu().clone() for n, p in parts.module.named_parameters()}
        for i, g in enumerate(parts.groups):
            if lazy_state:
                m, v = ref_state[id(g)]
            else:
                st = opt.sparse_state_of(g)
                m, v = st["exp_avg"], st["exp_avg_sq"]
            out[f"table{i}.m"], out[f"table{i}.v"] = m.detach().cpu().clone(), v.detach().cpu().clone()
        return out
    return {"fast": weights(fast, fast_opt, False), "ref": weights(ref, ref_opt, lazy), "clip": clip,
            "untouched_kept": untouched_kept, "steps": min(setup.steps, len(loader))}


class _ReduceLog:
    """Wraps dist.all_reduce to record the size of every tensor the fast model's step sends."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.recording = False
        self._orig = dist.all_reduce

    def __call__(self, t: torch.Tensor, *a: Any, **kw: Any) -> Any:
        if self.recording:
            self.sizes.append(t.numel())
        return self._orig(t, *a, **kw)


def run_ranks(setup: Setup, world: int, tmp_dir: str) -> list[dict[str, Any]]:
    """:func:`run` on ``world`` gloo processes; each rank's result."""
    import torch.multiprocessing as mp
    mp.spawn(worker, args=(world, os.path.join(tmp_dir, "rendezvous"), setup, tmp_dir), nprocs=world)
    return [torch.load(os.path.join(tmp_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def worker(rank: int, world: int, init_file: str, setup: Setup, out_dir: str) -> None:
    """One gloo rank of :func:`run`, for ``torch.multiprocessing.spawn``; writes its result."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
        log = _ReduceLog()
        dist.all_reduce = log            # type: ignore[assignment]  # this process only
        result = run(setup, env)
        result["reduce_sizes"] = log.sizes
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
