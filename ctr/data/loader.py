"""Feeds training from a processed dataset: one split in memory, batches by index gather.

::

    Parquet split ──read once──▶ SplitTensors (ids int32 [N, F], dense float32 [N, D], labels [N])
                                     │  per epoch: permutation from (seed, epoch)
                                     ▼
    BatchLoader.epoch(e) ──▶ Batch(dense, ids [b, F], labels, global_ids)
                                     this rank's slice of the global batch; global_ids are the
                                     whole global batch's ids (CowClip counts over all ranks);
                                     batch.sparse: the ids as a KeyedJaggedTensor, made on first
                                     use (TorchRec is imported only then)

Every rank holds the split and draws the same permutation, so the global batch is known
everywhere without communication; each rank keeps rows ``[r*B/W, (r+1)*B/W)`` of it. The
permutation depends only on ``(seed, epoch)``, so resuming at step ``k`` of an epoch replays
the same batches an uninterrupted run would see.

The last partial batch is kept by default (``drop_last=False``): the loss is the mean over
the rows actually present, so it is a smaller but unbiased step. Pass ``drop_last=True``
to keep every step at exactly the requested batch size.

This is the ``memory`` loader of :mod:`ctr.data.source`; a split too large for every rank to
hold (Criteo 1TB) is streamed instead by :mod:`ctr.data.stream`, behind the same
:class:`BatchSource` interface.

Example::

    data = SplitTensors.load("data/synthetic-demo", "train")
    loader = BatchLoader(data, batch_size=8192, shuffle=True, seed=0)
    for batch in loader.epoch(0):
        logits = model(batch.dense, batch.ids)     # either embedding backend
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ctr.data.dataset import DatasetError, DatasetSchema, read_schema

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

    from ctr.data.source import RunData
    from ctr.distributed.env import DistEnv


@dataclass
class Batch:
    """One rank's share of one global batch."""

    dense: torch.Tensor        # float32 [b, D]
    ids: torch.Tensor          # int32 [b, F]: this rank's ids, one per sparse field
    labels: torch.Tensor       # float32 [b]
    global_ids: torch.Tensor   # int32 [B, F]: the whole global batch's ids (the torch backend's
                               # row sync and CowClip counts); [0, F] where not gathered (stream
                               # loader, torchrec backend: the lookups count, ctr.distributed.counts)
    global_size: int           # B, rows in the global batch
    keys: list[str] = field(default_factory=list)   # the sparse fields, in the ids' column order
    _kjt: Any = field(default=None, repr=False, compare=False)

    @property
    def sparse(self) -> KeyedJaggedTensor:
        """The ids as a KeyedJaggedTensor keyed by field (made once, on first use; imports TorchRec)."""
        if self._kjt is None:
            self._kjt = make_kjt(self.ids, self.keys)
        return self._kjt

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(self.dense.to(device, non_blocking=True), self.ids.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True),
                     self.global_ids.to(device, non_blocking=True), self.global_size, self.keys)


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer needs of a loader: this rank's batches of an epoch, resumable at a step.

    :class:`BatchLoader` (a split in memory) is one; :class:`ctr.data.stream.StreamLoader`
    (this rank's row groups, streamed) is another. ``len()`` is the steps per epoch, the same
    on every rank. ``epoch(e, k)`` must yield the same batches for the same ``(e, k)`` on every
    call, so a resumed run replays what an uninterrupted one would have seen. ``position(e, k)``
    is what a checkpoint records of the data consumed up to step ``k`` of epoch ``e`` (JSON);
    ``check_position`` raises ``ValueError`` (saying why) when a recorded position cannot be
    replayed by this loader (another loader, another layout of the files)."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]: ...

    def position(self, epoch: int, step: int) -> dict[str, Any]: ...

    def check_position(self, saved: dict[str, Any]) -> None: ...


class SplitTensors:
    """A whole split as contiguous tensors: ids int32 [N, F], dense float32 [N, D], labels [N]."""

    def __init__(self, ids: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor,
                 sparse_fields: list[str], dense_fields: list[str]):
        if not (ids.shape[0] == dense.shape[0] == labels.shape[0]):
            raise ValueError("ids, dense and labels must have the same number of rows")
        self.ids, self.dense, self.labels = ids, dense, labels
        self.sparse_fields, self.dense_fields = list(sparse_fields), list(dense_fields)

    @property
    def num_rows(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def load(cls, data: str | Path | DatasetSchema, split: str) -> "SplitTensors":
        """Reads one split of a processed dataset (a directory, or its schema already read)
        into memory, column by column."""
        ds = data if isinstance(data, DatasetSchema) else read_schema(data)
        data_dir = ds.path
        ds.require_label()
        split = ds.resolve_split(split)
        files = ds.split_files(split)
        sparse, dense = list(ds.sparse_fields), list(ds.dense_fields)
        n = ds.rows(split)
        ids = np.empty((n, len(sparse)), dtype=np.int32)
        dns = np.empty((n, len(dense)), dtype=np.float32)
        lab = np.empty(n, dtype=np.float32)
        start = 0
        for path in files:
            try:
                pf = pq.ParquetFile(path)
                missing = set(sparse + dense + ["label"]) - set(pf.schema_arrow.names)
                if missing:
                    raise DatasetError(f"{path}: columns missing: {sorted(missing)}")
                for rg in range(pf.num_row_groups):
                    t = pf.read_row_group(rg, columns=["label"] + dense + sparse)
                    stop = start + t.num_rows
                    if stop > n:
                        raise DatasetError(f"{path}: more rows than meta.json says ({n})")
                    lab[start:stop] = t.column("label").to_numpy()
                    for j, f in enumerate(dense):
                        dns[start:stop, j] = t.column(f).to_numpy()
                    for j, f in enumerate(sparse):
                        ids[start:stop, j] = t.column(f).to_numpy()
                    start = stop
            except (OSError, pa.ArrowException) as e:  # truncated or corrupt file
                raise DatasetError(f"{path}: cannot read this Parquet file ({e}); the dataset is "
                                   "damaged, rebuild it with `ctr-preprocess`") from e
        if start != n:
            raise DatasetError(f"{data_dir}: split {split!r} has {start} rows, meta.json says {n}")
        if n:
            vocab = np.array([ds.vocab_sizes[f] for f in sparse])
            bad_cols = (ids.min(axis=0) < 0) | (ids.max(axis=0) >= vocab)
            if bad_cols.any():
                bad = [f for f, b in zip(sparse, bad_cols) if b]
                raise DatasetError(f"{data_dir}: ids outside the vocabulary in fields {bad}")
        return cls(torch.from_numpy(ids), torch.from_numpy(dns), torch.from_numpy(lab), sparse, dense)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ids.index_select(0, index), self.dense.index_select(0, index), \
            self.labels.index_select(0, index)


def make_kjt(ids: torch.Tensor, keys: list[str]) -> KeyedJaggedTensor:
    """[b, F] ids -> KJT with one id per sample per key (values key-major). Imports TorchRec."""
    from torchrec import KeyedJaggedTensor
    b, f = ids.shape
    values = ids.t().reshape(-1).to(torch.int64)
    lengths = torch.ones(b * f, dtype=torch.int32, device=ids.device)
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


class BatchLoader:
    """Yields this rank's slice of each global batch, shuffled per epoch by ``(seed, epoch)``."""

    def __init__(self, data: SplitTensors, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the world size {world_size}")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size

    def __len__(self) -> int:
        n = self.data.num_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = self.data.num_rows
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        """The order is a function of (seed, epoch, rows): the step is all a resume needs."""
        return {"loader": "memory", "epoch": epoch, "step": step, "rows": self.data.num_rows,
                "batch": self.batch_size}

    def check_position(self, saved: dict[str, Any]) -> None:
        _check_same(saved, self.position(int(saved.get("epoch", 0)), int(saved.get("step", 0))),
                    ("loader", "rows", "batch"))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = self.order(epoch)
        for step in range(start_step, len(self)):
            index = perm[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.batch(index)

    def batch(self, index: torch.Tensor) -> Batch:
        """Builds this rank's share of the global batch made of rows ``index``."""
        ids, dense, labels = self.data.gather(index)
        if self.world_size > 1:
            part = torch.tensor_split(torch.arange(index.numel()), self.world_size)[self.rank]
            lo, hi = int(part[0]) if part.numel() else 0, int(part[-1]) + 1 if part.numel() else 0
            local_ids, dense, labels = ids[lo:hi], dense[lo:hi], labels[lo:hi]
        else:
            local_ids = ids
        return Batch(dense, local_ids, labels, ids, int(index.numel()), self.data.sparse_fields)


def _check_same(saved: dict[str, Any], now: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raises ValueError naming the keys of a recorded loader position that differ from now."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diffs:
        raise ValueError("the checkpoint's data position cannot be replayed by this loader ("
                         + "; ".join(diffs) + ")")


def open_memory_data(ds: DatasetSchema, batch: int, seed: int, drop_last: bool, env: DistEnv,
                     positive_rate: float) -> RunData:
    """The ``memory`` loader of a run: train, test and (when it is its own split) valid read
    into this rank's memory now; evaluation batches slice them in order."""
    from ctr.data.source import RunData, stored_splits
    held = {name: SplitTensors.load(ds, name) for name in stored_splits(ds)}
    train = BatchLoader(held[ds.resolve_split("train")], batch, shuffle=True, seed=seed,
                        drop_last=drop_last, rank=env.rank, world_size=env.world_size)

    def evaluation(split: str, eval_batch: int) -> BatchSource:
        data = held.get(ds.resolve_split(split)) or SplitTensors.load(ds, split)
        return BatchLoader(data, max(eval_batch, env.world_size), shuffle=False, rank=env.rank,
                           world_size=env.world_size)

    mb = sum(d.num_rows for d in held.values()) * ds.row_bytes / 2**20
    return RunData("memory", train, evaluation, positive_rate, f"{mb:,.0f} MB of splits held by each rank")
