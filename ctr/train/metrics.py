"""Evaluation metrics for click prediction: AUC, logloss, calibration; and peak memory."""

from __future__ import annotations

import resource
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score


def click_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """AUC, logloss, positive rate and calibration (mean prediction / mean label)."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
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


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when training on one)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device is not None and device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
