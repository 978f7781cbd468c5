"""Wide & Deep (Cheng et al., 2016) as DeepCTR's ``WDL`` / LargeBatchCTR define it.

::

    sparse KJT ─▶ SparseArch ─┬─▶ lin [B] (wide: first-order rows) ─────────┐
                              └─▶ emb [B, F, D] ─┐                           │
    dense [B, n] ─┬────────────────────────── concat ─▶ MLP ─▶ Linear(·, 1) ─┤
                  └─▶ dense_linear ─▶ [B] (wide: dense kernel) ─────────────┤
                                                             + bias ─▶ logit [B]

The wide part is DeepCTR's linear logit over the same features (no hand-made cross
features), so Wide & Deep here is DeepFM without the FM term.

Example::

    arch = SparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    model = WideDeep(arch, num_dense=3)
    logits = model(torch.randn(2, 3), kjt)      # [2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ctr.models.layers import MLP, CTRModel, logit_layer
from ctr.models.config import ModelConfig

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

    from ctr.models.sparse import SparseArch


class WideDeep(CTRModel):
    """``linear + Linear(MLP(concat(emb, dense)))``, logits (no sigmoid).

    Args:
        sparse: the embedding / first-order tables.
        num_dense: number of dense features.
        mlp: DNN hidden sizes (ReLU, glorot-normal kernels, zero biases).
        dropout: DNN dropout after every activation.
    """

    def __init__(self, sparse: SparseArch, num_dense: int, mlp: Sequence[int] = (400, 400, 400),
                 dropout: float = 0.0) -> None:
        super().__init__(sparse, num_dense)
        self.dnn = MLP(self.deep_input_dim, mlp, dropout)
        self.dnn_logit = logit_layer(self.dnn.out_features)

    @classmethod
    def from_config(cls, sparse: SparseArch, num_dense: int, config: ModelConfig) -> "WideDeep":
        return cls(sparse, num_dense, mlp=config.mlp, dropout=config.dropout)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | KeyedJaggedTensor) -> torch.Tensor:
        emb, lin = self.sparse(sparse)
        deep = self.dnn_logit(self.dnn(self.deep_input(emb, dense))).squeeze(1)
        return self.linear_logit(dense, lin) + deep
