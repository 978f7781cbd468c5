"""Building blocks shared by the models, initialised the way DeepCTR initialises them.

::

    CTRModel (base)       sparse: SparseArch ─▶ emb [B, F, D], lin [B]
                          dense_linear: dense [B, n_dense] ─▶ [B]      ┐ linear_logit =
                          bias: global scalar                          ┘ lin + dense_linear + bias
    MLP                   [B, d] ─▶ (Linear ─▶ ReLU ─▶ Dropout) x len(hidden) ─▶ [B, hidden[-1]]
    FM                    [B, F, D] ─▶ 0.5 * sum_d((sum_f e)^2 - sum_f e^2) ─▶ [B]
    VectorCrossNet        x_{l+1} = x0 * (x_l . w_l) + b_l + x_l                  (DCN)
    MatrixCrossNet        x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l                    (DCNv2)
    MixtureCrossNet       x_{l+1} = sum_k softmax(g(x_l))_k x0 ⊙ (U_k tanh(C_k tanh(V_k^T x_l)) + b_l)
                                    + x_l                                         (DCNv2 / DCNMix)

The cross networks are TorchRec's modules (``torchrec.modules.crossnet``) as plain-PyTorch
copies in :mod:`ctr.models.crossnet` (same parameters, math and RNG draws, so no TorchRec is
needed), whose forward passes are exactly DeepCTR's ``CrossNet`` ('vector' / 'matrix') and
``CrossNetMix``; only their initialisation is replaced (TorchRec uses untruncated
``xavier_normal_``) so that results are comparable with the TensorFlow reference.

DeepCTR's ``glorot_normal`` is Keras' ``VarianceScaling(1, 'fan_avg', 'truncated_normal')``:
a normal truncated at two standard deviations whose std is ``sqrt(2 / (fan_in + fan_out))``
divided by 0.8796 (the std of a unit normal truncated at ±2), so the *kept* values have the
Glorot variance. :func:`glorot_normal_` reproduces it with explicit Keras fans (Keras
kernels are ``[in, out]``; torch's ``nn.Linear`` weights are ``[out, in]``).

Example::

    mlp = MLP(in_features=53, hidden=(400, 400, 400))
    h = mlp(torch.randn(8, 53))                            # [8, 400]
    fm = FM()(torch.randn(8, 5, 10))                       # [8]
    x = MatrixCrossNet(in_features=53, num_layers=3)(torch.randn(8, 53))   # [8, 53]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ctr.models.config import ModelConfig
# Plain-PyTorch copies of torchrec.modules.crossnet (same names, math and init): no TorchRec here.
from ctr.models.crossnet import CrossNet as _TorchRecMatrixCrossNet
from ctr.models.crossnet import LowRankMixtureCrossNet as _TorchRecMixtureCrossNet
from ctr.models.crossnet import VectorCrossNet as _TorchRecVectorCrossNet

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

    from ctr.models.sparse import SparseArch

# Standard deviation of a unit normal truncated to [-2, 2]; Keras divides by it.
_TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def glorot_normal_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Keras/DeepCTR ``glorot_normal`` in place, with the Keras fans given explicitly."""
    std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def logit_layer(in_features: int) -> nn.Linear:
    """DeepCTR's final ``Dense(1, use_bias=False, kernel_initializer=glorot_normal)``."""
    layer = nn.Linear(in_features, 1, bias=False)
    glorot_normal_(layer.weight, in_features, 1)
    return layer


# ModelConfig.dnn_init: how the dense nn.Linear layers start (ctr.train.settings lists the same two).
DNN_INITS = ("glorot_normal", "torch")


@torch.no_grad()
def apply_dnn_init_(model: nn.Module, init: str) -> nn.Module:
    """Applies ``ModelConfig.dnn_init`` to a built model, in place; the one place it is applied.

    ``glorot_normal`` (the default, DeepCTR's and so the reference's) leaves the model as its
    layers built it: kernels glorot-normal, biases zero. ``torch`` gives every ``nn.Linear``
    outside the tables and the cross networks (the DNN's hidden layers, the output layer on top
    of it, the dense features' first-order kernel ``dense_linear``) PyTorch's own default,
    ``nn.Linear.reset_parameters``: kernel ``U(±1/√fan_in)`` (kaiming-uniform with a = √5), bias
    ``U(±1/√fan_in)``; the draws come from the global RNG, in module order, after the model's
    own. Cross kernels, mixture gates and the global bias keep DeepCTR's initialisation.

    Example::

        model = apply_dnn_init_(DeepFM(arch, num_dense=13), "torch")
    """
    if init not in DNN_INITS:
        raise ValueError(f"dnn_init must be one of {DNN_INITS}, not {init!r}")
    if init == "glorot_normal":
        return model
    skip = (_TorchRecVectorCrossNet, _TorchRecMatrixCrossNet, _TorchRecMixtureCrossNet)

    def visit(m: nn.Module, name: str) -> None:
        if name == "sparse" or isinstance(m, skip):
            return
        if isinstance(m, nn.Linear):
            m.reset_parameters()
        for child_name, child in m.named_children():
            visit(child, child_name)

    visit(model, "")
    return model


class MLP(nn.Module):
    """DeepCTR's ``DNN``: ``Linear -> ReLU -> Dropout`` per hidden layer, no batch norm.

    Kernels are glorot-normal and biases zero, as in DeepCTR. Dropout (when ``dropout > 0``)
    follows every activation, the last one included, like ``DNN.call``. With ``hidden=()``
    the MLP is the identity and ``out_features == in_features``.

    ::

        x [B, in] ─▶ Linear(in, h1) ─▶ ReLU ─▶ Dropout ─▶ ... ─▶ Linear(., hn) ─▶ ReLU ─▶ Dropout

    Example::

        mlp = MLP(53, (400, 400, 400), dropout=0.0)
        mlp(torch.randn(4, 53)).shape       # torch.Size([4, 400])
    """

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = int(h)
        self.layers = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, d
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.layers:
            if isinstance(m, nn.Linear):
                glorot_normal_(m.weight, m.in_features, m.out_features)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FM(nn.Module):
    """Second-order factorization-machine term, ``sum_{i<j} <e_i, e_j>``, in O(F*D).

    Uses the identity ``sum_{i<j} e_i e_j = ((sum_i e_i)^2 - sum_i e_i^2) / 2`` per
    dimension, then sums over dimensions (DeepCTR's ``FM`` layer). No parameters.

    ::

        emb [B, F, D] ─▶ 0.5 * ((Σ_f e)^2 - Σ_f e^2) ─▶ Σ_d ─▶ [B]

    Example::

        FM()(torch.randn(4, 5, 10)).shape    # torch.Size([4])
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class VectorCrossNet(_TorchRecVectorCrossNet):
    """DCN's cross network: ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l`` with a vector ``w_l``.

    TorchRec's :class:`~torchrec.modules.crossnet.VectorCrossNet` (identical to DeepCTR's
    ``CrossNet(parameterization='vector')``), re-initialised like DeepCTR: ``w_l`` [N, 1]
    glorot-normal, ``b_l`` zero.

    ::

        x0 [B, N] ─▶ layer 1 ─▶ ... ─▶ layer L ─▶ [B, N]
                     x_l . w_l is a scalar per row: one rank-1 cross per layer

    Example::

        VectorCrossNet(in_features=53, num_layers=3)(torch.randn(4, 53)).shape   # [4, 53]
    """

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__(in_features=in_features, num_layers=num_layers)
        self.in_features = in_features
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in self.kernels:
            glorot_normal_(w, self.in_features, 1)
        for b in self.bias:
            nn.init.zeros_(b)


class MatrixCrossNet(_TorchRecMatrixCrossNet):
    """DCNv2's full-rank cross network: ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``.

    TorchRec's :class:`~torchrec.modules.crossnet.CrossNet` (identical to DeepCTR's
    ``CrossNet(parameterization='matrix')``), re-initialised like DeepCTR: ``W_l`` [N, N]
    glorot-normal, ``b_l`` zero.

    ::

        x0 [B, N] ─▶ layer 1 ─▶ ... ─▶ layer L ─▶ [B, N]
                     W_l x_l: a full N x N matrix per layer

    Example::

        MatrixCrossNet(in_features=53, num_layers=3)(torch.randn(4, 53)).shape   # [4, 53]
    """

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__(in_features=in_features, num_layers=num_layers)
        self.in_features = in_features
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in self.kernels:
            glorot_normal_(w, self.in_features, self.in_features)
        for b in self.bias:
            nn.init.zeros_(b)


class MixtureCrossNet(_TorchRecMixtureCrossNet):
    """DCNv2's low-rank mixture of cross experts (DeepCTR ``CrossNetMix`` / ``DCNMix``).

    Per layer ``l`` and expert ``k``: ``E_k = x0 ⊙ (U_k tanh(C_k tanh(V_k x_l)) + b_l)``,
    then ``x_{l+1} = Σ_k softmax_k(G_k x_l) E_k + x_l``. The gates ``G_k`` (one
    ``Linear(N, 1, bias=False)`` per expert) are shared by all layers and the bias ``b_l`` by
    all experts of a layer, as in DeepCTR. TorchRec's
    :class:`~torchrec.modules.crossnet.LowRankMixtureCrossNet` with ``activation=tanh``
    computes exactly this (with one expert it skips the trivial softmax).

    Initialisation follows DeepCTR: ``U``, ``V``, ``C`` glorot-normal with Keras' fans of
    the stacked kernels — Keras treats the expert axis of a ``[K, N, r]`` kernel as a
    receptive field, so ``fan_in = K*N``, ``fan_out = K*r`` (``K*r``, ``K*r`` for ``C``);
    gates glorot-uniform (Keras ``Dense`` default); biases zero.

    ::

        x_l ─┬─▶ V_k^T ─▶ tanh ─▶ C_k ─▶ tanh ─▶ U_k ─▶ +b_l ─▶ ⊙x0 ─▶ E_k ─┐
             └─▶ G_k ─▶ softmax over k ───────────────────────────────▶ Σ_k ─▶ + x_l

    Example::

        MixtureCrossNet(53, num_layers=3, low_rank=32, num_experts=4)(torch.randn(4, 53))
    """

    def __init__(self, in_features: int, num_layers: int, low_rank: int, num_experts: int = 4) -> None:
        super().__init__(in_features=in_features, num_layers=num_layers, num_experts=num_experts,
                         low_rank=low_rank, activation=torch.tanh)
        self.in_features, self.low_rank, self.num_experts = in_features, low_rank, num_experts
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n, r, k = self.in_features, self.low_rank, self.num_experts
        for u, v, c in zip(self.U_kernels, self.V_kernels, self.C_kernels):
            glorot_normal_(u, k * n, k * r)   # DeepCTR U: [K, N, r]
            glorot_normal_(v, k * n, k * r)   # DeepCTR V: [K, N, r] (TorchRec stores V^T)
            glorot_normal_(c, k * r, k * r)   # DeepCTR C: [K, r, r]
        for b in self.bias:
            nn.init.zeros_(b)
        if self.gates is not None:
            for g in self.gates:
                nn.init.xavier_uniform_(g.weight)


class CTRModel(nn.Module):
    """Base of every model: the sparse arch, the linear (first-order) logit and the bias.

    DeepCTR's ``get_linear_logit`` adds, for every sample, the first-order weight of each
    sparse id (the dim-1 ``sparse.linear`` tables) and ``dense @ w`` (``dense_linear``, a
    glorot-normal ``[n_dense] -> 1`` kernel without bias); ``PredictionLayer`` then adds a
    zero-initialised global bias. Subclasses add their interaction logits on top and
    return logits (no sigmoid).

    ::

        dense [B, n_dense] ──▶ dense_linear ──┐
        sparse KJT ─▶ sparse ─▶ lin [B] ──────┼─▶ + bias ─▶ linear_logit [B]
                             └▶ emb [B, F, D] ─▶ (subclass: FM / DNN / cross)

    Parameter groups (the reference trains them with two Adams): :meth:`sparse_parameters`
    are the EBC tables (embeddings and first-order rows), :meth:`dense_parameters`
    everything else (DNN, cross, logit layer, ``dense_linear``, ``bias``).
    """

    @classmethod
    def from_config(cls, sparse: SparseArch, num_dense: int, config: ModelConfig) -> "CTRModel":
        """The model with ``config``'s settings (each subclass picks the fields it uses)."""
        raise NotImplementedError(cls.__name__)

    def __init__(self, sparse: SparseArch, num_dense: int) -> None:
        super().__init__()
        if num_dense < 0:
            raise ValueError(f"num_dense must be >= 0, not {num_dense}")
        self.sparse = sparse
        self.num_dense = int(num_dense)
        self.dense_linear: nn.Linear | None = (nn.Linear(num_dense, 1, bias=False)
                                               if num_dense > 0 else None)
        self.bias = nn.Parameter(torch.zeros(1))
        if self.dense_linear is not None:
            glorot_normal_(self.dense_linear.weight, num_dense, 1)

    @property
    def deep_input_dim(self) -> int:
        """Width of ``concat(flatten(emb), dense)``, the input of the DNN and cross nets."""
        return self.sparse.num_fields * self.sparse.embedding_dim + self.num_dense

    def deep_input(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """DeepCTR's ``combined_dnn_input``: flattened field embeddings, then dense values."""
        return torch.cat([emb.flatten(1), dense], dim=1)

    def linear_logit(self, dense: torch.Tensor, lin: torch.Tensor | None) -> torch.Tensor:
        """First-order logit plus the global bias, ``[B]``."""
        out = self.bias.expand(dense.shape[0])
        if lin is not None:
            out = out + lin
        if self.dense_linear is not None:
            out = out + self.dense_linear(dense).squeeze(1)
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding and first-order tables (what DMP shards and CowClip touches)."""
        return list(self.sparse.parameters())

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: disjoint from :meth:`sparse_parameters`, together all."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | KeyedJaggedTensor) -> torch.Tensor:
        raise NotImplementedError
