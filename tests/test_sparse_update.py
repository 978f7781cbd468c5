"""``--update sparse``: only the rows present in the batch get L2, CowClip and a (lazy) Adam step.

Against a loop over the present rows with a textbook lazy Adam (tests/step_harness.py), at 1 and
2 ranks; absent rows bit for bit unchanged; a resumed run bit for bit the uninterrupted one; every
model and rule; both embedding backends alike; the flag recorded in config.json and summary.json."""

from __future__ import annotations

import json

import pytest
import torch

from ctr.cli import train as train_cli
from ctr.distributed.choices import torchrec_importable
from ctr.distributed.env import DistEnv
from ctr.models import MODEL_NAMES
from ctr.models.row_grad import TOUCHED_ROWS_ENV
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.options import OptimizerOptions
from ctr.optim.scaling import Hyperparams
from ctr.train.checkpoint import CheckpointError, check_compatible
from ctr.train.config import ConfigError, load_config
from ctr.train.trainer import Trainer
from tests.conftest import DEVICE
from tests.step_harness import Setup, run, run_ranks
from tests.test_optimizer import FIELDS, make_groups
from tests.test_train import full_tables

needs_torchrec = pytest.mark.skipif(not torchrec_importable(), reason="torchrec / fbgemm_gpu do not import here")


def _assert_close(result):
    """Float32 rounding: the two compute ``g + 2λw``, the moments and Adam's quotient in other
    orders. Adam divides by sqrt(v), so on a row whose gradient nearly cancels a last-bit
    difference can move its weight by a good part of lr (1e-2): a bound on the largest
    difference, and a much tighter one on the mean (no systematic difference)."""
    fast, ref = result["fast"], result["ref"]
    assert fast.keys() == ref.keys()
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
        assert (fast[k] - ref[k]).abs().mean() <= 1e-8 + 1e-6 * ref[k].abs().mean(), k


@pytest.mark.device
@pytest.mark.parametrize("model,options,form", [
    ("deepfm", OptimizerOptions(update="sparse"), "exact"),
    ("dcn", OptimizerOptions(update="sparse", lower_bound="paper", adam_epsilon_form="torch", adam_epsilon=1e-8),
     "exact"),
    ("deepfm", OptimizerOptions(update="sparse"), "fixed")],
    ids=["deepfm-reference", "dcn-paper-torch-eps", "deepfm-reference-fixed-size-rows"])
def test_sparse_step_equals_a_lazy_adam_loop_and_leaves_absent_rows_alone(small_dataset, model, options, form,
                                                                          monkeypatch):
    """32 steps (CowClip clipping, L2, warm-up on); after every step every row absent from the
    batch has the w, m, v it had before, bit for bit; with the touched rows in either form
    (fixed: the GPU's, whose padding slots rewrite the first row's own new values)."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, form)
    setup = Setup(str(small_dataset), "sparse", model, batch=128, steps=32)
    result = run(setup, DistEnv(0, 1, 0, DEVICE, "gloo"), options, check_untouched=True)
    assert result["steps"] == 32 and result["untouched_kept"]
    assert min(a for a, _ in result["clip"]) > 0
    _assert_close(result)


@pytest.mark.parametrize("sparse_l2", ["count", "batch"])
def test_sparse_l2_of_the_cowclip_rule_at_4x_the_base_equals_the_loop(small_dataset, sparse_l2):
    """The cowclip rule at s = 4 (λ = 4·λ_base): ``count`` gives a present row λ_base·min(cnt, 4),
    ``batch`` λ on every present row; the loop computes each row by hand. The two must differ
    (the batch has rows present fewer than 4 times)."""
    hp = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=4e-3, warmup_epochs=0, cowclip=True,
                     r=1e-2, zeta=1e-5, l2_batch_ratio=4.0)
    setup = Setup(str(small_dataset), "sparse", "deepfm", batch=128, steps=16, hp=hp)
    result = run(setup, DistEnv(0, 1, 0, DEVICE, "gloo"), OptimizerOptions(update="sparse", sparse_l2=sparse_l2))
    assert result["steps"] == 16
    _assert_close(result)
    other = run(setup, DistEnv(0, 1, 0, DEVICE, "gloo"),
                OptimizerOptions(update="sparse", sparse_l2="batch" if sparse_l2 == "count" else "count"))
    assert any(not torch.equal(result["fast"][k], other["fast"][k]) for k in result["fast"])


def test_only_the_cowclip_rule_above_its_base_scales_l2_by_the_batch_ratio():
    """l2_batch_ratio (what sparse_l2 = count divides by) is s for cowclip and 1 for the rest."""
    from ctr.optim.scaling import scale_hyperparams
    base = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=1e-3, r=1e-2, zeta=1e-5)
    assert scale_hyperparams(base, 1024, 1024, "cowclip").l2_batch_ratio == 1.0
    hp = scale_hyperparams(base, 1024, 8192, "cowclip")
    assert hp.l2_batch_ratio == 8.0 and hp.l2 == pytest.approx(8e-3)
    for rule in ("none", "sqrt", "linear"):
        assert scale_hyperparams(base, 1024, 8192, rule).l2_batch_ratio == 1.0


def test_two_ranks_sparse_step_equals_the_lazy_adam_loop(small_dataset, tmp_path):
    setup = Setup(str(small_dataset), "sparse", "deepfm", batch=128, steps=32)
    results = run_ranks(setup, 2, str(tmp_path))
    for r in results:
        assert r["steps"] == 32
        _assert_close(r)
        assert len(r["reduce_sizes"]) == 3 * 32   # touched rows of both tables + the dense weights
    for k in results[0]["fast"]:
        assert torch.equal(results[0]["fast"][k], results[1]["fast"][k]), k


@pytest.mark.device
@pytest.mark.parametrize("cowclip", [True, False])
def test_sparse_equals_dense_when_every_row_is_in_every_batch(cowclip):
    """With no absent row the two regimes are one algorithm (here on TorchRec-style groups with a
    plain weight.grad, a row-wise shard among them)."""
    hp = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=1e-3, warmup_epochs=0, cowclip=cowclip,
                     r=1.0, zeta=1e-3)
    runs = []
    for update in ("dense", "sparse"):
        groups = make_groups(device=DEVICE)
        dense = torch.nn.Parameter(torch.zeros(3, device=DEVICE))
        opt = CTROptimizer([dense], groups, hp, 0, FIELDS, OptimizerOptions(update=update))
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            ids = torch.stack([torch.randperm(7, generator=gen).repeat(5)[:30],
                               torch.randperm(5, generator=gen).repeat(6)[:30],
                               torch.randperm(30, generator=gen)], dim=1)
            opt.zero_grad()
            dense.grad = torch.zeros(3, device=DEVICE)
            for g in groups:
                g.weight.grad = (torch.randn(g.weight.shape, generator=gen) * 1e-2).to(DEVICE)
            opt.step(ids.to(DEVICE))
        runs.append((groups, opt))
    (ga, oa), (gb, ob) = runs
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa.sparse_state_of(a)[k], ob.sparse_state_of(b)[k], rtol=1e-5, atol=1e-9)
        assert float(oa.sparse_state_of(a)["step"]) == float(ob.sparse_state_of(b)["step"]) == 5
    assert oa.last_clip_fraction == pytest.approx(ob.last_clip_fraction)


# ------------------------------------------------------------ whole runs

def _config(data, out, backend="torch", model="deepfm", **over):
    values = {"batch": 1024, "data": str(data), "max_steps": 6, "embedding_lr": 1e-2, "r": 1e-2,
              "mlp": [16, 16], "cross_layers": 1, "dcnv2_low_rank": 2, "dcnv2_experts": 2, "eval_batch": 4096,
              "device": "cpu", "embedding_backend": backend, "update": "sparse", "out": str(out)}
    return load_config(model, "synthetic", overrides={**values, **over})


def test_sparse_resume_is_bit_exact(small_dataset, tmp_path):
    a = Trainer(_config(small_dataset, tmp_path / "a"), quiet=True).run()
    assert a["status"] == "ok" and a["update"] == "sparse"
    assert Trainer(_config(small_dataset, tmp_path / "b", max_steps=3), quiet=True).run()["status"] == "ok"
    (tmp_path / "b" / "summary.json").unlink()
    b = Trainer(_config(small_dataset, tmp_path / "b"), resume=True, quiet=True).run()
    assert b["global_steps"] == a["global_steps"] == 6
    ta, da = full_tables(tmp_path / "a")
    tb, db = full_tables(tmp_path / "b")
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    for k in da:
        assert torch.equal(da[k], db[k]), k
    assert b["test_auc"] == a["test_auc"]
    # the checkpoint holds the same kinds of state as a dense run's (w, m, v per row, the step)
    from ctr.train.checkpoint import load_checkpoint
    state = load_checkpoint(tmp_path / "b")
    assert state["sparse_steps"] == 6
    assert all({"weight", "exp_avg", "exp_avg_sq"} <= set(p) for ps in state["tables"].values() for p in ps)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_trains_with_sparse_updates(small_dataset, tmp_path, model):
    s = Trainer(_config(small_dataset, tmp_path / "r", model=model), quiet=True).run()
    assert s["status"] == "ok" and s["global_steps"] == 6 and s["test_auc"] > 0.5


def test_sparse_updates_without_cowclip(small_dataset, tmp_path):
    s = Trainer(_config(small_dataset, tmp_path / "r", scaling="sqrt", batch=2048), quiet=True).run()
    assert s["status"] == "ok" and s["hparams"]["cowclip"] is False


@needs_torchrec
@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
def test_sparse_updates_are_the_same_on_both_backends(small_dataset, tmp_path, model):
    """TorchRec's dense kernel gives a full weight.grad; the sparse step takes its present rows."""
    a = Trainer(_config(small_dataset, tmp_path / "a", "torchrec", model), quiet=True).run()
    b = Trainer(_config(small_dataset, tmp_path / "b", "torch", model), quiet=True).run()
    assert a["status"] == b["status"] == "ok"
    ta, da = full_tables(tmp_path / "a")
    tb, db = full_tables(tmp_path / "b")
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-6, rtol=0), k
    for k in da:
        assert torch.allclose(da[k], db[k], atol=1e-6, rtol=0), k


# ------------------------------------------------------------ the setting

def test_update_flag_reaches_config_summary_and_resume_check(small_dataset, tmp_path):
    args = train_cli.build_parser().parse_args(["--update", "sparse"])
    assert load_config("deepfm", "criteo", overrides=train_cli.overrides_from(args)).update == "sparse"
    assert load_config("deepfm", "criteo").update == "dense"                     # the default
    with pytest.raises(SystemExit):
        train_cli.build_parser().parse_args(["--update", "lazy"])
    with pytest.raises(ConfigError, match="update"):
        load_config("deepfm", "synthetic", overrides={"update": "lazy"})
    out = tmp_path / "run"
    assert train_cli.main(["--data", str(small_dataset), "--batch", "2k", "--max-steps", "2", "--mlp", "8",
                           "--eval-batch", "4096", "--update", "sparse", "--embedding-backend", "torch",
                           "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["update"] == "sparse"
    assert json.loads((out / "summary.json").read_text())["update"] == "sparse"
    (out / "summary.json").unlink()
    assert train_cli.main(["--data", str(small_dataset), "--batch", "2k", "--mlp", "8", "--eval-batch", "4096",
                           "--embedding-backend", "torch", "--out", str(out), "--resume", "--quiet"]) == 2


def test_checkpoints_from_before_the_flag_resume_as_dense():
    now = load_config("deepfm", "synthetic").to_dict()
    old = {k: v for k, v in now.items() if k != "update"}
    check_compatible(old, now, "run")                                  # dense: accepted
    with pytest.raises(CheckpointError, match="update"):
        check_compatible(old, {**now, "update": "sparse"}, "run")


def test_sparse_l2_is_a_resume_key_of_sparse_runs_only():
    """A sparse checkpoint from before sparse_l2 ran with batch (λ·s): refused under count. A
    dense run's checkpoint resumes whatever sparse_l2 says (its step does not read it)."""
    now = load_config("deepfm", "synthetic").to_dict()
    assert now["sparse_l2"] == "count"
    old_dense = {k: v for k, v in now.items() if k != "sparse_l2"}
    check_compatible(old_dense, now, "run")
    check_compatible(now, {**now, "sparse_l2": "batch"}, "run")
    old_sparse = {**old_dense, "update": "sparse"}
    with pytest.raises(CheckpointError, match="sparse_l2"):
        check_compatible(old_sparse, {**now, "update": "sparse"}, "run")
    check_compatible(old_sparse, {**now, "update": "sparse", "sparse_l2": "batch"}, "run")
    args = train_cli.build_parser().parse_args(["--update", "sparse", "--sparse-l2", "batch"])
    assert load_config("deepfm", "criteo", overrides=train_cli.overrides_from(args)).sparse_l2 == "batch"
    with pytest.raises(ConfigError, match="sparse_l2"):
        load_config("deepfm", "synthetic", overrides={"sparse_l2": "rows"})
