"""tools/bench_train.py end to end on small data: both table updates, the floors and (where
TorchRec imports) the fused row-wise Adagrad peer, in one run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ctr.distributed.choices import torchrec_importable

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_reports_floors_both_updates_and_the_peer(small_dataset, tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_train.py"), "--batches", "1k",
                        "--backends", "torch", "--update", "dense,sparse", "--data", str(small_dataset),
                        "--steps", "2", "--warmup", "1", "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(x["update"], x["backend"]) for x in rows] == [("dense", "torch"), ("sparse", "torch")]
    for x in rows:
        assert x["bandwidth_floor_s"] > 0 and x["dnn_floor_s"] > 0 and x["step_s"] > 0
        # w, m, v of the [rows, dim] and [rows, 1] tables, each read and written once
        assert x["bandwidth_floor_bytes"] == 2 * 3 * x["table_rows"] * (10 + 1) * 4
        assert (x["peer_s"] is not None) == torchrec_importable()
    assert "step / (DNN + bw floor)" in r.stdout and "targets (issue 11" in r.stdout
    if torchrec_importable():
        assert "ctr / peer" in r.stdout and rows[0]["over_peer"] > 0
