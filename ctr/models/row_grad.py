"""Row-compressed table gradients: a fused table's backward yields only the rows the batch touched.

::

    forward (training)   ids [b, F] + field offsets ──▶ positions [b·F] (rows of the fused table)
                         positions ──unique──▶ TouchedRows(rows [U] sorted, counts [U], inverse [b·F])
                                                (once per step: both tables of an arch share it)
                         weight.index_select(positions) ──▶ rows [b, F, D]
    backward             grad [b, F, D] ──index_add_(inverse)──▶ RowGrad.values [U, D]
                                                (weight.grad stays None: no [ΣV, D] tensor)
    sync (world > 1)     global ids ──unique──▶ global TouchedRows [U_g]; local values placed by
                         searchsorted into [U_g, D]; all_reduce([U_g, D]) / world  (all_reduce_rows_)
    optimizer step       --update dense: values scattered into a persistent [ΣV, D] buffer, one
                         fused Adam pass over w, m, v (+ that buffer), the touched rows zeroed
                         --update sparse: L2, CowClip and lazy Adam on the U rows only

**Why.** ``F.embedding``'s backward allocates and zero-fills a ``[ΣV, D]`` gradient every step,
and at millions of rows that costs more than the whole DNN at small batches. The gradient
is non-zero on the ``U`` rows of the batch only, so this module keeps it as ``(rows,
values)``: what the backward produces, what crosses the network at N ranks, and what CowClip
(which clips exactly those rows) and a row-sparse Adam consume. Only the paper's dense update
needs a full-size gradient, for torch's fused Adam; that one is a buffer allocated once and
reset on the touched rows after each step (the buffer holds zeros elsewhere by invariant).

**The same numbers.** Per row the backward sums the occurrences' gradients in batch order,
as ``F.embedding``'s CPU backward does, so the values are those of the full gradient's
touched rows (``tests/test_row_grad.py`` checks the step against the whole-table one). The
counts are the occurrences of a row in the global batch: with one id per field per sample,
the number of samples containing the id (CowClip's ``cnt``).

**Contract.** A rank's ids are a contiguous slice of the global batch (:class:`~ctr.data.
loader.BatchLoader`'s), so at one rank the local rows are the global ones; at N ranks
:func:`all_reduce_rows_` must run before the step (:meth:`ctr.train.build.ModelParts.
sync_gradients` does). Off the CPU the touched rows take a fixed-size form (``n + 1`` slots
for ``n`` lookups, padding past the distinct rows; :class:`TouchedRows`), so that no step waits
for the device to learn ``U``.

Example::

    arch.use_row_grads()                     # FusedSparseArch: both tables
    loss.backward()                          # arch.embedding.row_grad.values: [U, D]
    all_reduce_rows_([t.row_grad for t in tables], global_ids, world)   # world > 1
    CTROptimizer(...).step(global_ids)       # consumes and clears them
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["RowGrad", "TOUCHED_ROWS_ENV", "TouchedRows", "all_reduce_rows_", "row_lookup", "sync_free"]


# CTR_TOUCHED_ROWS=fixed|exact overrides the choice by device (tests, and worker processes they
# start, run the fixed-size form on the CPU to compare it with the exact one)
TOUCHED_ROWS_ENV = "CTR_TOUCHED_ROWS"


def sync_free(device: torch.device) -> bool:
    """Whether touched rows take the fixed-size form on ``device`` (every device but the CPU).

    ``torch.unique`` has a data-dependent size, so on CUDA it waits for the device every step;
    the fixed-size form (a sort, a cumulative sum and scatters, all of size ``n``) never does.
    On the CPU nothing waits, and the exact ``[U]`` form is cheaper for what follows (at batch
    64K, U is a quarter of n)."""
    forced = os.environ.get(TOUCHED_ROWS_ENV, "")
    if forced in ("fixed", "exact"):
        return forced == "fixed"
    if forced:
        raise ValueError(f"{TOUCHED_ROWS_ENV}={forced!r}: expected 'fixed' or 'exact'")
    return device.type != "cpu"


@dataclass
class TouchedRows:
    """The distinct rows one batch touches in one fused layout, sorted, with their counts.

    Two forms, the same numbers. Exact (CPU): ``rows`` [U]. Fixed-size (``padded``, every
    other device: no host synchronisation): ``rows`` [n + 1] for n lookups, the U distinct rows
    first, then padding slots holding ``limit`` (past every row, so ``rows`` stays sorted) with
    count 0 and zero gradient. Readers gather and scatter through :attr:`index`, where padding
    points at the first row, and :meth:`pad_like_first` before scattering, so a padding slot
    rewrites the first row's own new value: duplicate writes of one value, deterministic."""

    rows: Tensor                    # int64 [U] sorted distinct rows (padded: [n + 1], then `limit`)
    counts: Tensor                  # int64, occurrences of each row in the batch (0: padding)
    inverse: Tensor | None = None   # int64 [n]: rows[inverse] == the positions (local lookups)
    is_global: bool = False         # the global batch's rows (after all_reduce_rows_)
    padded: bool = False            # the fixed-size form
    _index: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _valid: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, positions: Tensor, inverse: bool = False, is_global: bool = False,
           limit: int | None = None) -> TouchedRows:
        """The touched rows of ``positions`` (any shape, int64 rows of the fused table, all below
        ``limit``, the table's row count: needed for the fixed-size form's padding value)."""
        flat = positions.reshape(-1)
        if sync_free(flat.device):
            if limit is None:
                raise ValueError("the fixed-size touched rows need the table's row count (limit)")
            return cls._fixed_size(flat, limit, is_global)
        if inverse:
            rows, inv, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
            return cls(rows, counts, inv, is_global)
        rows, counts = torch.unique(flat, sorted=True, return_counts=True)
        return cls(rows, counts, None, is_global)

    @classmethod
    def _fixed_size(cls, flat: Tensor, limit: int, is_global: bool) -> TouchedRows:
        """``unique(sorted, inverse, counts)`` without a data-dependent size: slot k of the output
        is the k-th distinct value of the sorted positions, found by a cumulative sum of "differs
        from its left neighbour"."""
        n = flat.numel()
        ordered, order = torch.sort(flat)
        first = torch.ones(n, dtype=torch.bool, device=flat.device)
        if n > 1:
            torch.ne(ordered[1:], ordered[:-1], out=first[1:])
        slot = torch.cumsum(first, 0).sub_(1)                 # int64 [n]: each sorted lookup's row slot
        rows = torch.full((n + 1,), limit, dtype=torch.long, device=flat.device)
        rows.scatter_(0, slot, ordered)                       # duplicates write one value
        counts = torch.zeros(n + 1, dtype=torch.long, device=flat.device)
        counts.index_add_(0, slot, torch.ones_like(slot))     # integer sums: order-free
        counts.masked_fill_(rows >= limit, 0)                 # positions past the table: not its rows
        inv = torch.empty_like(slot).scatter_(0, order, slot)
        return cls(rows, counts, inv, is_global, padded=True)

    @classmethod
    def from_counts(cls, counts: Tensor) -> TouchedRows:
        """The fixed-size form from a table-sized count vector ``counts`` [rows] (the rows with a
        non-zero count, ascending, then every other row as padding), without reading it."""
        order = torch.argsort((counts == 0).to(torch.int8), stable=True)
        return cls(order, counts.index_select(0, order), None, True, padded=True)

    @property
    def occurrences(self) -> int:
        """Lookups of the batch (``n``): the sum of the counts."""
        return int(self.inverse.numel()) if self.inverse is not None else int(self.counts.sum())

    @property
    def index(self) -> Tensor:
        """Rows to gather from and scatter to: :attr:`rows`, padding pointed at the first row."""
        if not self.padded:
            return self.rows
        if self._index is None:
            valid = self._valid_slots()
            first = torch.where(valid[:1], self.rows[:1], 0)   # row 0 when none is touched
            self._index = torch.where(valid, self.rows, first)
        return self._index

    @property
    def valid(self) -> Tensor | None:
        """bool [len(rows)]: the slots holding a row (None: all of them, the exact form)."""
        return self._valid_slots() if self.padded else None

    def _valid_slots(self) -> Tensor:
        if self._valid is None:
            self._valid = self.counts > 0
        return self._valid

    def distinct(self) -> Tensor | int:
        """U, the distinct rows (a tensor in the fixed-size form: read it only off the step)."""
        return self._valid_slots().sum() if self.padded else int(self.rows.numel())

    def pad_like_first(self, values: Tensor, first_before: Tensor | None = None) -> Tensor:
        """``values`` [len(rows), ...] with every padding slot set to slot 0's (a new tensor;
        ``values`` itself in the exact form): scattered through :attr:`index`, the first row
        then gets one value however many slots point at it. Where no row is touched at all
        (a shard that received no id), padding points at row 0 and gets ``first_before``, the
        value gathered from there before the update (slot 0's ``[1, ...]``): unchanged."""
        if not self.padded:
            return values
        keep = self._valid_slots().view(-1, *([1] * (values.dim() - 1)))
        first = values[:1]
        if first_before is not None:
            first = torch.where(keep[:1], first, first_before)
        return torch.where(keep, values, first)


class RowGrad:
    """One fused table's gradient between backward and the optimizer step, as touched rows.

    ``values[i]`` is the gradient of row ``touched.rows[i]``; every other row's is zero. The
    table's field offsets (``starts``) turn a global batch's ids into its rows. ``dense()``
    gives the same gradient as a full ``[rows, dim]`` tensor (a persistent buffer, zero outside
    the rows written into it, which :meth:`clear_` zeroes again)."""

    def __init__(self, starts: list[int], rows: int, dim: int) -> None:
        self.starts = tuple(int(s) for s in starts)
        self.rows, self.dim = int(rows), int(dim)
        self.touched: TouchedRows | None = None
        self.values: Tensor | None = None
        self._offsets: dict[torch.device, Tensor] = {}
        self._dense: Tensor | None = None
        self._dense_rows: Tensor | None = None   # rows written into the dense buffer
        self._dense_all = False                  # the buffer may be non-zero anywhere

    def offsets(self, device: torch.device) -> Tensor:
        t = self._offsets.get(device)
        if t is None:
            t = self._offsets[device] = torch.tensor(self.starts, dtype=torch.long, device=device)
        return t

    def positions(self, ids: Tensor) -> Tensor:
        """Rows of the fused table for ``ids`` [B, F] (field-local ids in field order)."""
        return ids.long() + self.offsets(ids.device)

    def accumulate_(self, touched: TouchedRows, values: Tensor) -> None:
        """Adds a backward's ``values`` [U, dim] on ``touched``'s rows."""
        if self.values is None:
            self.touched, self.values = touched, values
        elif self.touched is touched:
            self.values.add_(values)
        else:
            raise RuntimeError("a second backward through other ids before the optimizer step: "
                               "call the optimizer's zero_grad() (or step) between batches")

    def global_rows(self, global_ids: Tensor) -> TouchedRows:
        """The rows (and counts) of the global batch ``global_ids`` [B, F] this gradient is on.

        After :func:`all_reduce_rows_` they are the global batch's; at one rank the backward's
        own rows are, provided it saw the same batch (checked by its size, see the contract in
        the module docstring). No gradient yet: the global batch's rows, values zero."""
        if self.touched is None or self.values is None:
            self.touched = TouchedRows.of(self.positions(global_ids), is_global=True, limit=self.rows)
            self.values = torch.zeros(self.touched.rows.numel(), self.dim, device=global_ids.device)
            return self.touched
        if not self.touched.is_global:
            if self.touched.occurrences != global_ids.numel():
                raise RuntimeError(
                    f"the backward looked up {self.touched.occurrences} ids but the global batch has "
                    f"{global_ids.numel()}: at world size > 1 call ModelParts.sync_gradients(global_ids) "
                    "(all_reduce_rows_) before the optimizer step")
            self.touched.is_global = True
        return self.touched

    def dense(self, like: Tensor) -> Tensor:
        """The gradient as a full tensor shaped like ``like`` (the table): the persistent buffer
        with ``values`` written on their rows. Valid until :meth:`clear_`."""
        if self._dense is None:
            self._dense = torch.zeros_like(like, memory_format=torch.contiguous_format)
        buf = self._dense.view(-1, self.dim)
        if self.values is not None and self.touched is not None and not self._dense_all:
            buf.index_copy_(0, self.touched.index, self.touched.pad_like_first(self.values))
            self._dense_rows = self.touched.index
        return self._dense

    def mark_dense_dirty(self) -> None:
        """The buffer was written outside the touched rows (the full-table clip): zero it whole."""
        self._dense_all = True

    def clear_(self) -> None:
        """Drops the rows and values, and zeroes what was written into the dense buffer."""
        if self._dense is not None:
            if self._dense_all:
                self._dense.zero_()
            elif self._dense_rows is not None:
                self._dense.view(-1, self.dim).index_fill_(0, self._dense_rows, 0)
        self._dense_rows, self._dense_all = None, False
        self.touched, self.values = None, None


class _RowLookup(torch.autograd.Function):
    """``weight[positions]`` whose backward hands the gradient to a :class:`RowGrad` as
    ``[U, D]`` (and none to ``weight``: autograd then never makes a ``[ΣV, D]`` tensor)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, positions: Tensor, touched: TouchedRows,
                sink: RowGrad) -> Tensor:
        ctx.touched, ctx.sink = touched, sink
        out = weight.index_select(0, positions.reshape(-1))
        return out.view(*positions.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, None, None]:
        touched: TouchedRows = ctx.touched
        assert touched.inverse is not None
        d = grad.shape[-1]
        # index_add_ sums each row's occurrences in batch order, as F.embedding's backward does
        values = grad.new_zeros(touched.rows.numel(), d).index_add_(0, touched.inverse, grad.reshape(-1, d))
        ctx.sink.accumulate_(touched, values)
        return None, None, None, None


def row_lookup(weight: Tensor, positions: Tensor, touched: TouchedRows, sink: RowGrad) -> Tensor:
    """``weight[positions]`` ([*positions.shape, D]); its gradient goes to ``sink`` as touched
    rows. ``touched`` must be ``TouchedRows.of(positions, inverse=True)``."""
    out = _RowLookup.apply(weight, positions, touched, sink)
    assert isinstance(out, Tensor)
    return out


@torch.no_grad()
def all_reduce_rows_(grads: list[RowGrad], global_ids: Tensor, world_size: int) -> None:
    """Averages row gradients over the ranks on the global batch's touched rows.

    Every rank knows the global batch, so every rank computes the same global rows ``[U_g]``
    (one ``unique`` per table layout); each places its local values there (its rows are a
    subset) and one ``all_reduce`` of ``[U_g, D]`` per table sums them; ``/ world_size`` as DDP
    averages. Nothing of the tables' full size is sent. (Fixed-size form: ``[n_g + 1, D]``;
    local padding, whose values are zero, lands on a global padding slot.)"""
    cache: dict[tuple[int, tuple[int, ...]], tuple[TouchedRows, Tensor | None]] = {}
    for rg in grads:
        local = rg.touched
        key = (id(local), rg.starts)
        if key not in cache:
            glob = TouchedRows.of(rg.positions(global_ids), is_global=True, limit=rg.rows)
            where = (torch.searchsorted(glob.rows, local.rows) if local is not None and rg.values is not None
                     else None)
            cache[key] = (glob, where)
        glob, where = cache[key]
        summed = torch.zeros(glob.rows.numel(), rg.dim, device=global_ids.device,
                             dtype=rg.values.dtype if rg.values is not None else torch.float32)
        if where is not None and rg.values is not None:
            summed.index_copy_(0, where, rg.values)
        dist.all_reduce(summed)
        summed.div_(world_size)
        rg.touched, rg.values = glob, summed
