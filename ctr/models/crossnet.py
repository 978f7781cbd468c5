"""Plain-PyTorch cross networks: the same modules as ``torchrec.modules.crossnet``, without TorchRec.

::

    VectorCrossNet          x_{l+1} = x0 · (x_l · w_l) + b_l + x_l              kernels.l [N, 1], bias.l [N, 1]
    CrossNet (matrix)       x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l                kernels.l [N, N], bias.l [N, 1]
    LowRankMixtureCrossNet  x_{l+1} = Σ_k softmax(G x_l)_k · x0 ⊙ (U_k g(C_k g(V_k x_l)) + b_l) + x_l
                            U_kernels.l [K, N, r], V_kernels.l [K, r, N], bias.l [N, 1],
                            gates.k (Linear(N, 1, bias=False), K > 1 only), C_kernels.l [K, r, r]

Each class has TorchRec's constructor, parameter names, shapes and registration order
(checkpoints, the dense optimizer's parameter groups and the reference-L2 name patterns of
:mod:`ctr.models.regularization` depend on them), draws its initial values from the global
RNG in TorchRec's order (``xavier_normal_`` per kernel, in the order TorchRec creates them),
and computes its forward pass with the same operations, so it gives TorchRec's numbers
bit for bit (``tests/test_models.py`` compares them while TorchRec is installed). The
subclasses in :mod:`ctr.models.layers` re-initialise them the DeepCTR way.

Example::

    net = CrossNet(in_features=53, num_layers=3)
    net(torch.randn(4, 53)).shape                   # [4, 53]
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import nn


def _xavier(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_normal_(torch.empty(*shape)))


def _zeros(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.zeros_(torch.empty(*shape)))


class CrossNet(nn.Module):
    """Full-rank cross network (DCN-V2 matrix form): ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``."""

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        self._num_layers = num_layers
        self.kernels = nn.ParameterList([_xavier(in_features, in_features) for _ in range(num_layers)])
        self.bias = nn.ParameterList([_zeros(in_features, 1) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input.unsqueeze(2)                                   # [B, N, 1]
        x_l = x_0
        for layer in range(self._num_layers):
            xl_w = torch.matmul(self.kernels[layer], x_l)          # [B, N, 1]
            x_l = x_0 * (xl_w + self.bias[layer]) + x_l
        return torch.squeeze(x_l, dim=2)


class VectorCrossNet(nn.Module):
    """DCN's cross network: ``x_{l+1} = x0 · (x_l · w_l) + b_l + x_l`` with a vector ``w_l``."""

    def __init__(self, in_features: int, num_layers: int) -> None:
        super().__init__()
        self._num_layers = num_layers
        self.kernels = nn.ParameterList([_xavier(in_features, 1) for _ in range(num_layers)])
        self.bias = nn.ParameterList([_zeros(in_features, 1) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input.unsqueeze(2)                                   # [B, N, 1]
        x_l = x_0
        for layer in range(self._num_layers):
            xl_w = torch.tensordot(x_l, self.kernels[layer], dims=([1], [0]))   # [B, 1, 1]
            x_l = torch.matmul(x_0, xl_w) + self.bias[layer] + x_l              # [B, N, 1]
        return torch.squeeze(x_l, dim=2)


class LowRankMixtureCrossNet(nn.Module):
    """DCN-V2's low-rank mixture of cross experts (DCN-Mix). With one expert the gates and
    the softmax are skipped, as in TorchRec."""

    def __init__(self, in_features: int, num_layers: int, num_experts: int = 1, low_rank: int = 1,
                 activation: Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]] = torch.relu
                 ) -> None:
        super().__init__()
        if num_experts < 1 or low_rank < 1:
            raise ValueError(f"num_experts and low_rank must be >= 1, not {num_experts}, {low_rank}")
        self._num_layers, self._num_experts = num_layers, num_experts
        self._low_rank, self._in_features = low_rank, in_features
        k, n, r = num_experts, in_features, low_rank
        # TorchRec's creation order (U, V, bias, gates, C): the global RNG is drawn the same way.
        self.U_kernels = nn.ParameterList([_xavier(k, n, r) for _ in range(num_layers)])
        self.V_kernels = nn.ParameterList([_xavier(k, r, n) for _ in range(num_layers)])
        self.bias = nn.ParameterList([_zeros(n, 1) for _ in range(num_layers)])
        # Any, as TorchRec's (untyped) attribute: callers index it and read .weight
        self.gates: Any = (
            nn.ModuleList([nn.Linear(n, 1, bias=False) for _ in range(k)]) if k > 1 else None)
        self._activation = activation
        self.C_kernels = nn.ParameterList([_xavier(k, r, r) for _ in range(num_layers)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x_0 = input.unsqueeze(2)                                   # [B, N, 1]
        x_l = x_0
        for layer in range(self._num_layers):
            if self.gates is not None:
                gating = torch.stack([gate(x_l.squeeze(2)) for gate in self.gates], 1)   # [B, K, 1]
            experts = []
            for i in range(self._num_experts):
                e = torch.matmul(self.V_kernels[layer][i], x_l)                  # [B, r, 1]
                e = torch.matmul(self.C_kernels[layer][i], self._activation(e))  # [B, r, 1]
                e = torch.matmul(self.U_kernels[layer][i], self._activation(e))  # [B, N, 1]
                e = x_0 * (e + self.bias[layer])
                experts.append(e.squeeze(2))                                     # [B, N]
            stacked = torch.stack(experts, 2)                                    # [B, N, K]
            if self.gates is not None:
                x_l = torch.matmul(stacked, torch.softmax(gating, 1)) + x_l      # [B, N, 1]
            else:
                x_l = stacked + x_l
        return torch.squeeze(x_l, dim=2)
