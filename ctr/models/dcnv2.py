"""DCN-V2 (Wang et al., 2021) as DeepCTR / LargeBatchCTR define it (``DCN(matrix)`` / ``DCNMix``).

::

    sparse KJT ─▶ SparseArch ─┬─▶ lin [B] ───────────────────────────────────────────┐
                              └─▶ emb [B, F, D] ─┐                                    │
    dense [B, n] ─┬──────────────────────── x0 = concat ─┬─▶ cross net ───────┐       │
                  │                                      └─▶ MLP ─────────────┴ concat│
                  │                                                ─▶ Linear(·, 1) ──┤
                  └─▶ dense_linear ─▶ [B] ────────────────────────────────────────────┤
                                                                  + bias ─▶ logit [B]

    cross net, low_rank=None: MatrixCrossNet   x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l
               low_rank=r:    MixtureCrossNet  x_{l+1} = Σ_k gate_k(x_l) x0 ⊙ (U_k tanh(C_k
                                                          tanh(V_k^T x_l)) + b_l) + x_l

Same layout as DCN (parallel towers over the same ``x0``, cross output first, one
bias-free logit layer, plus the linear logit); only the cross layer differs. The
LargeBatchCTR reference's "DCNv2" is ``DCNMix`` (low rank 32, 4 experts); the full-matrix
form is DeepCTR's ``DCN(cross_parameterization='matrix')``.

Example::

    arch = SparseArch(["C1", "C2"], {"C1": 100, "C2": 7}, embedding_dim=10)
    full = DCNv2(arch, num_dense=3, cross_layers=3)                       # matrix cross
    moe = DCNv2(arch2, num_dense=3, cross_layers=3, low_rank=32, num_experts=4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from torch import nn

from ctr.models.dcn import CrossDeepModel
from ctr.models.layers import MatrixCrossNet, MixtureCrossNet
from ctr.models.config import ModelConfig

if TYPE_CHECKING:
    from ctr.models.sparse import SparseArch


class DCNv2(CrossDeepModel):
    """``linear + Linear(concat(CrossNetV2(x0), MLP(x0)))``, logits (no sigmoid).

    Args:
        sparse: the embedding / first-order tables.
        num_dense: number of dense features.
        mlp: DNN hidden sizes (``()`` for a cross-only model).
        cross_layers: number of cross layers (``0`` for a deep-only model).
        low_rank: ``None`` for full ``N x N`` cross matrices; an int ``r`` for the low-rank
            mixture of experts (DeepCTR ``CrossNetMix``).
        num_experts: experts per layer of the mixture (ignored when ``low_rank`` is None).
        dropout: DNN dropout after every activation.
    """

    def __init__(self, sparse: SparseArch, num_dense: int, mlp: Sequence[int] = (400, 400, 400),
                 cross_layers: int = 3, low_rank: int | None = None, num_experts: int = 4,
                 dropout: float = 0.0) -> None:
        if low_rank is not None and (low_rank < 1 or num_experts < 1):
            raise ValueError(f"low_rank and num_experts must be >= 1, not {low_rank}, {num_experts}")
        self.low_rank, self.num_experts = low_rank, num_experts
        super().__init__(sparse, num_dense, mlp, cross_layers, dropout)

    @classmethod
    def from_config(cls, sparse: SparseArch, num_dense: int, config: ModelConfig) -> "DCNv2":
        return cls(sparse, num_dense, mlp=config.mlp, cross_layers=config.cross_layers,
                   low_rank=config.dcnv2_low_rank, num_experts=config.dcnv2_experts,
                   dropout=config.dropout)

    def make_cross(self, in_features: int, num_layers: int) -> nn.Module:
        if self.low_rank is None:
            return MatrixCrossNet(in_features, num_layers)
        return MixtureCrossNet(in_features, num_layers, self.low_rank, self.num_experts)
