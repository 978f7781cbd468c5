"""ctr-train / ctr-eval end to end: metrics, resume, divergence, multi-process equality."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ctr.cli import eval as eval_cli
from ctr.cli import train as train_cli
from ctr.train.checkpoint import load_checkpoint

SMALL = ["--mlp", "64,64", "--eval-batch", "4096", "--quiet"]


def run_train(*args) -> int:
    return train_cli.main([str(a) for a in args] + SMALL)


def full_tables(run_dir):
    """Every table assembled from the checkpoint's row pieces, plus the dense weights."""
    state = load_checkpoint(run_dir)
    tables = {}
    for name, pieces in state["tables"].items():
        rows = max(p["row_offset"] + p["weight"].shape[0] for p in pieces)
        full = torch.zeros(rows, pieces[0]["weight"].shape[1])
        for p in pieces:
            full[p["row_offset"]:p["row_offset"] + p["weight"].shape[0]] = p["weight"]
        tables[name] = full
    return tables, state["dense"]


def test_train_then_eval(small_dataset, tmp_path):
    out = tmp_path / "run"
    code = run_train("--model", "deepfm", "--batch", "1k", "--data", small_dataset, "--epochs", 2,
                     "--out", out, "--embedding-lr", "1e-2")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["test_auc"] > 0.6, summary
    for key in ("test_logloss", "wall_seconds", "samples_per_second", "peak_rss_mb", "oracle_test_auc"):
        assert key in summary
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert "valid_auc" in json.loads(lines[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved_hparams"]["cowclip"] is True
    # ctr-eval reproduces the test AUC from the checkpoint
    assert eval_cli.main(["--run", str(out), "--split", "test"]) == 0
    ev = json.loads((out / "eval-test.json").read_text())
    assert ev["auc"] == pytest.approx(summary["test_auc"], abs=1e-6)
    assert 0.5 < ev["calibration"] < 2.0
    # a finished run is not silently overwritten
    assert run_train("--model", "deepfm", "--batch", "1k", "--data", small_dataset, "--out", out) == 2


def test_resume_equals_uninterrupted(small_dataset, tmp_path):
    common = ["--model", "dcn", "--batch", "2k", "--data", small_dataset, "--epochs", 2]
    assert run_train(*common, "--out", tmp_path / "a") == 0
    # stop after 7 steps (mid epoch 2: 10.8k train rows -> 6 steps per epoch), then resume
    assert run_train(*common, "--out", tmp_path / "b", "--max-steps", 7) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["global_steps"] == 7
    (tmp_path / "b" / "summary.json").unlink()
    assert run_train(*common, "--out", tmp_path / "b", "--resume") == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["global_steps"] == a["global_steps"] == 12
    assert b["test_auc"] == pytest.approx(a["test_auc"], abs=1e-7)
    ta, da = full_tables(tmp_path / "a")
    tb, db = full_tables(tmp_path / "b")
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-6), k
    for k in da:
        assert torch.allclose(da[k], db[k], atol=1e-6), k


def test_resume_refuses_other_config(small_dataset, tmp_path):
    out = tmp_path / "run"
    assert run_train("--model", "deepfm", "--batch", "2k", "--data", small_dataset, "--out", out,
                     "--max-steps", 2) == 0
    (out / "summary.json").unlink()
    assert run_train("--model", "dcn", "--batch", "2k", "--data", small_dataset, "--out", out,
                     "--resume") == 2


def test_diverging_run_reports_diverged(small_dataset, tmp_path):
    out = tmp_path / "run"
    code = run_train("--model", "wd", "--batch", "1k", "--data", small_dataset, "--out", out,
                     "--scaling", "none", "--dense-lr", "1e30", "--embedding-lr", "1e30")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged", summary
    assert code == 3
    assert "loss" in summary["message"] or "logloss" in summary["message"]


@pytest.mark.parametrize("sharding", ["auto", "table_wise", "row_wise"])
def test_two_processes_match_one(small_dataset, tmp_path, sharding):
    """gloo, 2 ranks on CPU: same weights after several CowClip steps as 1 process."""
    common = ["--model", "deepfm", "--batch", "1k", "--data", str(small_dataset), "--epochs", "1",
              "--max-steps", "6", "--device", "cpu", "--embedding-lr", "1e-2", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "ctr.cli.train", *common, "--sharding", "table_wise",
                          "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "ctr.cli.train", *common, "--sharding", sharding,
                          "--nproc", "2", "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    t1, d1 = full_tables(tmp_path / "one")
    t2, d2 = full_tables(tmp_path / "two")
    assert t1.keys() == t2.keys()
    assert d1.keys() == d2.keys()  # no table hides among rank 0's dense weights
    for k in t1:
        assert torch.allclose(t1[k], t2[k], atol=1e-5, rtol=1e-4), k
    for k in d1:
        assert torch.allclose(d1[k], d2[k], atol=1e-5, rtol=1e-4), k
    assert s2["test_auc"] == pytest.approx(s1["test_auc"], abs=1e-4)
    # the 2-rank checkpoint evaluates in one process and gives the run's own test AUC
    assert eval_cli.main(["--run", str(tmp_path / "two"), "--split", "test"]) == 0
    ev = json.loads((tmp_path / "two" / "eval-test.json").read_text())
    assert ev["auc"] == pytest.approx(s2["test_auc"], abs=1e-6)


@pytest.mark.parametrize("text,value", [("1k", 1024), ("128K", 131072), ("131072", 131072)])
def test_batch_flag_parsing(text, value):
    assert train_cli.build_parser().parse_args(["--batch", text]).batch == value


def test_batch_flag_rejects_junk(capsys):
    with pytest.raises(SystemExit):
        train_cli.build_parser().parse_args(["--batch", "lots"])
    assert "lots" in capsys.readouterr().err


def test_criteo_config_resolves_to_the_paper_at_128k():
    from ctr.train.config import load_config
    hp = load_config("deepfm", "criteo", overrides={"batch": "128k"}).resolved_hparams()
    assert hp.dense_lr == pytest.approx(90.5e-4, rel=1e-3)
    assert hp.l2 == pytest.approx(128e-5) and hp.embedding_lr == pytest.approx(1e-4)
    assert hp.cowclip and hp.warmup_epochs == 1 and hp.zeta == pytest.approx(1e-5)
    av = load_config("deepfm", "avazu", overrides={"batch": "128k"}).resolved_hparams()
    assert av.dense_lr == pytest.approx(16e-4) and av.l2 == pytest.approx(96e-5) and av.zeta == 1e-4


def test_cowclip_warmup_keeps_the_papers_proportion_when_asked():
    from ctr.train.config import load_config
    default = load_config("deepfm", "criteo", overrides={"batch": "8k"}).resolved_hparams()
    short = load_config("deepfm", "criteo", overrides={"batch": "8k", "cowclip_warmup_epochs": 0.1})
    assert default.warmup_epochs == 1.0 and short.resolved_hparams().warmup_epochs == 0.1
    other = load_config("deepfm", "criteo", overrides={"batch": "8k", "scaling": "sqrt",
                                                      "cowclip_warmup_epochs": 0.1})
    assert other.resolved_hparams().warmup_epochs == 0.0  # only the cowclip rule warms up
