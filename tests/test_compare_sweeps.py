"""tools/compare_sweeps.py: two sweeps' tables side by side, with each rule's top - base change."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import compare_sweeps  # noqa: E402


def _sweep(path: Path, aucs: dict[tuple[int, str], float]) -> Path:
    path.mkdir(parents=True)
    results = [{"model": "deepfm", "batch": b, "rule": r, "seed": 0, "status": "ok", "test_auc": a}
               for (b, r), a in aucs.items()]
    results.append({"model": "deepfm", "batch": 16, "rule": "none", "seed": 1, "status": "ok", "test_auc": 0.1})
    (path / "results.json").write_text(json.dumps({"name": "cpu", "results": results}))
    return path


def test_side_by_side_table_and_plot(tmp_path):
    d = _sweep(tmp_path / "d", {(16, "none"): 0.77, (2048, "none"): 0.75, (16, "cowclip"): 0.77,
                                (2048, "cowclip"): 0.772})
    s = _sweep(tmp_path / "s", {(16, "none"): 0.76, (2048, "none"): 0.755, (16, "cowclip"): 0.761})
    assert compare_sweeps.main([f"dense={d}", f"sparse={s}", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| batch | none (dense) | none (sparse) | cowclip (dense) | cowclip (sparse) |" in md
    assert "| 16 | 0.7700 | 0.7600 | 0.7700 | 0.7610 |" in md          # seed 0 only
    assert "| 2K | 0.7500 | 0.7550 | 0.7720 | — |" in md
    assert "| **2K − 16** | **-0.0200** | **-0.0050** | **+0.0020** | — |" in md
    assert (tmp_path / "out" / "auc_vs_batch.png").read_bytes()[:4] == b"\x89PNG"


def test_a_directory_without_results_is_named(tmp_path):
    with pytest.raises(SystemExit, match="results.json"):
        compare_sweeps.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
