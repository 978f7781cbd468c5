"""More than one host: ``ctr-train --nnodes N --node-rank R --master HOST:PORT`` on each host.

Two launchers on this one host stand in for two nodes (one worker each): they must give exactly
the run that ``--nproc 2`` on one host gives, and refuse what cannot work with a clear message.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ctr.cli import train as train_cli
from tests.test_train import full_tables

COMMON = ["--model", "deepfm", "--batch", "1k", "--epochs", "1", "--max-steps", "5", "--device", "cpu",
          "--embedding-lr", "1e-2", "--mlp", "32,32", "--eval-batch", "4096", "--quiet",
          "--sharding", "row_wise"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_equal_two_local_processes(small_dataset, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "ctr.cli.train", *COMMON, "--data", str(small_dataset)]
    local = subprocess.run(base + ["--nproc", "2", "--out", str(tmp_path / "local")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    master = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(base + ["--nnodes", "2", "--node-rank", str(r), "--master", master,
                                      "--out", str(tmp_path / "nodes")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    results = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, results):
        assert p.returncode == 0, err[-3000:]
    s_local = json.loads((tmp_path / "local" / "summary.json").read_text())
    s_nodes = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert s_nodes["world_size"] == 2 and s_nodes["status"] == "ok"
    t1, d1 = full_tables(tmp_path / "local")
    t2, d2 = full_tables(tmp_path / "nodes")
    assert t1.keys() == t2.keys() and d1.keys() == d2.keys()
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k        # the same ranks, the same computation
    for k in d1:
        assert torch.equal(d1[k], d2[k]), k
    assert s_nodes["test_auc"] == s_local["test_auc"]
    # the launch flags say how to start the workers, not what they train
    cfg = json.loads((tmp_path / "nodes" / "config.json").read_text())
    assert not {"nnodes", "node_rank", "master"} & set(cfg)


@pytest.mark.parametrize("flags,message", [
    (["--nnodes", "2", "--out", "x"], "needs --master HOST:PORT"),
    (["--nnodes", "2", "--master", "h:1"], "needs --out"),
    (["--nnodes", "2", "--node-rank", "2", "--master", "h:1", "--out", "x"], "outside 0..1"),
    (["--nnodes", "2", "--master", "nohostport", "--out", "x"], "must be HOST:PORT"),
])
def test_multinode_flags_are_checked(small_dataset, capsys, flags, message):
    assert train_cli.main([*COMMON, "--data", str(small_dataset), *flags]) == 2
    assert message in capsys.readouterr().err
