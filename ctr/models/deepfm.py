"""DeepFM (Guo et al., 2017) as DeepCTR / LargeBatchCTR define it.

::

    sparse KJT ─▶ SparseArch ─┬─▶ lin [B] ─────────────────────────────────┐
                              └─▶ emb [B, F, D] ─┬─▶ FM ─▶ [B] ─────────────┤
    dense [B, n] ─┬───────────────────────────── concat ─▶ MLP ─▶ Linear(·, 1) ─▶ [B] ─┤
                  └─▶ dense_linear ─▶ [B] ──────────────────────────────────┤
                                                              + bias ─▶ logit [B]

The FM and the DNN share the field embeddings; dense features enter the DNN input and
the linear part but not the FM (DeepCTR's FM sees only the sparse embedding group).

Example::

    arch = SparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    model = DeepFM(arch, num_dense=3, mlp=(400, 400, 400))
    logits = model(torch.randn(2, 3), kjt)      # [2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ctr.models.layers import FM, MLP, CTRModel, logit_layer
from ctr.models.config import ModelConfig

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

    from ctr.models.sparse import SparseArch


class DeepFM(CTRModel):
    """``linear + FM(emb) + Linear(MLP(concat(emb, dense)))``, all logits (no sigmoid).

    Args:
        sparse: the embedding / first-order tables.
        num_dense: number of dense features.
        mlp: DNN hidden sizes (ReLU, glorot-normal kernels, zero biases).
        dropout: DNN dropout after every activation.
    """

    def __init__(self, sparse: SparseArch, num_dense: int, mlp: Sequence[int] = (400, 400, 400),
                 dropout: float = 0.0) -> None:
        super().__init__(sparse, num_dense)
        self.fm = FM()
        self.dnn = MLP(self.deep_input_dim, mlp, dropout)
        self.dnn_logit = logit_layer(self.dnn.out_features)

    @classmethod
    def from_config(cls, sparse: SparseArch, num_dense: int, config: ModelConfig) -> "DeepFM":
        return cls(sparse, num_dense, mlp=config.mlp, dropout=config.dropout)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | KeyedJaggedTensor) -> torch.Tensor:
        emb, lin = self.sparse(sparse)
        deep = self.dnn_logit(self.dnn(self.deep_input(emb, dense))).squeeze(1)
        return self.linear_logit(dense, lin) + self.fm(emb) + deep
