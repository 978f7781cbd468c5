"""Click-prediction metrics on plain numpy arrays: AUC, logloss, positive rate, calibration.

Training and evaluation (:mod:`ctr.train.metrics`, which re-exports :func:`click_metrics`)
and the synthetic generator's oracle (:func:`ctr.data.synth.oracle_metrics`) score with this
one function. It lives outside :mod:`ctr.train` so that data code can use it without
importing torch; scikit-learn is imported on the first call, not at import.

Example::

    from ctr.metrics import click_metrics
    click_metrics(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]))
    # {"rows": 3, "positive_rate": 0.667, "mean_prediction": 0.433, "calibration": 0.65,
    #  "auc": 1.0, "logloss": 0.499}
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROB_CLIP = 1e-7   # probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] for the logloss


def click_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """AUC, logloss, positive rate and calibration (mean prediction / mean label).

    ``auc`` is NaN when only one class is present; an empty input gives ``{"rows": 0}``.
    """
    from sklearn.metrics import log_loss, roc_auc_score
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP)
    out: dict[str, Any] = {"rows": int(labels.size)}
    if labels.size == 0:
        return out
    pos = float(labels.mean())
    out["positive_rate"] = pos
    out["mean_prediction"] = float(probs.mean())
    out["calibration"] = float(probs.mean() / pos) if pos > 0 else float("nan")
    both = 0 < labels.sum() < labels.size
    out["auc"] = float(roc_auc_score(labels, probs)) if both else float("nan")
    out["logloss"] = float(log_loss(labels, probs, labels=[0, 1]))
    return out
