"""The uniform view of the embedding rows a rank holds, whatever the embedding backend.

::

    torchrec backend: DMP's fused TBE buffers ──┐
    torch backend:    one fused [Σ V, D] table ─┴─▶ FusedGroup(weight, dim) ──▶ TableShard(table,
                      (and one [Σ V, 1])               global rows [row_offset, row_offset + rows)
                                                       at fused_row in the group's [rows, dim] view)

Everything downstream (initialisation, L2, CowClip, Adam, checkpoints) works on
:class:`FusedGroup` / :class:`TableShard`, which know each shard's global row range, so the
same code serves every sharding type, world size and backend. This module needs torch only
(no TorchRec, no FBGEMM): :mod:`ctr.distributed.sharding` builds these from a DMP model,
:mod:`ctr.models.fused_sparse` from its plain-PyTorch tables.

Example::

    groups = build_model_parts(...).groups         # either backend's (ctr.train.build)
    init_embeddings_(groups, seed=0, std=1e-2)     # the same values under any layout
    dense = dense_parameters(module)               # the same names under any layout
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ctr.models.row_grad import RowGrad

# Where the tables live in every model (ctr.models.CTRModel.sparse): TorchRec's EBCs
# (``sparse.embedding.embedding_bags.emb_C1.weight``) or the torch backend's fused tables
# (``sparse.embedding.weight``, ``sparse.linear.weight``).
SPARSE_MODULES = ("sparse.embedding", "sparse.linear")
_FUSED_TABLE = re.compile(r"(^|\.)sparse\.(embedding|linear)\.weight$")


@dataclass
class TableShard:
    """The rows ``[row_offset, row_offset + rows)`` of one table, as held by this rank."""

    table: str                  # "emb_C1" / "lin_C1"
    field: str                  # "C1"
    kind: str                   # "embedding" (CowClip applies) or "linear" (first order: never clipped)
    num_embeddings: int         # the whole table's rows
    dim: int
    row_offset: int             # global row of this shard's first row
    rows: int
    fused_row: int              # where the shard starts in its group's [rows, dim] fused view
    replicated: bool            # data_parallel: every rank holds the whole table


@dataclass
class FusedGroup:
    """One weight buffer of this rank: shards of equal dim laid end to end."""

    weight: torch.Tensor                    # the fused parameter (optimizer steps this)
    dim: int
    shards: list[TableShard] = field(default_factory=list)
    # The torch backend in training: the gradient as the batch's touched rows (weight.grad stays
    # None; ctr.models.row_grad). None: the gradient is weight.grad (TorchRec's dense kernel).
    row_grad: RowGrad | None = None

    @property
    def rows(self) -> int:
        return self.weight.numel() // self.dim

    def view(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, dim] view of the fused weight (or of a same-shaped tensor like its grad)."""
        return (self.weight if t is None else t).view(-1, self.dim)

    @property
    def kind(self) -> str:
        return self.shards[0].kind


def is_table_param(name: str) -> bool:
    """Whether a parameter name is an embedding table's: a TorchRec EBC's (``sparse.embedding.
    embedding_bags.emb_C1.weight``) or the torch backend's fused table (``sparse.embedding.weight``,
    ``sparse.linear.weight``). By name, not by type: a table placed on another rank still appears
    in a DMP model, as an empty plain ``Parameter``, and must not be taken for a dense weight."""
    return (any(f"{m}.embedding_bags." in name for m in SPARSE_MODULES)
            or _FUSED_TABLE.search(name) is not None)


def dense_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The dense (non-table) parameters by name: the same names under any sharding, world size
    and embedding backend."""
    return {n: p for n, p in module.named_parameters() if not is_table_param(n)}


def _block_seed(seed: int, table: str, block: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(table.encode())) * 65_537 + block


INIT_BLOCK_ROWS = 1 << 16


@torch.no_grad()
def init_embeddings_(groups: list[FusedGroup], seed: int, std: float) -> None:
    """Embedding rows N(0, std), drawn in fixed blocks seeded by (seed, table, block): a row
    gets the same value whatever the sharding, world size or backend, so sharded runs equal
    unsharded ones. First-order (linear) tables start at zero, as in the reference (DeepCTR's
    ``get_linear_logit(init=Zeros())``). The global RNG is not touched."""
    for g in groups:
        w = g.view()
        for s in g.shards:
            if s.kind == "linear":
                w[s.fused_row: s.fused_row + s.rows].zero_()
                continue
            lo, hi = s.row_offset, s.row_offset + s.rows
            for b in range(lo // INIT_BLOCK_ROWS, (hi - 1) // INIT_BLOCK_ROWS + 1 if hi > lo else 0):
                gen = torch.Generator().manual_seed(_block_seed(seed, s.table, b))
                block = torch.randn(INIT_BLOCK_ROWS, s.dim, generator=gen) * std
                b_lo, b_hi = b * INIT_BLOCK_ROWS, (b + 1) * INIT_BLOCK_ROWS
                r_lo, r_hi = max(lo, b_lo), min(hi, b_hi)
                dst = w[s.fused_row + r_lo - lo: s.fused_row + r_hi - lo]
                dst.copy_(block[r_lo - b_lo: r_hi - b_lo].to(dst.device, dst.dtype))
