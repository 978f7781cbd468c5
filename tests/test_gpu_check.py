"""tools/gpu_check.sh, dry-run on the CPU with tiny sizes and TorchRec hidden, so the script
prepared for the GPU machine (torch only, no installs) cannot rot unnoticed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_backends import HIDE

REPO = Path(__file__).resolve().parents[1]
FILES = ["bench.json", "cowclip.json", "env.txt", "gpu_check.log", "pytest-junit.xml", "pytest.txt", "summary.md"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_runs_on_cpu_without_torchrec(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHONPATH=str(hide), OMP_NUM_THREADS="2",
               CTR_GPU_CHECK_DEVICE="cpu", CTR_GPU_CHECK_PYTHON=sys.executable,
               CTR_GPU_CHECK_TESTS="tests/test_optimizer.py::test_counts_cover_global_batch_and_ignore_other_shards",
               CTR_GPU_CHECK_BATCHES="1k,2k", CTR_GPU_CHECK_TABLE_ROWS="200k", CTR_GPU_CHECK_BENCH_ROWS="6k",
               CTR_GPU_CHECK_STEPS="2", CTR_GPU_CHECK_WARMUP="1", CTR_GPU_CHECK_SYNTH_ROWS="4k",
               CTR_GPU_CHECK_COWCLIP_BATCHES="1k")
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:], log[-4000:])
    assert sorted(os.listdir(out)) == FILES and len(FILES) <= 8

    env_txt = (out / "env.txt").read_text()
    assert "device: cpu" in env_txt and "torchrec not importable" in env_txt
    assert "1 passed" in (out / "pytest.txt").read_text()

    bench = json.loads((out / "bench.json").read_text())
    assert bench["backend"] == "torch" and bench["table_rows"] == 200_000
    assert [row["batch"] for row in bench["rows_by_batch"]] == [1024, 2048]
    for row in bench["rows_by_batch"]:
        assert "error" not in row, row
        assert row["samples_per_s"] > 0 and row["table_rows"] == 200_000 and row["peak_rss_mb"] > 0
        assert all(row[f"{k}_ms"] > 0 for k in ("forward", "backward", "optimizer", "cowclip"))

    cow = json.loads((out / "cowclip.json").read_text())
    assert [(x["batch"], x["scaling"]) for x in cow["runs"]] == [(1024, "cowclip"), (1024, "none")]
    assert all(x["status"] == "ok" and 0 <= x["test_auc"] <= 1 for x in cow["runs"])
    assert cow["runs"][0]["hparams"]["cowclip"] and not cow["runs"][1]["hparams"]["cowclip"]

    summary = (out / "summary.md").read_text()
    assert "pytest on the device: 1 tests, 0 failed" in summary
    assert "| 1K |" in summary and "| 2K |" in summary and "cowclip" in summary
    assert "exit 0" in log and "TIMED OUT" not in log
