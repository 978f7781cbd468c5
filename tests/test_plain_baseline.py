"""tools/plain_deepfm.py, the plain-PyTorch DeepFM that ctr-train is compared with (README: Parity)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctr.data.synth import generate_dataset

TOOL = Path(__file__).resolve().parents[1] / "tools" / "plain_deepfm.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "synth"
    generate_dataset(path, 12_000, seed=2, progress=False)
    return path


def _run(data, out, *extra):
    cmd = [sys.executable, str(TOOL), "--data", str(data), "--batch", "1k", "--mlp", "64,64",
           "--init-std", "1e-2", "--json", str(out), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(out.read_text()), p.stdout


def test_plain_baseline_learns_and_reports(data, tmp_path):
    res, stdout = _run(data, tmp_path / "plain.json", "--epochs", "2", "--dense-lr", "3e-3",
                       "--embedding-lr", "3e-3")
    assert res["steps"] == 2 * 11                       # 10,800 train rows: 10 full + 1 partial per epoch
    assert 0.6 < res["test_auc"] < 1.0 and 0.2 < res["test_logloss"] < 0.7
    assert res["command"].startswith("python tools/plain_deepfm.py --data ")
    assert "test AUC" in stdout and "command:" in stdout


def test_plain_baseline_ctr_like_switches(data, tmp_path):
    """Each screening switch runs and changes the result: they are live, not decorative."""
    base, _ = _run(data, tmp_path / "a.json", "--max-steps", "6")
    like, _ = _run(data, tmp_path / "b.json", "--max-steps", "6", "--table-adam", "dense",
                   "--adam-eps", "1e-7", "--adam-eps-form", "keras", "--first-order-init", "zero",
                   "--dnn-init", "glorot_normal")
    assert base["steps"] == like["steps"] == 6
    assert base["test_auc"] != like["test_auc"]


def test_plain_baseline_bad_data_names_it(tmp_path):
    p = subprocess.run([sys.executable, str(TOOL), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not a processed dataset" in p.stderr and "Traceback" not in p.stderr
