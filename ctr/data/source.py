"""Which loader a run reads its dataset with, and the one interface every reader of it sees.

::

    --loader auto|memory|stream ──▶ resolve_loader()  memory when this machine's ranks' copies of
                                      the splits fit --loader-memory-budget (GiB; default half of
                                      the available memory), else stream. Rank 0 decides, every
                                      rank follows; on --resume, auto is what the run used.
                                ──▶ open_run_data() ──▶ RunData
                                      .train                 BatchSource: this rank's batches
                                      .evaluation(split, B)  BatchSource: every row once, in order
                                      .positive_rate         the train split's, from meta.json
        memory: ctr.data.loader  (SplitTensors + BatchLoader: the whole split in every rank)
        stream: ctr.data.stream  (StreamLoader: this rank's row groups, bounded memory)

The trainer (:class:`~ctr.train.trainer.Trainer`), ``ctr-eval`` and the tools go through
here and never ask which loader they have: both yield :class:`~ctr.data.loader.Batch` es
with the same number of steps on every rank, and replay an epoch from any step. The memory
loader's carry the whole global batch's ids; the streaming loader's only where the run needs
them (the torch backend: :func:`ctr.distributed.counts.needs_global_ids`). This module imports neither torch nor pyarrow at import time, so
``ctr-train --help`` stays instant.

Example::

    why = resolve_loader(cfg, dataset, env)       # cfg.loader: "memory" or "stream" now
    data = open_run_data(dataset, cfg, env)
    for batch in data.train.epoch(0): ...
    probs, labels = predict(model, data.evaluation("test", 65536), env)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ctr.data.dataset import DatasetSchema
    from ctr.data.loader import BatchSource
    from ctr.distributed.env import DistEnv
    from ctr.train.config import TrainConfig

LOADERS = ("auto", "memory", "stream")
DEFAULT_SHUFFLE_BUFFER = 1 << 20      # rows one stream shuffles together (~160 MB of Criteo rows)
MEMORY_BUDGET_SHARE = 0.5             # --loader auto without a budget: this share of the free RAM
EVAL_SPLITS = ("valid", "test")


@dataclass
class RunData:
    """What a run reads, whichever loader reads it."""

    kind: str                                             # "memory" | "stream" | a test's own
    train: "BatchSource"                                  # this rank's train batches
    evaluation: Callable[[str, int], "BatchSource"]       # (split, global batch) -> every row once
    positive_rate: float                                  # the train split's (the loss guard's)
    note: str = ""                                        # for the start-up log line


def stored_splits(ds: "DatasetSchema", splits: tuple[str, ...] = ("train", *EVAL_SPLITS)) -> list[str]:
    """The stored splits behind ``splits`` (valid is test under the paper's protocol), once each."""
    out: list[str] = []
    for s in splits:
        name = ds.resolve_split(s)
        if name not in out:
            out.append(name)
    return out


def memory_need(ds: "DatasetSchema", splits: tuple[str, ...] = ("train", *EVAL_SPLITS)) -> int:
    """Bytes one rank's in-memory loader holds: the splits' tensors (and the train permutation)."""
    need = sum(ds.rows(s) * ds.row_bytes for s in stored_splits(ds, splits))
    if "train" in splits:
        need += 8 * ds.rows("train")   # the epoch's int64 permutation
    return need


def available_bytes() -> int:
    import psutil
    return int(psutil.virtual_memory().available)


def choose_loader(ds: "DatasetSchema", setting: str, budget_gib: float | None = None,
                  local_ranks: int = 1, splits: tuple[str, ...] = ("train", *EVAL_SPLITS)
                  ) -> tuple[str, str]:
    """(``memory`` or ``stream``, why). ``auto`` takes memory when ``local_ranks`` copies of the
    ``splits`` fit ``budget_gib`` GiB (default :data:`MEMORY_BUDGET_SHARE` of the available
    memory now), else stream."""
    if setting not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, not {setting!r}")
    if setting != "auto":
        return setting, "asked for"
    need = memory_need(ds, splits) * local_ranks
    if budget_gib is None:
        avail = available_bytes()
        budget = int(avail * MEMORY_BUDGET_SHARE)
        of = f"{MEMORY_BUDGET_SHARE:.0%} of the {avail / 2**30:.1f} GiB available"
    else:
        budget, of = int(budget_gib * 2**30), "--loader-memory-budget"
    copies = f"{local_ranks} x " if local_ranks > 1 else ""
    verdict = "fit" if need <= budget else "exceed"
    why = (f"auto: {copies}{need / local_ranks / 2**30:.2f} GiB of splits in memory {verdict} "
           f"the budget of {budget / 2**30:.2f} GiB ({of})")
    return ("memory" if need <= budget else "stream"), why


def resolve_loader(cfg: "TrainConfig", ds: "DatasetSchema", env: "DistEnv",
                   saved: dict[str, Any] | None = None) -> str:
    """Sets ``cfg.loader`` to the concrete loader and ``cfg.loader_streams`` to its streams (the
    world size unless given; None for memory); returns why, for the log. ``saved``: the run's
    config.json on --resume, whose loader and streams an unset value takes (auto keeps the batches
    the run was seeing, whatever the free memory is now). Every rank calls it; rank 0 decides."""
    if saved is not None:
        if cfg.loader == "auto":
            cfg.loader = saved.get("loader") or "memory"   # a run from before the setting: memory
        if cfg.loader == "stream" and cfg.loader_streams is None and saved.get("loader") == "stream":
            cfg.loader_streams = saved.get("loader_streams")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    kind, why = choose_loader(ds, cfg.loader, cfg.loader_memory_budget, local)
    if cfg.loader == "auto" and env.world_size > 1:   # free memory differs by the instant: one decides
        import torch.distributed as dist
        box: list[Any] = [kind, why]
        dist.broadcast_object_list(box, src=0)
        kind, why = box
    cfg.loader = kind
    if kind == "stream":
        streams = cfg.loader_streams or env.world_size
        if streams % env.world_size:
            from ctr.train.config import ConfigError
            raise ConfigError(f"--loader-streams {streams} is not a multiple of the {env.world_size} "
                              "ranks: each rank reads the same number of streams")
        cfg.loader_streams = streams
    else:
        cfg.loader_streams = None
    return why


def open_run_data(ds: "DatasetSchema", cfg: "TrainConfig", env: "DistEnv") -> RunData:
    """The run's loaders for ``cfg.loader`` (resolved: memory or stream); their files are checked
    now, so a damaged dataset fails before the first step."""
    ds.require_label()
    rate = ds.positive_rate("train")
    if cfg.loader == "memory":
        from ctr.data.loader import open_memory_data
        return open_memory_data(ds, cfg.batch, cfg.seed, cfg.drop_last, env, rate)
    if cfg.loader == "stream":
        from ctr.data.stream import open_stream_data
        from ctr.distributed.counts import needs_global_ids
        assert cfg.loader_streams is not None, "resolve_loader() first"
        return open_stream_data(ds, cfg.batch, cfg.seed, cfg.drop_last, env, rate,
                                streams=cfg.loader_streams, shuffle_buffer=cfg.shuffle_buffer,
                                gather_ids=needs_global_ids(cfg.embedding_backend))
    raise ValueError(f"loader {cfg.loader!r} is not resolved (memory or stream); call resolve_loader")


def eval_source(kind: str, ds: "DatasetSchema", split: str, batch: int, env: "DistEnv") -> "BatchSource":
    """One split read once in order, by ``kind`` (memory or stream): ``ctr-eval``'s reader."""
    ds.require_label()
    if kind == "memory":
        from ctr.data.loader import BatchLoader, SplitTensors
        return BatchLoader(SplitTensors.load(ds, split), max(batch, env.world_size), shuffle=False,
                           rank=env.rank, world_size=env.world_size)
    from ctr.data.stream import SplitLayout, eval_loader
    return eval_loader(SplitLayout(ds, split), batch, env)
