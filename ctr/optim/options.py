"""Where the reference code and torch (or Algorithm 1 as printed) differ: which the step follows.

The reference is bytedance/LargeBatchCTR (TF 2.4 Keras + DeepCTR, ``train.py``); every default
of :class:`OptimizerOptions` is its behaviour, every alternative ctr's earlier one:

==================  =============================================  ==============================
option              ``reference`` (default)                         alternative
==================  =============================================  ==============================
lower_bound         ``r·cnt·max(‖w‖, r·√d·ζ)`` (``clip.py``)         ``paper``: ``cnt·max(r‖w‖, ζ)``
adam_epsilon_form   ``keras``: ``lr·√(1-b2^t)/(1-b1^t)·m/(√v+ε)``   ``torch``: ``ε`` on bias-corrected v
adam_epsilon        ``1e-7`` (Keras)                                 torch's own default is 1e-8
dense_l2            ``reference``: λ on the dense features'          ``none``
                    linear kernel, 1e-5 on cross kernels
warmup_form         ``reference``: ``PolynomialDecay(1e-8 -> lr)``   ``linear``: ``lr·min(1, (t+1)/W)``,
                    over ``W = int(warmup · int(N / B))`` steps      ``W = round(warmup · steps/epoch)``
update              ``dense``: every table row gets L2 and an Adam   ``sparse``: only the rows present
                    step every step (the whole-table L2)             in the batch get L2, CowClip and
                                                                     a lazy Adam step (TorchRec's
                                                                     fused optimizers' regime)
sparse_l2           ``count``: under the cowclip rule a present     ``batch``: λ·s on every present
                    row's L2 is ``λ/s·min(cnt, s)``, so each row    row (the dense regime's rule
                    gets the base run's L2 per epoch (README)       applied as it stands)
==================  =============================================  ==============================

``update="sparse"`` is not the paper's algorithm (an absent row keeps its w, m, v: no L2 decay,
no moment decay); its Adam is torch.optim.SparseAdam's, bias-corrected by the global step
count. Its L2 scaling (``sparse_l2``, only under the cowclip rule, only in this regime): the
paper's λ·s keeps a row's L2 per epoch when every row gets L2 every step (s times fewer steps,
each s times stronger). Here a row gets L2 only in the steps it is present in: a rare id
(present in at most one sample of a batch) as many times per epoch at any batch, a frequent one
(in every batch) in every step. ``count`` gives a present row ``λ_base·min(cnt, s)``
(``= λ/s·min(cnt, s)``): a rare id keeps λ_base, a frequent one gets λ_base·s, as in the base run.

This module is light (no torch) so that configurations can take their defaults from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOWER_BOUNDS = ("paper", "reference")
ADAM_EPSILON_FORMS = ("keras", "torch")
DENSE_L2_MODES = ("reference", "none")
WARMUP_FORMS = ("reference", "linear")
UPDATE_MODES = ("dense", "sparse")
SPARSE_L2_MODES = ("count", "batch")
ADAM_BETAS = (0.9, 0.999)          # Keras' and torch's defaults alike
WARMUP_START_LR = 1e-8             # the reference's PolynomialDecay initial learning rate


@dataclass(frozen=True)
class OptimizerOptions:
    """Which of the reference's details the step follows (module docstring); defaults: all."""

    lower_bound: str = "reference"
    adam_epsilon_form: str = "keras"
    adam_epsilon: float = 1e-7
    dense_l2: str = "reference"
    warmup_form: str = "reference"
    update: str = "dense"
    sparse_l2: str = "count"

    def __post_init__(self) -> None:
        for name, allowed in (("lower_bound", LOWER_BOUNDS), ("adam_epsilon_form", ADAM_EPSILON_FORMS),
                              ("dense_l2", DENSE_L2_MODES), ("warmup_form", WARMUP_FORMS),
                              ("update", UPDATE_MODES), ("sparse_l2", SPARSE_L2_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        eps = self.adam_epsilon
        if isinstance(eps, str):   # PyYAML reads "1e-7" (no dot) as a string
            try:
                eps = float(eps)
            except ValueError:
                pass
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"adam_epsilon must be a positive finite number, not {self.adam_epsilon!r}")
        object.__setattr__(self, "adam_epsilon", float(eps))
