"""The torchrec backend: sharding plans for the TorchRec tables, and the shards a rank holds.

::

    model.sparse.embedding (EBC, one table per field) ┐  plan: table -> data_parallel |
    model.sparse.linear    (EBC, dim-1 tables)        ┘        table_wise | row_wise
                 │ DistributedModelParallel, `dense` compute kernel (plain gradients:
                 ▼ CowClip needs them; the `fused` kernels update inside backward)
    per rank: FusedGroup(flat TBE weight) ──▶ TableShard(table, global rows [off, off+n))

Plans are built with ``torchrec.distributed.sharding_plan`` helpers because TorchRec's
planner allows the ``dense`` kernel only with data-parallel. ``auto`` picks per table:
replicate small tables, row-shard huge ones, place the rest whole on the least-loaded rank.
A field's first-order (linear) table follows its embedding table.

Everything downstream (initialisation, L2, CowClip, Adam, checkpoints) works on
:class:`~ctr.distributed.shards.FusedGroup` / :class:`~ctr.distributed.shards.TableShard`
(:mod:`ctr.distributed.shards`, torch only), which know each shard's global row range, so the
same code serves every sharding type, world size and embedding backend. This module imports
TorchRec: only the torchrec backend (:func:`ctr.train.build.build_model_parts`) loads it.

Example::

    dmp = shard_model(model, env, "auto")
    groups = fused_groups(dmp)
    init_embeddings_(groups, seed=0, std=1e-2)     # ctr.distributed.shards
    recorder = record_lookups(dmp, groups, env.world_size)   # CowClip's counts (ctr.distributed.counts)
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from torch import nn
from torchrec.distributed.batched_embedding_kernel import BaseBatchedEmbeddingBag
from torchrec.distributed.embeddingbag import (EmbeddingBagCollectionSharder,
                                             ShardedEmbeddingBagCollection)
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (construct_module_sharding_plan, data_parallel,
                                                row_wise, table_wise)
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.distributed.choices import SHARDINGS
from ctr.distributed.counts import LookupRecorder
from ctr.distributed.env import DistEnv
from ctr.distributed.shards import SPARSE_MODULES, FusedGroup, TableShard, is_table_param
from ctr.models.config import field_of, kind_of

DENSE_KERNEL = "dense"
# auto: tables at most this many rows are replicated (cheap to all-reduce) ...
AUTO_REPLICATE_MAX_ROWS = 10_000
# ... and tables at least this many rows are split by rows across all ranks.
AUTO_ROW_WISE_MIN_ROWS = 1_000_000


def choose_sharding(table_rows: dict[str, int], world_size: int, choice: str) -> dict[str, tuple[str, int]]:
    """table -> (sharding type, rank for table_wise). ``auto`` balances rows across ranks."""
    if choice not in SHARDINGS:
        raise ValueError(f"--sharding must be one of {SHARDINGS}, not {choice!r}")
    out: dict[str, tuple[str, int]] = {}
    load = [0] * world_size
    for name, rows in sorted(table_rows.items(), key=lambda kv: -kv[1]):
        kind = choice
        if choice == "auto":
            if world_size == 1:
                kind = "table_wise"
            elif rows <= AUTO_REPLICATE_MAX_ROWS:
                kind = "data_parallel"
            elif rows >= AUTO_ROW_WISE_MIN_ROWS:
                kind = "row_wise"
            else:
                kind = "table_wise"
        rank = 0
        if kind == "table_wise":
            rank = min(range(world_size), key=lambda r: load[r])
            load[rank] += rows
        elif kind == "row_wise":
            for r in range(world_size):
                load[r] += rows // world_size
        out[name] = (kind, rank)
    return out


def _generator(kind: str, rank: int):
    if kind == "data_parallel":
        return data_parallel()
    if kind == "table_wise":
        return table_wise(rank=rank, compute_kernel=DENSE_KERNEL)
    if kind == "row_wise":
        return row_wise(compute_kernel=DENSE_KERNEL)
    raise ValueError(kind)


def _sparse_modules(model: nn.Module) -> dict[str, EmbeddingBagCollection]:
    mods = {}
    for path in SPARSE_MODULES:
        mod = model.get_submodule(path) if _has_submodule(model, path) else None
        if mod is not None:
            mods[path] = mod
    return mods


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def build_plan(model: nn.Module, world_size: int, device_type: str, choice: str
               ) -> tuple[ShardingPlan, dict[str, tuple[str, int]]]:
    """The DMP plan for every EBC of ``model.sparse``, and the per-field choice it encodes."""
    mods = _sparse_modules(model)
    emb = mods["sparse.embedding"]
    per_field = choose_sharding({field_of(t.name): t.num_embeddings for t in emb.embedding_bag_configs()},
                                world_size, choice)
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    sharder = EmbeddingBagCollectionSharder()
    plan = {}
    for path, ebc in mods.items():
        pps = {t.name: _generator(*per_field[field_of(t.name)]) for t in ebc.embedding_bag_configs()}
        plan[path] = construct_module_sharding_plan(ebc, per_param_sharding=pps, sharder=sharder,
                                                    local_size=local_size, world_size=world_size,
                                                    device_type=device_type)
    return ShardingPlan(plan), per_field


def describe_plan(per_field: dict[str, tuple[str, int]], rows: dict[str, int], world_size: int) -> str:
    """A short table for the start of a run: field, rows, sharding, where."""
    lines = [f"sharding plan over {world_size} rank(s) (compute kernel: dense)",
             f"  {'field':<10} {'rows':>12}  {'sharding':<14} ranks"]
    for f in sorted(per_field, key=lambda f: -rows[f]):
        kind, rank = per_field[f]
        where = str(rank) if kind == "table_wise" else ("all (rows split)" if kind == "row_wise"
                                                       else "all (replicated)")
        lines.append(f"  {f:<10} {rows[f]:>12,}  {kind:<14} {where}")
    return "\n".join(lines)


def quiet_library_noise() -> None:
    """Silences messages TorchRec / FBGEMM / torch print on every run that say nothing about it:
    the dense kernel ignoring cache settings, a DDP argument's deprecation, FBGEMM's CPU
    lookup op lacking a registered autograd kernel (its autograd.Function supplies the
    gradient; tests/test_train.py checks sharded gradients against unsharded ones), and fx."""
    logging.getLogger("torchrec.distributed.utils").setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    for pattern in (".*broadcast_buffers.*", ".*autograd kernel was not registered.*",
                    ".*is_fx_tracing.*", ".*split_table_batched_embeddings_ops.*"):
        warnings.filterwarnings("ignore", message=pattern)


def shard_model(model: nn.Module, env: DistEnv, choice: str
                ) -> tuple[DistributedModelParallel, dict[str, tuple[str, int]]]:
    """Wraps ``model`` in DMP with the chosen plan (dense kernel everywhere)."""
    quiet_library_noise()
    plan, per_field = build_plan(model, env.world_size, env.device.type, choice)
    # One rank: no DDP around the dense part (its bucket copies would cost time for nothing).
    dmp = DistributedModelParallel(model, plan=plan, device=env.device,
                                   sharders=[EmbeddingBagCollectionSharder()],
                                   init_data_parallel=env.world_size > 1)
    return dmp, per_field


def fused_groups(dmp: nn.Module) -> list[FusedGroup]:
    """This rank's embedding storage, grouped by fused buffer, each shard with its global rows."""
    sd = dmp.state_dict()
    groups: dict[int, FusedGroup] = {}
    for name, p in dmp.named_parameters():
        if not is_table_param(name) or not hasattr(p, "_original_tensor"):
            continue  # dense, or a table-wise table placed on another rank
        if p.numel() == 0:
            continue  # an empty shard (more ranks than rows)
        parts = name.split(".")
        table = parts[parts.index("embedding_bags") + 1]
        kind = kind_of(table)
        rows, dim = p.shape
        value = sd[name]
        if hasattr(value, "local_shards"):  # ShardedTensor: table_wise / row_wise
            meta = value.metadata()
            num_embeddings = int(meta.size[0])
            row_offset = int(value.local_shards()[0].metadata.shard_offsets[0])
            replicated = False
        else:
            num_embeddings, row_offset, replicated = rows, 0, True
        fused = p._original_tensor
        g = groups.setdefault(id(fused), FusedGroup(weight=fused, dim=dim))
        if g.dim != dim:
            raise RuntimeError(f"fused group mixes dims {g.dim} and {dim}")
        g.shards.append(TableShard(table, field_of(table), kind, num_embeddings, dim, row_offset,
                                   rows, getattr(p, "_start_offset") // dim, replicated))
    return list(groups.values())


def record_lookups(dmp: nn.Module, groups: list[FusedGroup], world_size: int) -> LookupRecorder:
    """Hooks every TBE lookup of ``dmp`` that holds one of ``groups`` so that each training
    forward records, in a :class:`~ctr.distributed.counts.LookupRecorder`, the group rows of
    the ids it receives after TorchRec's input distribution. A table_wise TBE gets its
    tables' ids of the whole global batch; a row_wise one the ids of its rows, already minus
    the shard's first row (block bucketize); a data-parallel one this rank's ids. In each case
    the id is the row within the shard, so its group row is ``fused_row + id`` (checked here:
    each table's rows in the TBE are its shard's). Per-sample weights (a weighted KJT) change no
    count: an id occurs once whatever its weight. Evaluation forwards (``module.training``
    False) record nothing."""
    recorder = LookupRecorder(groups, world_size)
    by_weight = {id(g.weight): g for g in groups}
    # A sharded EBC keeps its lookups (one per sharding type) in a plain list, not as submodules.
    lookups = [lk for m in dmp.modules() if isinstance(m, ShardedEmbeddingBagCollection) for lk in m._lookups]
    tbes = [m for lk in lookups for m in lk.modules() if isinstance(m, BaseBatchedEmbeddingBag)]
    for module in tbes:
        group = by_weight.get(id(getattr(module.emb_module, "weights", None)))
        if group is None:   # only empty shards here: no id can arrive
            continue
        start = {s.table: s.fused_row for s in group.shards}
        for t, shard in ((t, s) for t in module.config.embedding_tables for s in group.shards
                         if s.table == t.name):
            if t.local_rows != shard.rows:
                raise RuntimeError(f"{t.name}: its lookup holds {t.local_rows} rows, its shard "
                                   f"{shard.rows}: ids cannot be mapped to the shard's rows")
        fused_row = {f: start.get(t.name, 0) for t in module.config.embedding_tables for f in t.feature_names}
        module.register_forward_pre_hook(_LookupHook(recorder, group, fused_row))
    return recorder


class _LookupHook:
    """The forward pre-hook of one TBE: its KJT's values as rows of ``group``."""

    def __init__(self, recorder: LookupRecorder, group: FusedGroup, fused_row: dict[str, int]):
        self.recorder, self.group, self.fused_row = recorder, group, fused_row
        self._starts: dict[tuple[tuple[str, ...], torch.device], torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not module.training:
            return
        kjt = args[0]
        values = kjt.values()
        key = (tuple(kjt.keys()), values.device)
        starts = self._starts.get(key)
        if starts is None:
            starts = self._starts[key] = torch.tensor([self.fused_row[k] for k in key[0]],
                                                      dtype=torch.long, device=values.device)
        lengths = torch.tensor(kjt.length_per_key(), dtype=torch.long, device=values.device)
        rows = values.long() + torch.repeat_interleave(starts, lengths, output_size=values.numel())
        self.recorder.record(self.group, rows)
