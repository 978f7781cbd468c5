"""The one place that turns a configuration into a model ready to train or evaluate.

::

    build_model_parts(model, ModelConfig, meta, env, sharding, seed)
        build_model (tables on "meta")  ──▶ shard_model (DMP plan, dense kernel)
        ──▶ fused_groups (each local shard with its global rows) ──▶ init_embeddings_ (seeded)
    build_optimizer(cfg, hparams, parts, steps_per_epoch, train_rows)  ──▶ CTROptimizer

``ctr-train`` (:class:`~ctr.train.trainer.Trainer`), ``ctr-eval`` and the benchmarks in
``tools/`` all build through here, so a change in how a model is built, sharded or optimised
(another embedding backend, another base optimizer) is made once.

Example::

    parts = build_model_parts("deepfm", cfg.model_settings(), meta, env, "auto", seed=0)
    opt = build_optimizer(cfg, cfg.resolved_hparams(), parts, steps_per_epoch=100, train_rows=102_400)
    logits = parts.module(batch.dense, batch.sparse)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctr.distributed.env import DistEnv
from ctr.distributed.sharding import (FusedGroup, dense_parameters, describe_plan, fused_groups,
                                      init_embeddings_, shard_model)
from ctr.models import ModelConfig, build_model
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.scaling import Hyperparams
from ctr.train.config import TrainConfig


@dataclass
class ModelParts:
    """A built model: the module to call, this rank's table storage, and the sharding plan."""

    module: nn.Module                       # forward(dense, sparse) -> logits
    groups: list[FusedGroup]                # this rank's embedding storage (optimizer, checkpoints)
    plan: dict[str, tuple[str, int]]        # field -> (sharding type, rank)
    vocab_sizes: dict[str, int]

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        return dense_parameters(self.module)

    def describe_plan(self, world_size: int) -> str:
        return describe_plan(self.plan, self.vocab_sizes, world_size)


def build_model_parts(model: str, settings: ModelConfig, meta: dict[str, Any], env: DistEnv,
                      sharding: str = "auto", seed: int | None = None) -> ModelParts:
    """Model ``model`` for dataset ``meta``, sharded over ``env``. With ``seed``, dense layers
    and table rows get the seeded initialisation of a training run (tables by fixed row blocks,
    so any sharding starts from the same values); without, they are left to be restored."""
    torch.manual_seed(0 if seed is None else seed)
    net = build_model(model, meta["dense_fields"], meta["sparse_fields"], meta["vocab_sizes"], settings,
                      device=env.device, sparse_device="meta")
    dmp, plan = shard_model(net, env, sharding)
    groups = fused_groups(dmp)
    if seed is not None:
        init_embeddings_(groups, seed, settings.init_std)
    return ModelParts(dmp, groups, plan, dict(meta["vocab_sizes"]))


def build_optimizer(cfg: TrainConfig, hp: Hyperparams, parts: ModelParts, steps_per_epoch: int,
                    train_rows: int, sparse_fields: list[str]) -> CTROptimizer:
    """The run's optimizer step (Adam on both groups, L2, CowClip, warm-up) for ``parts``."""
    warmup = CTROptimizer.warmup_steps_for(hp.warmup_epochs, train_rows, cfg.batch, steps_per_epoch,
                                           cfg.warmup_form)
    return CTROptimizer(parts.dense_parameters(), parts.groups, hp, warmup, sparse_fields,
                        options=cfg.optimizer_options())
