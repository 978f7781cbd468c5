"""When a run counts as diverged: a non-finite loss, or a loss that has blown up.

A NaN or infinite loss is divergence at once. A finite loss is divergence when it stays far
above what any sane model reaches: the mean training loss of the last :data:`WINDOW` steps,
or an epoch's validation logloss, above

    threshold(p) = H(p) + ln 2

where ``H(p) = -(p ln p + (1-p) ln(1-p))`` is the logloss of predicting the training split's
positive rate ``p`` for every row (the best constant predictor) and ``ln 2`` that of
predicting 0.5 (where an untrained model starts). A model that learns anything sits below
``H(p)``; one at initialisation near ``ln 2 <= threshold``. At Criteo's 25.6% positives the
threshold is 1.26 nats; ``--dense-lr 1e3`` gives ~6.6.

Example::

    guard = LossGuard(positive_rate=0.25)
    guard.update(loss)      # raises Diverged with the reason
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 20


class Diverged(Exception):
    """The loss became non-finite or stayed above the divergence threshold."""


def constant_logloss(p: float) -> float:
    """Logloss of predicting ``p`` for data with positive rate ``p`` (0 at p in {0, 1})."""
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def divergence_threshold(p: float) -> float:
    return constant_logloss(p) + math.log(2.0)


class LossGuard:
    """Watches per-step losses (already averaged over ranks, so every rank decides alike)."""

    def __init__(self, positive_rate: float, window: int = WINDOW):
        self.threshold = divergence_threshold(positive_rate)
        self.recent: deque[float] = deque(maxlen=window)

    def update(self, loss: float, where: str) -> None:
        if not math.isfinite(loss):
            raise Diverged(f"loss is {loss} at {where}")
        self.recent.append(loss)
        if len(self.recent) == self.recent.maxlen:
            mean = sum(self.recent) / len(self.recent)
            if mean > self.threshold:
                raise Diverged(f"mean loss of the last {len(self.recent)} steps is {mean:.4g} at {where}, "
                               f"above the divergence threshold {self.threshold:.4g} "
                               "(constant-predictor logloss + ln 2)")

    def check_validation(self, logloss: float | None, where: str) -> None:
        if logloss is None:
            return
        if not math.isfinite(logloss) or logloss > self.threshold:
            raise Diverged(f"validation logloss is {logloss:.4g} {where}, above the divergence "
                           f"threshold {self.threshold:.4g} (constant-predictor logloss + ln 2)")
