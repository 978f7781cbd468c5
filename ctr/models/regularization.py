"""Which dense parameters the reference regularises, and how much, told by parameter name.

Names are the same under any sharding and world size, so the optimizer's parameter groups
built from them are too (a checkpoint's optimizer state loads anywhere). No torch import.

Example::

    reference_l2("dense_linear.weight", 1e-5)     # ("linear", 1e-5): the batch-scaled λ
    reference_l2("cross.kernels.0", 1e-5)         # ("cross", CROSS_L2): DeepCTR's fixed value
"""

from __future__ import annotations

import re

# DeepCTR's l2_reg_cross default; LargeBatchCTR's train.py passes only l2_reg_linear and
# l2_reg_embedding (= --l2), so its cross kernels keep this fixed value at every batch size.
CROSS_L2 = 1e-5
_DENSE_LINEAR = re.compile(r"(^|\.)dense_linear\.weight$")
_CROSS_KERNEL = re.compile(r"(^|\.)cross\.(kernels|U_kernels|V_kernels|C_kernels)\.\d+$")


def reference_l2(name: str, l2: float) -> tuple[str, float]:
    """(group, c) of the reference's L2 ``c·ΣW²`` on dense parameter ``name``.

    As LargeBatchCTR builds DeepCTR's models: the dense features' first-order kernel
    (``Linear``'s ``linear_kernel``, here ``dense_linear.weight``) gets ``l2_reg_linear = l2``,
    the batch-scaled λ of the tables; the cross kernels (DCN's ``kernels``, DCN-Mix's ``U``,
    ``V``, ``C``) get :data:`CROSS_L2`; the DNN, the logit layers, every bias and the DCN-Mix
    gates get none. Matched on the name's tail, so any wrapper's prefix is ignored.
    """
    if _DENSE_LINEAR.search(name):
        return "linear", float(l2)
    if _CROSS_KERNEL.search(name):
        return "cross", CROSS_L2
    return "none", 0.0
