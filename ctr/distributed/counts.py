"""How often each table row occurs in the global batch (CowClip's ``cnt``), per fused group.

::

    torchrec backend, sharded group (table_wise / row_wise)
        TorchRec's input all-to-all hands the group's TBE every id of the global batch that
        falls in its rows (row_wise: already shard-local, its block bucketize subtracts the
        block start) ──forward pre-hook (LookupRecorder)──▶ fused rows ──▶ counts, no collective
    torchrec backend, data-parallel group
        its TBE sees this rank's ids only ──▶ local counts [rows] ──one all_reduce per step (every
        such group's counts in one vector)──▶ the global batch's counts
    torch backend (every table replicated), and tests / tools calling opt.step(global_ids)
        the global batch's ids [B, F] (in memory, or all-gathered by the streaming loader:
        ctr.distributed.gather) ──IdCounter──▶ counts

:class:`RowCounts` is the one seam between where counts come from and the optimizer, which
asks it ``counts(group)`` (whole-table clip) and ``touched(group)`` (the rows of the batch, as
:class:`~ctr.models.row_grad.TouchedRows`: ``present(group)``'s rows and counts on the CPU, the
fixed-size form elsewhere, so that a GPU step never waits to learn how many rows there are).

**Why an all-reduce of counts for data-parallel groups**, not an all-gather of their fields'
ids: ``--sharding auto`` replicates only small tables (at most 10k rows), while CowClip's
batches hold 10^4-10^6 ids per field, so ``Σ rows`` ints cost less than ``B · F_dp``; with
``--sharding data_parallel`` on large tables DMP already all-reduces their full gradient
(``rows · D`` floats) every step, next to which ``rows`` ints are small. The torch backend
keeps the all-gather of the whole batch's ids: :meth:`ctr.train.build.ModelParts.
sync_gradients` needs the global batch's touched rows to all-reduce its row gradients anyway.

This module needs torch only; :func:`ctr.distributed.sharding.record_lookups` hooks TorchRec's
lookups up to a :class:`LookupRecorder`.

Example::

    recorder = record_lookups(dmp, groups, world_size)       # once (torchrec backend)
    logits = dmp(dense, ids); loss.backward()
    opt.step(recorder.take())                                 # or opt.step(global_ids)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ctr.distributed.shards import FusedGroup
from ctr.models.row_grad import TouchedRows, sync_free

__all__ = ["GlobalIdCounts", "GroupIndex", "IdCounter", "LookupCounts", "LookupRecorder", "RowCounts",
           "needs_global_ids"]

# A batch with fewer occurrences than rows / this sorts its ids; a larger one counts into a
# table-sized histogram (cheaper than sorting millions of ids).
_SORT_BELOW_ROWS_PER_ID = 16


def needs_global_ids(embedding_backend: str) -> bool:
    """Whether a training step needs the whole global batch's ids [B, F] on every rank: the
    torch backend does (its replicated tables sync their touched rows by them); TorchRec's
    lookups count their own rows. ``auto`` (unresolved): yes, to be safe."""
    return embedding_backend != "torchrec"


def _histogram(positions: Tensor, rows: int) -> Tensor:
    """Occurrences of every row below ``rows`` in ``positions`` (others ignored), int64 [rows].
    Off the CPU an ``index_add_`` into a fixed size: ``bincount`` reads the largest value first."""
    if sync_free(positions.device):
        out = torch.zeros(rows + 1, dtype=torch.long, device=positions.device)
        return out.index_add_(0, positions.clamp(max=rows), torch.ones_like(positions))[:rows]
    return torch.bincount(positions, minlength=rows + 1)[:rows]


def _touched(positions: Tensor, rows: int) -> TouchedRows:
    """The rows below ``rows`` that ``positions`` holds, with their counts: :func:`_present`'s
    result on the CPU, the fixed-size form elsewhere (no host synchronisation)."""
    if sync_free(positions.device):
        return TouchedRows.of(positions, is_global=True, limit=rows)
    found, cnt = _present(positions, rows)
    return TouchedRows(found, cnt, is_global=True)


def _present(positions: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """(distinct values of ``positions`` below ``rows``, sorted; their counts)."""
    if positions.numel() * _SORT_BELOW_ROWS_PER_ID < rows:
        found, cnt = torch.unique(positions, return_counts=True)
        keep = found < rows
        return found[keep], cnt[keep]
    counts = torch.bincount(positions, minlength=rows + 1)[:rows]
    found = counts.nonzero().squeeze(1)
    return found, counts.index_select(0, found)


class RowCounts:
    """One step's counts: per fused group of this rank, how often each of its rows occurs in the
    global batch. Only groups with a full ``weight.grad`` ask ``present``; a row-gradient group
    (torch backend) takes its rows from its own sort of the global ids (:attr:`ids`)."""

    def counts(self, group: FusedGroup) -> Tensor:
        """int64 [group.rows]: occurrences of every row (0 for absent rows)."""
        raise NotImplementedError

    def present(self, group: FusedGroup) -> tuple[Tensor, Tensor]:
        """(rows present in the batch, sorted; their counts)."""
        raise NotImplementedError

    def touched(self, group: FusedGroup) -> TouchedRows:
        """:meth:`present` as :class:`~ctr.models.row_grad.TouchedRows`, in the fixed-size form
        off the CPU (what the optimizer reads: no host synchronisation)."""
        raise NotImplementedError

    @property
    def ids(self) -> Tensor:
        """The global batch's ids [B, F], for row-gradient groups."""
        raise TypeError(f"{type(self).__name__} has no global batch ids: row-gradient tables "
                        "(the torch backend) count from them (IdCounter)")


class GroupIndex:
    """Precomputed per-shard tensors that map global batch ids to rows of one fused group."""

    def __init__(self, group: FusedGroup, field_pos: dict[str, int], device: torch.device):
        shards = group.shards
        self.cols = torch.tensor([field_pos[s.field] for s in shards], dtype=torch.long, device=device)
        self.lo = torch.tensor([s.row_offset for s in shards], dtype=torch.long, device=device)
        self.rows = torch.tensor([s.rows for s in shards], dtype=torch.long, device=device)
        self.start = torch.tensor([s.fused_row for s in shards], dtype=torch.long, device=device)
        self.total_rows = group.rows

    def _positions(self, global_ids: Tensor) -> Tensor:
        """Group rows of every id occurrence in the global batch; ``total_rows`` for other shards'."""
        local = global_ids.index_select(1, self.cols).long() - self.lo       # [B, shards]
        inside = (local >= 0) & (local < self.rows)
        return torch.where(inside, local + self.start, self.total_rows).flatten()

    def counts(self, global_ids: Tensor) -> Tensor:
        """Occurrences in the global batch of every row of the group (0 for absent rows)."""
        return _histogram(self._positions(global_ids), self.total_rows)

    def present(self, global_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(rows present in the batch, sorted; their counts)."""
        return _present(self._positions(global_ids), self.total_rows)

    def touched(self, global_ids: Tensor) -> TouchedRows:
        return _touched(self._positions(global_ids), self.total_rows)


class IdCounter:
    """Counts from the global batch's ids [B, F] (columns in ``sparse_fields`` order)."""

    def __init__(self, groups: Sequence[FusedGroup], sparse_fields: Sequence[str]):
        field_pos = {f: i for i, f in enumerate(sparse_fields)}
        self.index = {id(g): GroupIndex(g, field_pos, g.weight.device) for g in groups}

    def of(self, global_ids: Tensor) -> GlobalIdCounts:
        if global_ids.ndim != 2 or global_ids.shape[0] == 0:
            raise ValueError(f"global ids {tuple(global_ids.shape)} are not a global batch's [B, F]: the "
                             "streaming loader gathers none for the torchrec backend, whose counts "
                             "come from its lookups (ModelParts.row_counts)")
        return GlobalIdCounts(self.index, global_ids)


class GlobalIdCounts(RowCounts):
    """Counts of one global batch, from its ids (see :class:`IdCounter`)."""

    def __init__(self, index: dict[int, GroupIndex], global_ids: Tensor):
        self._index, self._ids = index, global_ids

    @property
    def ids(self) -> Tensor:
        return self._ids

    def counts(self, group: FusedGroup) -> Tensor:
        return self._index[id(group)].counts(self._ids)

    def present(self, group: FusedGroup) -> tuple[Tensor, Tensor]:
        return self._index[id(group)].present(self._ids)

    def touched(self, group: FusedGroup) -> TouchedRows:
        return self._index[id(group)].touched(self._ids)


class LookupCounts(RowCounts):
    """Counts of one global batch, from what each group's lookup received (:class:`LookupRecorder`):
    a sharded group's rows of every global id, or a data-parallel group's summed counts. Keyed
    by the group's fused buffer, which stays the same whoever lists the groups again."""

    def __init__(self, positions: dict[int, Tensor], summed: dict[int, Tensor]):
        self._positions, self._summed = positions, summed

    def counts(self, group: FusedGroup) -> Tensor:
        summed = self._summed.get(id(group.weight))
        if summed is not None:
            return summed
        return _histogram(self._rows_of(group), group.rows)

    def present(self, group: FusedGroup) -> tuple[Tensor, Tensor]:
        summed = self._summed.get(id(group.weight))
        if summed is not None:
            found = summed.nonzero().squeeze(1)
            return found, summed.index_select(0, found)
        return _present(self._rows_of(group), group.rows)

    def touched(self, group: FusedGroup) -> TouchedRows:
        summed = self._summed.get(id(group.weight))
        if summed is None:
            return _touched(self._rows_of(group), group.rows)
        if sync_free(summed.device):
            return TouchedRows.from_counts(summed)
        found, cnt = self.present(group)
        return TouchedRows(found, cnt, is_global=True)

    def _rows_of(self, group: FusedGroup) -> Tensor:
        return _recorded(self._positions, group)


def _recorded(positions: dict[int, Tensor], group: FusedGroup) -> Tensor:
    pos = positions.get(id(group.weight))
    if pos is None:
        raise RuntimeError(f"no training forward recorded the ids of the tables "
                           f"{[s.table for s in group.shards]} since the last step: counts are taken "
                           "once per forward, after it (ModelParts.row_counts)")
    return pos


class LookupRecorder:
    """Per fused group, the rows its lookup received in the last training forward; :meth:`take`
    turns them into the step's :class:`LookupCounts`. Data-parallel groups (every shard
    replicated) received this rank's ids only: their counts are summed over ranks there."""

    def __init__(self, groups: Sequence[FusedGroup], world_size: int):
        self.world_size = world_size
        self._replicated = [g for g in groups if g.shards and all(s.replicated for s in g.shards)]
        self._positions: dict[int, Tensor] = {}

    def record(self, group: FusedGroup, positions: Tensor) -> None:
        """``positions``: int64 rows of ``group``'s fused view, one per id its lookup received."""
        self._positions[id(group.weight)] = positions

    def take(self) -> LookupCounts:
        """The last training forward's counts; its record is dropped (the next step records its
        own). Every rank calls it at the same step: one all-reduce when data-parallel groups exist."""
        positions, self._positions = self._positions, {}
        summed: dict[int, Tensor] = {}
        if self._replicated:
            local = [_histogram(_recorded(positions, g), g.rows) for g in self._replicated]
            flat = torch.cat(local)
            if self.world_size > 1:
                dist.all_reduce(flat)
            summed = {id(g.weight): c
                      for g, c in zip(self._replicated, flat.split([g.rows for g in self._replicated]))}
        return LookupCounts(positions, summed)
