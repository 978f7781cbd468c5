"""ctr.metrics against scikit-learn: the same AUC and logloss to float64 rounding, with ties,
clip bounds, uint8 labels and tie groups that straddle the chunks the rank sums walk."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctr import metrics
from ctr.metrics import PROB_CLIP, click_metrics


def _sklearn(y, p):
    p = np.clip(np.asarray(p, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP)
    return roc_auc_score(y, p), log_loss(y, p, labels=[0, 1])


@pytest.mark.parametrize("chunk", [metrics.CHUNK_ROWS, 7, 1000])
def test_auc_and_logloss_equal_sklearn(monkeypatch, chunk):
    monkeypatch.setattr(metrics, "CHUNK_ROWS", chunk)
    rng = np.random.default_rng(0)
    n = 20_000
    p = rng.random(n).astype(np.float32)
    p[:3000] = np.round(p[:3000], 2)                       # many ties, some across chunks
    p[3000:3100], p[3100:3200] = 0.0, 1.0                  # clipped to the bounds (ties there)
    p[3200:3300] = np.float32(1 - 6e-8)                    # above the upper bound in float32
    y = (rng.random(n) < p).astype(np.uint8)
    y[3000:3050], y[3100:3150] = 1, 0
    m = click_metrics(y, p)
    want_auc, want_ll = _sklearn(y, p)
    assert m["auc"] == pytest.approx(want_auc, abs=1e-12)
    assert m["logloss"] == pytest.approx(want_ll, rel=1e-12)
    assert m["positive_rate"] == pytest.approx(y.mean()) and m["rows"] == n
    assert m["mean_prediction"] == pytest.approx(np.clip(p.astype(np.float64), PROB_CLIP, 1 - PROB_CLIP).mean())
    # float labels and float64 scores give the same
    assert click_metrics(y.astype(np.float32), p.astype(np.float64))["auc"] == pytest.approx(want_auc, abs=1e-12)


def test_auc_extremes():
    assert metrics.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert metrics.auc(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.5     # all tied
    assert np.isnan(metrics.auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(click_metrics(np.zeros(3), np.full(3, 0.5))["auc"])
    assert click_metrics(np.zeros(0), np.zeros(0)) == {"rows": 0}
