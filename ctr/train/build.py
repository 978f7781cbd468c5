"""The one place that turns a configuration into a model ready to train or evaluate.

::

    build_model_parts(model, ModelConfig, DatasetSchema, env, sharding, seed, embedding_backend)
      torchrec: build_model (EBC tables on "meta") ──▶ shard_model (DMP plan, dense kernel)
                ──▶ fused_groups (each local shard with its global rows) ──▶ init_embeddings_
                ──▶ record_lookups (CowClip's counts from the ids each lookup receives)
      torch:    build_model (fused tables on "meta") ──▶ to_empty(device) ──▶ use_row_grads
                (training gradients as the batch's touched rows, ctr.models.row_grad) ──▶
                FusedSparseArch.fused_groups (one replicated shard per field) ──▶ init_embeddings_;
                gradients averaged over ranks by ModelParts.sync_gradients (world > 1: the
                dense ones flat, the tables' on the global batch's touched rows only)
    build_optimizer(cfg, hparams, parts, steps_per_epoch, train_rows, sparse_fields)  ──▶ CTROptimizer

``ctr-train`` (:class:`~ctr.train.trainer.Trainer`), ``ctr-eval`` and the benchmarks in
``tools/`` all build through here, so a change in how a model is built, sharded or optimised
(another embedding backend, another base optimizer) is made once. Only the torchrec branch
imports TorchRec (:mod:`ctr.distributed.sharding`, :mod:`ctr.models.sparse`).

Both backends give the same module interface (``module(dense, ids [B, F]) -> logits``), the
same dense parameter names and :class:`~ctr.distributed.shards.FusedGroup` s keyed by
global table rows, and the same initial values for the same seed; so the optimizer,
checkpoints and metrics do not know which one runs, and a checkpoint of one loads into the
other.

Example::

    ds = read_schema(data)
    parts = build_model_parts("deepfm", cfg.model_settings(), ds, env, "auto", seed=0)
    opt = build_optimizer(cfg, cfg.resolved_hparams(), parts, steps_per_epoch=100,
                          train_rows=ds.rows("train"), sparse_fields=list(ds.sparse_fields))
    logits = parts.module(batch.dense, batch.ids)
    loss.backward(); parts.sync_gradients(batch.global_ids)
    opt.step(parts.row_counts(batch.global_ids))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ctr.data.dataset import DatasetSchema
from ctr.distributed.choices import check_backend_sharding, resolve_embedding_backend
from ctr.distributed.counts import IdCounter, LookupRecorder, RowCounts
from ctr.distributed.env import DistEnv
from ctr.distributed.shards import FusedGroup, dense_parameters, init_embeddings_
from ctr.models import ModelConfig, build_model
from ctr.models.row_grad import all_reduce_rows_
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.scaling import Hyperparams
from ctr.train.config import TrainConfig

BACKEND_NOTES = {"torchrec": "TorchRec EBCs, DistributedModelParallel (dense kernel)",
                 "torch": "plain PyTorch, one fused table per kind, replicated on every rank"}


@dataclass
class ModelParts:
    """A built model: the module to call, this rank's table storage, and the sharding plan."""

    module: nn.Module                       # forward(dense, ids [B, F] or KJT) -> logits
    groups: list[FusedGroup]                # this rank's embedding storage (optimizer, checkpoints)
    plan: dict[str, tuple[str, int]]        # field -> (sharding type, rank)
    vocab_sizes: dict[str, int]
    backend: str = "torchrec"               # the concrete embedding backend
    world_size: int = 1                     # ranks whose gradients sync_gradients averages (torch)
    # torchrec: the ids each lookup received in the last training forward (CowClip's counts)
    lookups: LookupRecorder | None = None
    sparse_fields: list[str] = field(default_factory=list)   # the columns of the batch's ids
    _id_counter: IdCounter | None = field(default=None, init=False, repr=False)

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        return dense_parameters(self.module)

    def describe_plan(self, world_size: int) -> str:
        if self.backend == "torchrec":
            from ctr.distributed.sharding import describe_plan
            return f"embedding backend torchrec ({BACKEND_NOTES['torchrec']})\n" + \
                describe_plan(self.plan, self.vocab_sizes, world_size)
        rows = sum(self.vocab_sizes.values())
        return (f"embedding backend torch ({BACKEND_NOTES['torch']}): {len(self.vocab_sizes)} fields, "
                f"{rows:,} table rows, replicated on {world_size} rank(s)")

    def row_counts(self, global_ids: torch.Tensor) -> RowCounts:
        """This step's CowClip counts, after the training forward: from what the sharded lookups
        received (torchrec backend; ``global_ids`` unused, may be empty), else from the global
        batch's ids [B, F] (the torch backend, whose replicated tables need them to sync anyway)."""
        if self.lookups is not None:
            return self.lookups.take()
        if self._id_counter is None:
            self._id_counter = IdCounter(self.groups, self.sparse_fields)
        return self._id_counter.of(global_ids)

    @torch.no_grad()
    def sync_gradients(self, global_ids: torch.Tensor | None = None) -> None:
        """After ``backward``: averages every gradient over the ranks, as DDP does (the torch
        backend at world > 1; DMP does it itself for the torchrec backend). The loss is scaled
        so that the average is the global batch's mean-loss gradient (``Trainer.train_step``).
        A table whose gradient is its touched rows (``FusedGroup.row_grad``) sends the global
        batch's rows only, ``[U, D]``: ``global_ids`` [B, F] (the whole batch's) says which."""
        if self.backend != "torch" or self.world_size <= 1:
            return
        row_grads = [g.row_grad for g in self.groups if g.row_grad is not None]
        row_tables = {id(g.weight) for g in self.groups if g.row_grad is not None}
        if row_grads:
            if global_ids is None:
                raise ValueError("sync_gradients needs the global batch's ids (batch.global_ids) to "
                                 "all-reduce the tables' touched rows")
            all_reduce_rows_(row_grads, global_ids, self.world_size)
        params = [p for p in self.module.parameters() if p.requires_grad and id(p) not in row_tables]
        grads: dict[int, torch.Tensor] = {}
        for p in params:
            if p.grad is None:   # a parameter this batch did not reach: zero, like on the others
                p.grad = torch.zeros_like(p)
            grads[id(p)] = p.grad
        tables = {id(g.weight) for g in self.groups}
        small = [grads[id(p)] for p in params if id(p) not in tables]
        for t in (grads[id(g.weight)] for g in self.groups if id(g.weight) not in row_tables):
            dist.all_reduce(t)           # a plain full-size table gradient: all-reduced in place
            t.div_(self.world_size)
        if small:                          # the dense ones: one all-reduce of a flat copy
            flat = torch.cat([t.reshape(-1) for t in small])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for t in small:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def build_model_parts(model: str, settings: ModelConfig, dataset: DatasetSchema, env: DistEnv,
                      sharding: str = "auto", seed: int | None = None,
                      embedding_backend: str = "auto") -> ModelParts:
    """Model ``model`` for ``dataset``'s fields and tables, sharded over ``env``. With ``seed``, dense layers
    and table rows get the seeded initialisation of a training run (tables by fixed row blocks,
    so any sharding and either backend starts from the same values); without, they are left
    to be restored. ``embedding_backend``: ``torchrec``, ``torch`` or ``auto`` (torchrec where
    it imports); ``ValueError`` for a sharding the backend cannot do."""
    backend = resolve_embedding_backend(embedding_backend)
    check_backend_sharding(backend, sharding)
    torch.manual_seed(0 if seed is None else seed)
    net = build_model(model, list(dataset.dense_fields), list(dataset.sparse_fields),
                      dict(dataset.vocab_sizes), settings,
                      device=env.device, sparse_device="meta", embedding_backend=backend)
    lookups = None
    if backend == "torchrec":
        from ctr.distributed.sharding import fused_groups, record_lookups, shard_model  # TorchRec
        module, plan = shard_model(net, env, sharding)
        groups = fused_groups(module)
        lookups = record_lookups(module, groups, env.world_size)
    else:
        net.sparse.to_empty(device=env.device)   # allocated, not filled: nothing drawn from the RNG
        net.sparse.use_row_grads()               # no full-size table gradient in training
        module, groups = net, net.sparse.fused_groups()
        plan = {f: ("data_parallel", 0) for f in dataset.sparse_fields}
    if seed is not None:
        init_embeddings_(groups, seed, settings.init_std)
    return ModelParts(module, groups, plan, dict(dataset.vocab_sizes), backend, env.world_size,
                      lookups, list(dataset.sparse_fields))


def build_optimizer(cfg: TrainConfig, hp: Hyperparams, parts: ModelParts, steps_per_epoch: int,
                    train_rows: int, sparse_fields: list[str]) -> CTROptimizer:
    """The run's optimizer step (Adam on both groups, L2, CowClip, warm-up) for ``parts``."""
    warmup = CTROptimizer.warmup_steps_for(hp.warmup_epochs, train_rows, cfg.batch, steps_per_epoch,
                                           cfg.warmup_form)
    return CTROptimizer(parts.dense_parameters(), parts.groups, hp, warmup, sparse_fields,
                        options=cfg.optimizer_options())
