"""The sparse part of every model: per-field embeddings and first-order weights.

::

    ids [B, F] ──▶ KeyedJaggedTensor (keys = fields, one id per sample per key)
            │
            ├──▶ embedding: EBC, table emb_<field> [vocab, D] ──▶ emb [B, F, D]
            │                                                     (FM / DNN / cross input)
            └──▶ linear:    EBC, table lin_<field> [vocab, 1] ──▶ sum over fields ──▶ lin [B]
                                                                  (first-order logit)

This is the torchrec embedding backend (the torch backend's plain-PyTorch equivalent is
:class:`ctr.models.fused_sparse.FusedSparseArch`, same inputs and outputs). Both lookups are
TorchRec :class:`EmbeddingBagCollection` s so that ``DistributedModelParallel`` can shard them (the trainer wraps the whole model; nothing
here knows about sharding). The naming contract matters to the sharding code: tables are
``emb_<field>`` / ``lin_<field>`` with ``feature_names=[field]``, so a field's first-order
table can follow its embedding table.

Pooling is ``SUM`` over a bag of exactly one id, i.e. a plain lookup. First-order weights
are a dim-1 EBC rather than a dense vector because, like DeepCTR's ``get_linear_logit``
(a ``linear0sparse_emb_<field>`` Keras ``Embedding`` of width 1), they are per-id rows
that the reference trains with the embedding optimizer.

Example::

    arch = SparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    kjt = KeyedJaggedTensor(keys=["C1", "C2"], values=torch.tensor([3, 9, 1, 6]),
                            lengths=torch.ones(4, dtype=torch.int32))
    emb, lin = arch(kjt)        # emb [2, 2, 10], lin [2]
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

from ctr.models.config import EMBEDDING_PREFIX, LINEAR_PREFIX, check_sparse_fields


def _tables(prefix: str, fields: list[str], vocab_sizes: dict[str, int], dim: int,
            init_std: float) -> list[EmbeddingBagConfig]:
    # init_fn draws from the global RNG in table order, so torch.manual_seed fixes the values.
    init_fn = partial(nn.init.normal_, mean=0.0, std=init_std)
    return [EmbeddingBagConfig(name=f"{prefix}{f}", embedding_dim=dim,
                               num_embeddings=int(vocab_sizes[f]), feature_names=[f],
                               pooling=PoolingType.SUM, init_fn=init_fn)
            for f in fields]


class SparseArch(nn.Module):
    """Embeddings ``[B, F, D]`` and the first-order logit ``[B]`` of the sparse fields.

    Args:
        fields: the sparse fields, in the order of the KJT keys and of the output.
        vocab_sizes: rows of each field's tables.
        embedding_dim: ``D``.
        init_std: both kinds of table start as ``N(0, init_std)``.
        with_linear: build the first-order tables (``False`` only for a model without a
            linear part; ``linear`` is then ``None`` and ``forward`` returns ``lin=None``).
        device: where the tables live (``"meta"`` leaves them uninitialised, as TorchRec does).
    """

    def __init__(self, fields: list[str], vocab_sizes: dict[str, int], embedding_dim: int,
                 init_std: float = 1e-2, with_linear: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_sparse_fields("SparseArch", fields, vocab_sizes, embedding_dim)
        self.fields: list[str] = list(fields)
        self.embedding_dim = int(embedding_dim)
        device = torch.device(device) if device is not None else None
        self.embedding = EmbeddingBagCollection(
            tables=_tables(EMBEDDING_PREFIX, self.fields, vocab_sizes, self.embedding_dim, init_std),
            device=device)
        self.linear: EmbeddingBagCollection | None = (
            EmbeddingBagCollection(tables=_tables(LINEAR_PREFIX, self.fields, vocab_sizes, 1, init_std),
                                   device=device)
            if with_linear else None)

    def _field_order(self, keys: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """Index putting pooled keys back in field order; built once per (keys, device)."""
        cached = getattr(self, "_order_cache", None)
        if cached is None or cached[0] != (keys, device):
            pos = {k: i for i, k in enumerate(keys)}
            order = torch.tensor([pos[f] for f in self.fields], dtype=torch.long, device=device)
            cached = ((keys, device), order)
            self._order_cache = cached
        return cached[1]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def _kjt(self, ids: torch.Tensor) -> KeyedJaggedTensor:
        """ids [B, F] -> a KJT keyed by the fields, one id per sample per key (values key-major)."""
        b, f = ids.shape
        if f != self.num_fields:
            raise ValueError(f"expected ids [B, {self.num_fields}], got {tuple(ids.shape)}")
        return KeyedJaggedTensor(keys=self.fields, values=ids.t().reshape(-1).to(torch.int64),
                                 lengths=torch.ones(b * f, dtype=torch.int32, device=ids.device))

    def forward(self, features: KeyedJaggedTensor | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``features`` (a KJT, or ids [B, F] made into one here) -> (``emb`` [B, F, D], ``lin``
        [B] or ``None``).

        An unsharded EBC pools in table order (= field order); a sharded one (table-wise over
        several ranks) returns its keys in shard order, so the fields are put back in order
        by key (a no-op view when the order already matches).
        """
        if isinstance(features, torch.Tensor):
            features = self._kjt(features)
        pooled = self.embedding(features)
        emb = pooled.values().view(-1, self.num_fields, self.embedding_dim)
        keys = pooled.keys()
        if keys != self.fields:
            emb = emb.index_select(1, self._field_order(tuple(keys), emb.device))
        if self.linear is None:
            return emb, None
        lin = self.linear(features).values().sum(dim=1)
        return emb, lin
