"""Dense-feature transforms, fitted on a stream of chunks and applied chunk by chunk.

Three kinds, all mapping a missing value (NaN) to 0 as the paper does:

- ``minmax`` (the paper): ``(x - min) / (max - min)``, so values fall in [0, 1]; a constant
  column maps to 0. ``min``/``max`` are fitted over the whole input (all splits).
- ``log1p``: ``sign(x) * log1p(|x|)``: monotone and odd, so a negative value (Criteo's I2 has
  -1..-3) maps to ``-log1p(|x|)`` rather than NaN; not fitted.
- ``none``: the raw value (as float32).

Inputs must be finite or NaN: the readers turn ``inf``, ``nan`` text and values beyond
float32 into bad rows, and both functions here raise :class:`ValueError` on such a value rather
than let it max out a min-max range or become a silent 0 or an inf.

Example::

    stats = DenseStats(["I1", "I2"])
    for chunk in chunks: stats.update(chunk)          # chunk: float64 [n, 2], NaN = missing
    params = stats.params("minmax")
    out = apply_dense_transform(chunk, "minmax", params, ["I1", "I2"])   # float32 [n, 2]
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

DENSE_TRANSFORMS = ("minmax", "log1p", "none")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DenseStats:
    """Running min / max / missing count per dense column over a stream of chunks."""

    def __init__(self, fields: list[str]):
        self.fields = list(fields)
        n = len(self.fields)
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.missing = np.zeros(n, dtype=np.int64)
        self.rows = 0

    def update(self, values: np.ndarray) -> None:
        """``values``: float [rows, fields] with NaN for missing."""
        if values.shape[0] == 0:
            return
        _check_finite(values)
        with warnings.catch_warnings():  # an all-NaN column warns; its min stays +inf
            warnings.simplefilter("ignore", RuntimeWarning)
            self.min = np.fmin(self.min, np.nanmin(values, axis=0))
            self.max = np.fmax(self.max, np.nanmax(values, axis=0))
        self.missing += np.isnan(values).sum(axis=0)
        self.rows += values.shape[0]

    def params(self, kind: str) -> dict[str, Any]:
        """The transform's parameters, JSON-ready, one entry per field."""
        check_transform(kind)
        out: dict[str, Any] = {}
        for i, f in enumerate(self.fields):
            entry: dict[str, Any] = {"missing": int(self.missing[i])}
            if kind == "minmax":
                lo = float(self.min[i]) if np.isfinite(self.min[i]) else 0.0
                hi = float(self.max[i]) if np.isfinite(self.max[i]) else 0.0
                entry.update(min=lo, max=hi)
            out[f] = entry
        return out


def check_transform(kind: str) -> None:
    if kind not in DENSE_TRANSFORMS:
        raise ValueError(f"unknown dense transform {kind!r}; choose one of {DENSE_TRANSFORMS}")


def apply_dense_transform(values: np.ndarray, kind: str, params: dict[str, Any],
                          fields: list[str]) -> np.ndarray:
    """Transforms float ``values`` [rows, len(fields)] (NaN = missing) to float32."""
    check_transform(kind)
    x = np.asarray(values, dtype=np.float64)
    _check_finite(x)
    if kind == "minmax":
        lo = np.array([params[f]["min"] for f in fields], dtype=np.float64)
        hi = np.array([params[f]["max"] for f in fields], dtype=np.float64)
        span = np.where(hi > lo, hi - lo, 1.0)
        x = np.clip((x - lo) / span, 0.0, 1.0)  # clip: values outside the fitted range
    elif kind == "log1p":
        x = np.sign(x) * np.log1p(np.abs(x))
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def _check_finite(x: np.ndarray) -> None:
    if (np.abs(x) > FLOAT32_MAX).any():  # NaN compares false: missing is fine
        raise ValueError("dense values must be finite and within float32 range (NaN = missing); "
                         f"got {x[np.abs(x) > FLOAT32_MAX].flat[0]:g}")
