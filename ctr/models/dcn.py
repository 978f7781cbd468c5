"""Deep & Cross Network (Wang et al., 2017) as DeepCTR / LargeBatchCTR define it.

::

    sparse KJT ─▶ SparseArch ─┬─▶ lin [B] ───────────────────────────────────────────┐
                              └─▶ emb [B, F, D] ─┐                                    │
    dense [B, n] ─┬──────────────────────── x0 = concat ─┬─▶ VectorCrossNet ─┐        │
                  │                                      └─▶ MLP ────────────┴ concat │
                  │                                                ─▶ Linear(·, 1) ──┤
                  └─▶ dense_linear ─▶ [B] ────────────────────────────────────────────┤
                                                                  + bias ─▶ logit [B]

Cross layers are DCN's vector form ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``. The cross
and deep towers read the same ``x0 = concat(flatten(emb), dense)``; their outputs are
concatenated (cross first) into one bias-free logit layer. DeepCTR's DCN also adds the
linear logit. With ``mlp=()`` only the cross tower is used, with ``cross_layers=0`` only
the deep tower (DeepCTR's branches).

Example::

    arch = SparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    model = DCN(arch, num_dense=3, mlp=(400, 400, 400), cross_layers=3)
    logits = model(torch.randn(2, 3), kjt)      # [2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ctr.models.layers import MLP, CTRModel, VectorCrossNet, logit_layer
from ctr.models.config import ModelConfig

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

    from ctr.models.sparse import SparseArch


class CrossDeepModel(CTRModel):
    """The layout DCN and DCN-V2 share: a cross tower beside the DNN over the same ``x0``,
    outputs concatenated (cross first) into one bias-free logit, plus the linear logit.
    Subclasses only choose the cross network (:meth:`make_cross`)."""

    def __init__(self, sparse: SparseArch, num_dense: int, mlp: Sequence[int], cross_layers: int,
                 dropout: float) -> None:
        super().__init__(sparse, num_dense)
        if not mlp and cross_layers <= 0:
            raise ValueError(f"{type(self).__name__} needs hidden layers or cross layers (both are empty)")
        d = self.deep_input_dim
        self.cross = self.make_cross(d, cross_layers) if cross_layers > 0 else None
        self.dnn = MLP(d, mlp, dropout) if mlp else None
        width = (d if self.cross is not None else 0) + (self.dnn.out_features if self.dnn else 0)
        self.logit = logit_layer(width)

    def make_cross(self, in_features: int, num_layers: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | KeyedJaggedTensor) -> torch.Tensor:
        emb, lin = self.sparse(sparse)
        x0 = self.deep_input(emb, dense)
        towers = []
        if self.cross is not None:
            towers.append(self.cross(x0))
        if self.dnn is not None:
            towers.append(self.dnn(x0))
        stack = towers[0] if len(towers) == 1 else torch.cat(towers, dim=1)
        return self.linear_logit(dense, lin) + self.logit(stack).squeeze(1)


class DCN(CrossDeepModel):
    """``linear + Linear(concat(CrossNet(x0), MLP(x0)))``, logits (no sigmoid).

    Args:
        sparse: the embedding / first-order tables.
        num_dense: number of dense features.
        mlp: DNN hidden sizes (``()`` for a cross-only model).
        cross_layers: number of vector cross layers (``0`` for a deep-only model).
        dropout: DNN dropout after every activation.
    """

    def __init__(self, sparse: SparseArch, num_dense: int, mlp: Sequence[int] = (400, 400, 400),
                 cross_layers: int = 3, dropout: float = 0.0) -> None:
        super().__init__(sparse, num_dense, mlp, cross_layers, dropout)

    @classmethod
    def from_config(cls, sparse: SparseArch, num_dense: int, config: ModelConfig) -> "DCN":
        return cls(sparse, num_dense, mlp=config.mlp, cross_layers=config.cross_layers,
                   dropout=config.dropout)

    def make_cross(self, in_features: int, num_layers: int) -> nn.Module:
        return VectorCrossNet(in_features, num_layers)
