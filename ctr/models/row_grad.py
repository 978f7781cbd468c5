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
sync_gradients` does). ``unique`` has a data-dependent size: on CUDA it synchronises with
the host once per step (a fixed-size alternative is left for later).

Example::

    arch.use_row_grads()                     # FusedSparseArch: both tables
    loss.backward()                          # arch.embedding.row_grad.values: [U, D]
    all_reduce_rows_([t.row_grad for t in tables], global_ids, world)   # world > 1
    CTROptimizer(...).step(global_ids)       # consumes and clears them
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["RowGrad", "TouchedRows", "all_reduce_rows_", "row_lookup"]


@dataclass
class TouchedRows:
    """The distinct rows one batch touches in one fused layout, sorted, with their counts."""

    rows: Tensor                    # int64 [U], sorted, distinct rows of the fused table
    counts: Tensor                  # int64 [U], occurrences of each row in the batch
    inverse: Tensor | None = None   # int64 [n]: rows[inverse] == the positions (local lookups)
    is_global: bool = False         # the global batch's rows (after all_reduce_rows_)

    @classmethod
    def of(cls, positions: Tensor, inverse: bool = False, is_global: bool = False) -> TouchedRows:
        """The touched rows of ``positions`` (any shape, int64 rows of the fused table)."""
        flat = positions.reshape(-1)
        if inverse:
            rows, inv, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
            return cls(rows, counts, inv, is_global)
        rows, counts = torch.unique(flat, sorted=True, return_counts=True)
        return cls(rows, counts, None, is_global)

    @property
    def occurrences(self) -> int:
        """Lookups of the batch (``n``): the sum of the counts."""
        return int(self.inverse.numel()) if self.inverse is not None else int(self.counts.sum())


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
            self.touched = TouchedRows.of(self.positions(global_ids), is_global=True)
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
            buf.index_copy_(0, self.touched.rows, self.values)
            self._dense_rows = self.touched.rows
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
    averages. Nothing of the tables' full size is sent."""
    cache: dict[tuple[int, tuple[int, ...]], tuple[TouchedRows, Tensor | None]] = {}
    for rg in grads:
        local = rg.touched
        key = (id(local), rg.starts)
        if key not in cache:
            glob = TouchedRows.of(rg.positions(global_ids), is_global=True)
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
