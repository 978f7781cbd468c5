"""The torch embedding backend: every model's sparse part in plain PyTorch, no TorchRec or FBGEMM.

::

    ids [B, F] (one id per field) ──▶ + offsets [F] (each field's first row in the fused table)
        ├──▶ embedding: weight [Σ_f V_f, D] ──lookup──▶ emb [B, F, D]
        └──▶ linear:    weight [Σ_f V_f, 1] ──lookup──▶ [B, F, 1] ──Σ_f──▶ lin [B]

    lookup: F.embedding (plain autograd: weight.grad [Σ V, D]), or after use_row_grads(), in
            training, row_lookup (ctr.models.row_grad: the gradient as the batch's U touched rows
            [U, D] in table.row_grad, weight.grad untouched; both tables share one TouchedRows)

    FusedGroup(embedding.weight, D, [TableShard("emb_C1", row_offset 0, rows V_C1, fused_row 0,
                                                replicated), TableShard("emb_C2", ..., fused_row V_C1), ...])
    FusedGroup(linear.weight,    1, [TableShard("lin_C1", ...), ...])

:class:`FusedSparseArch` returns exactly what :class:`~ctr.models.sparse.SparseArch` returns
(``emb`` [B, F, D], ``lin`` [B]), so the same model classes (DeepFM, DCN, DCNv2, Wide&Deep)
run on both backends. It takes the ids as a ``[B, F]`` integer tensor (or a
``KeyedJaggedTensor`` with one id per sample per key, read without importing TorchRec).

**Why one fused table per kind.** TorchRec's dense kernel keeps each rank's tables in fused
TBE buffers, and everything after the lookup (L2, CowClip, Adam, initialisation,
checkpoints) works on a :class:`~ctr.distributed.shards.FusedGroup`: a ``[rows, dim]``
buffer plus one :class:`~ctr.distributed.shards.TableShard` per table saying which global
rows of which table sit where. One ``[Σ V, D]`` parameter with per-field row offsets is
exactly such a buffer (each field a whole, replicated table at its offset), so the
optimizer (CowClip's per-id counts, the whole-table L2 folded into Adam, Adam itself),
:func:`~ctr.distributed.shards.init_embeddings_` (same seeded rows as TorchRec's) and the
row-keyed checkpoints run unchanged, and a run saved by one backend resumes on the other.
It also makes a lookup one ``F.embedding`` call and a step one Adam pass over one buffer
per kind, however many fields there are.

**Row gradients.** :func:`ctr.train.build.build_model_parts` turns on :meth:`FusedSparseArch.
use_row_grads` for training: the backward then yields the touched rows only (no full-size
gradient is allocated or zero-filled), the optimizer takes them from each
:class:`~ctr.distributed.shards.FusedGroup`'s ``row_grad``, and N ranks all-reduce those rows
only (:mod:`ctr.models.row_grad`). A model built by :func:`ctr.models.build_model` alone keeps
plain autograd gradients, for any torch optimizer.

The tables are made with ``torch.empty``: on ``device="meta"`` (how
:func:`ctr.train.build.build_model_parts` builds them, then ``to_empty`` and
:func:`~ctr.distributed.shards.init_embeddings_`) they draw nothing from the global RNG, as
TorchRec's meta tables draw nothing, so the dense layers built after them get the same
initial values on both backends. On a real device they are filled like TorchRec's
``EmbeddingBagCollection`` fills its tables (per table from the global RNG, embedding tables
first, then first-order ones, ending with ``normal_(0, init_std)``), so a model built by
:func:`ctr.models.build_model` alone has the same values under either backend.

Example::

    arch = FusedSparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    emb, lin = arch(torch.tensor([[3, 1], [9, 6]]))       # emb [2, 2, 10], lin [2]
    groups = arch.fused_groups()                          # for CTROptimizer, checkpoints
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctr.distributed.shards import FusedGroup, TableShard
from ctr.models.config import (
    EMBEDDING_PREFIX,
    LINEAR_PREFIX,
    check_sparse_fields,
    kind_of,
)
from ctr.models.row_grad import RowGrad, TouchedRows, row_lookup


class FusedTable(nn.Module):
    """The tables ``<prefix><field>`` of every field end to end in one ``[Σ V, dim]`` parameter."""

    def __init__(self, prefix: str, fields: list[str], vocab_sizes: dict[str, int], dim: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.tables = [f"{prefix}{f}" for f in fields]
        self.fields = list(fields)
        self.rows = [int(vocab_sizes[f]) for f in fields]
        starts, total = [], 0
        for r in self.rows:
            starts.append(total)
            total += r
        self.starts, self.dim = starts, int(dim)
        self.weight = nn.Parameter(torch.empty(total, self.dim, device=device))
        # Not a buffer: to_empty() after a meta build would leave a buffer uninitialised.
        self._offsets: dict[torch.device, torch.Tensor] = {}
        self.row_grad: RowGrad | None = None   # set by use_row_grad(): gradients as touched rows

    def offsets(self, device: torch.device) -> torch.Tensor:
        """Each field's first row, int64 [F], on ``device`` (made once per device)."""
        t = self._offsets.get(device)
        if t is None:
            t = self._offsets[device] = torch.tensor(self.starts, dtype=torch.long, device=device)
        return t

    @torch.no_grad()
    def normal_(self, std: float) -> None:
        """``normal_(0, std)`` per table, in field order, from the global RNG (TorchRec's init)."""
        for start, rows in zip(self.starts, self.rows):
            nn.init.normal_(self.weight[start:start + rows], mean=0.0, std=std)

    def use_row_grad(self, on: bool = True) -> None:
        """Training lookups hand their gradient to ``self.row_grad`` as touched rows (on), or
        leave a plain ``weight.grad`` (off)."""
        self.row_grad = RowGrad(self.starts, int(self.weight.shape[0]), self.dim) if on else None

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the fused table for ``ids`` [B, F] (field-local), int64 [B, F]."""
        return ids.long() + self.offsets(ids.device)

    def records_rows(self) -> bool:
        """Whether a lookup now records its gradient as touched rows (training, row grads on)."""
        return self.row_grad is not None and torch.is_grad_enabled() and self.weight.requires_grad

    def forward(self, ids: torch.Tensor, touched: TouchedRows | None = None) -> torch.Tensor:
        """``ids`` [B, F] (field-local) -> rows [B, F, dim]. ``touched``: the batch's rows, when
        the caller made them (``TouchedRows.of(positions, inverse=True)``) for several tables."""
        pos = self.positions(ids)
        if self.row_grad is not None and self.records_rows():
            if touched is None:
                touched = TouchedRows.of(pos, inverse=True, limit=int(self.weight.shape[0]))
            return row_lookup(self.weight, pos, touched, self.row_grad)
        return F.embedding(pos, self.weight)

    def shards(self) -> list[TableShard]:
        return [TableShard(t, f, kind_of(t), rows, self.dim, 0, rows, start, True)
                for t, f, rows, start in zip(self.tables, self.fields, self.rows, self.starts)]

    def extra_repr(self) -> str:
        return f"{len(self.tables)} tables, {self.weight.shape[0]:,} rows x {self.dim}"


class FusedSparseArch(nn.Module):
    """Embeddings ``[B, F, D]`` and the first-order logit ``[B]`` from two fused tables.

    Args: as :class:`ctr.models.sparse.SparseArch` (``fields`` in the order of the ids'
    columns and of the output; ``device="meta"`` leaves the tables unallocated and
    unfilled).
    """

    def __init__(self, fields: list[str], vocab_sizes: dict[str, int], embedding_dim: int,
                 init_std: float = 1e-2, with_linear: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_sparse_fields("FusedSparseArch", fields, vocab_sizes, embedding_dim)
        self.fields: list[str] = list(fields)
        self.embedding_dim = int(embedding_dim)
        fill = torch.device(device).type != "meta" if device is not None else True
        self.embedding = FusedTable(EMBEDDING_PREFIX, self.fields, vocab_sizes, self.embedding_dim, device)
        if fill:
            self._fill_like_torchrec(self.embedding, init_std)
        self.linear: FusedTable | None = None
        if with_linear:
            self.linear = FusedTable(LINEAR_PREFIX, self.fields, vocab_sizes, 1, device)
            if fill:
                self._fill_like_torchrec(self.linear, init_std)

    @staticmethod
    def _fill_like_torchrec(table: FusedTable, init_std: float) -> None:
        """The draws of a TorchRec ``EmbeddingBagCollection`` built off "meta": each table's
        ``nn.EmbeddingBag`` draws ``N(0, 1)`` when it is made, then the collection redraws every
        table with its ``init_fn``, ``N(0, init_std)``. The same values, and the global RNG left
        in the same state for the dense layers drawn next."""
        table.normal_(1.0)
        table.normal_(init_std)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def use_row_grads(self, on: bool = True) -> None:
        """Both tables' training gradients as touched rows (``ctr.models.row_grad``), or plain."""
        for t in self.tables():
            t.use_row_grad(on)

    def tables(self) -> list[FusedTable]:
        return [self.embedding] + ([self.linear] if self.linear is not None else [])

    def _ids(self, features: Any) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            if features.dim() != 2 or features.shape[1] != self.num_fields:
                raise ValueError(f"expected ids [B, {self.num_fields}], got {tuple(features.shape)}")
            return features
        # A KeyedJaggedTensor with one id per sample per key (values key-major), duck-typed so
        # that TorchRec need not be importable.
        keys = list(features.keys())
        values = features.values().view(len(keys), -1)
        if keys != self.fields:
            values = values[[keys.index(f) for f in self.fields]]
        return values.t()

    def forward(self, features: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``features`` (ids [B, F] or a KJT) -> (``emb`` [B, F, D], ``lin`` [B] or ``None``)."""
        ids = self._ids(features)
        # The two tables have the same rows (fields and vocabularies): one sort for both.
        touched = (TouchedRows.of(self.embedding.positions(ids), inverse=True,
                                  limit=int(self.embedding.weight.shape[0]))
                   if self.embedding.records_rows() else None)
        emb = self.embedding(ids, touched)
        if self.linear is None:
            return emb, None
        # [B, F] summed over fields, as SparseArch sums its pooled dim-1 tables
        return emb, self.linear(ids, touched).squeeze(2).sum(dim=1)

    def fused_groups(self) -> list[FusedGroup]:
        """The two tables as the optimizer and checkpoints see every backend's storage."""
        return [FusedGroup(weight=t.weight, dim=t.dim, shards=t.shards(), row_grad=t.row_grad)
                for t in self.tables()]
