"""Evaluation metrics for click prediction (:func:`click_metrics`, re-exported from the
torch-free :mod:`ctr.metrics`) and peak memory."""

from __future__ import annotations

import resource

import torch

from ctr.metrics import click_metrics  # noqa: F401  (re-exported)


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when training on one)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device is not None and device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
