"""The two embedding backends: the torch backend's modules against TorchRec's, the same weights
after the same CowClip steps, checkpoints that cross over, N processes = 1, and a torch-only
install (TorchRec and FBGEMM hidden) that trains, evaluates and answers --help.

Tests marked ``device`` run on ``CTR_TEST_DEVICE`` (``tools/gpu_check.sh`` runs them on cuda);
what needs TorchRec skips where it does not import."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from ctr.cli import eval as eval_cli
from ctr.distributed.choices import torchrec_importable
from ctr.distributed.shards import dense_parameters, is_table_param
from ctr.models import MODEL_NAMES, ModelConfig, build_model
from ctr.models.fused_sparse import FusedSparseArch
from ctr.train.config import ConfigError, load_config
from ctr.train.trainer import Trainer
from tests.conftest import DEVICE
from tests.test_train import full_tables

REPO = Path(__file__).resolve().parents[1]
HAVE_TORCHREC = torchrec_importable()
needs_torchrec = pytest.mark.skipif(not HAVE_TORCHREC, reason="torchrec / fbgemm_gpu do not import here")

SPARSE = ["C0", "C1", "C2", "C3", "C4"]
DENSE = ["I0", "I1", "I2"]
VOCAB = {"C0": 50, "C1": 37, "C2": 61, "C3": 20, "C4": 45}
VARIANTS = [pytest.param("deepfm", {}, id="deepfm"), pytest.param("wd", {}, id="wd"),
            pytest.param("dcn", {}, id="dcn"), pytest.param("dcnv2", {}, id="dcnv2"),
            pytest.param("dcnv2", {"dcnv2_low_rank": 4, "dcnv2_experts": 3}, id="dcnv2-mix")]
SMALL = dict(embedding_dim=8, mlp=(32, 32))


def random_batch(b: int, seed: int = 0, device=DEVICE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, VOCAB[f], (b,), generator=g) for f in SPARSE], dim=1)
    return ids.to(device), torch.randn(b, len(DENSE), generator=g).to(device)


def torch_model(name: str, seed: int = 0, **over) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, DENSE, SPARSE, VOCAB, ModelConfig(**{**SMALL, **over}),
                       embedding_backend="torch").to(DEVICE)


# ------------------------------------------------------------ the modules, against TorchRec's

CROSS = {"vector": ("VectorCrossNet", {}), "matrix": ("CrossNet", {}),
         "mix-1": ("LowRankMixtureCrossNet", {"num_experts": 1, "low_rank": 3, "activation": torch.tanh}),
         "mix-3": ("LowRankMixtureCrossNet", {"num_experts": 3, "low_rank": 3, "activation": torch.tanh}),
         "mix-relu": ("LowRankMixtureCrossNet", {"num_experts": 2, "low_rank": 2})}


@needs_torchrec
@pytest.mark.parametrize("kind", sorted(CROSS))
def test_cross_nets_are_torchrecs(kind):
    """Same parameter names, shapes, order and initial draws; same outputs and gradients on
    random parameters and inputs."""
    from torchrec.modules import crossnet as theirs

    from ctr.models import crossnet as ours
    cls, kw = CROSS[kind]
    n, layers = 7, 3
    torch.manual_seed(0)
    a = getattr(theirs, cls)(n, layers, **kw)
    rng_a = torch.get_rng_state()
    torch.manual_seed(0)
    b = getattr(ours, cls)(n, layers, **kw)
    assert torch.equal(rng_a, torch.get_rng_state())        # the same draws from the global RNG
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(pa) == list(pb)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k in pa:   # random values everywhere (biases are zero at init)
            v = torch.randn(pa[k].shape, generator=g) * 0.3
            pa[k].copy_(v)
            pb[k].copy_(v)
    x = torch.randn(16, n, generator=g)
    w = torch.randn(16, n, generator=g)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(yb, ya, rtol=1e-6, atol=1e-6)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    for k in pa:
        torch.testing.assert_close(pb[k].grad, pa[k].grad, rtol=1e-5, atol=1e-6, msg=k)


@needs_torchrec
@pytest.mark.parametrize("name,over", VARIANTS)
def test_both_backends_build_the_same_model(name, over):
    """One seed, either backend: the same dense weights and table rows, the same logits and
    gradients (ids as a tensor, or as a KJT)."""
    from ctr.data.loader import make_kjt
    cfg = ModelConfig(**{**SMALL, **over})
    torch.manual_seed(3)
    a = build_model(name, DENSE, SPARSE, VOCAB, cfg, embedding_backend="torchrec")
    torch.manual_seed(3)
    b = build_model(name, DENSE, SPARSE, VOCAB, cfg, embedding_backend="torch")
    da, db = dense_parameters(a), dense_parameters(b)
    assert list(da) == list(db)
    for k in da:
        assert torch.equal(da[k], db[k]), k
    for fused, ebc, prefix in ((b.sparse.embedding, a.sparse.embedding, "emb_"),
                               (b.sparse.linear, a.sparse.linear, "lin_")):
        for f, start, rows in zip(SPARSE, fused.starts, fused.rows):
            assert torch.equal(fused.weight[start:start + rows], ebc.embedding_bags[prefix + f].weight), f
    ids, dense = random_batch(64, device="cpu")
    labels = (torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    out_a, out_b = a(dense, make_kjt(ids, SPARSE)), b(dense, ids)
    torch.testing.assert_close(out_b, out_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a(dense, ids), out_a, rtol=0, atol=0)                 # ids -> KJT inside
    torch.testing.assert_close(b(dense, make_kjt(ids, SPARSE)), out_b, rtol=0, atol=0)  # a KJT read as ids
    for m, out in ((a, out_a), (b, out_b)):
        nn.functional.binary_cross_entropy_with_logits(out, labels).backward()
    for k in da:
        torch.testing.assert_close(db[k].grad, da[k].grad, rtol=1e-5, atol=1e-7, msg=k)
    for fused, ebc, prefix in ((b.sparse.embedding, a.sparse.embedding, "emb_"),
                               (b.sparse.linear, a.sparse.linear, "lin_")):
        for f, start, rows in zip(SPARSE, fused.starts, fused.rows):
            torch.testing.assert_close(fused.weight.grad[start:start + rows],
                                       ebc.embedding_bags[prefix + f].weight.grad, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------ the torch backend on any device

@pytest.mark.device
@pytest.mark.parametrize("name,over", VARIANTS)
def test_torch_backend_logits_and_gradients(name, over):
    model = torch_model(name, **over)
    ids, dense = random_batch(64)
    out = model(dense, ids)
    assert out.shape == (64,) and out.dtype == torch.float32 and out.device.type == DEVICE.type
    torch.testing.assert_close(model(dense, ids.to(torch.int32)), out, rtol=0, atol=0)
    labels = (torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5).float().to(DEVICE)
    nn.functional.binary_cross_entropy_with_logits(out, labels).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    # the tables get gradient exactly on the rows of the batch
    for table in (model.sparse.embedding, model.sparse.linear):
        touched = (table.weight.grad.abs().sum(dim=1) > 0).cpu()
        expect = torch.zeros(table.weight.shape[0], dtype=torch.bool)
        for j, start in enumerate(table.starts):
            expect[ids[:, j].cpu().unique() + start] = True
        assert torch.equal(touched, expect)


@pytest.mark.device
def test_torch_backend_tables_are_one_fused_group_per_kind():
    model = torch_model("deepfm")
    names = [n for n, _ in model.named_parameters() if is_table_param(n)]
    assert names == ["sparse.embedding.weight", "sparse.linear.weight"]
    assert not any(is_table_param(n) for n in dense_parameters(model))
    emb, lin = model.sparse.fused_groups()
    total = sum(VOCAB.values())
    assert emb.weight.shape == (total, 8) and lin.weight.shape == (total, 1)
    assert (emb.kind, lin.kind) == ("embedding", "linear")
    start = 0
    for s_emb, s_lin, f in zip(emb.shards, lin.shards, SPARSE):
        assert (s_emb.table, s_lin.table) == (f"emb_{f}", f"lin_{f}")
        assert (s_emb.row_offset, s_emb.rows, s_emb.num_embeddings, s_emb.fused_row) == (0, VOCAB[f], VOCAB[f], start)
        assert s_emb.replicated and s_lin.replicated and s_lin.fused_row == start
        start += VOCAB[f]
    emb_out, lin_out = model.sparse(random_batch(4)[0])
    assert emb_out.shape == (4, len(SPARSE), 8) and lin_out.shape == (4,)


@pytest.mark.device
def test_torch_backend_meta_tables_draw_nothing_and_fill_on_device():
    torch.manual_seed(0)
    arch = FusedSparseArch(SPARSE, VOCAB, 4, device="meta")
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    arch.to_empty(device=DEVICE)
    from ctr.distributed.shards import init_embeddings_
    init_embeddings_(arch.fused_groups(), seed=1, std=1e-2)
    assert arch.embedding.weight.device.type == DEVICE.type
    assert (arch.linear.weight == 0).all() and arch.embedding.weight.std().item() == pytest.approx(1e-2, rel=0.2)


@pytest.fixture(scope="module")
def planted():
    g = torch.Generator().manual_seed(1234)
    n, vocab = 12000, 40
    ids = torch.randint(0, vocab, (n, 5), generator=g)
    dense = torch.randn(n, 3, generator=g)
    first = torch.randn(5, vocab, generator=g) * 0.5
    factors = torch.randn(5, vocab, 4, generator=g) * 0.5
    logit = sum(first[f, ids[:, f]] for f in range(5))
    for i, j in itertools.combinations(range(5), 2):
        logit = logit + (factors[i, ids[:, i]] * factors[j, ids[:, j]]).sum(1)
    logit = logit + dense @ torch.tensor([0.8, -0.6, 0.4]) - 0.5
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    return ids, dense, labels, 10000, roc_auc_score(labels[10000:].numpy(), logit[10000:].numpy())


@pytest.mark.device
@pytest.mark.parametrize("name,over", [
    pytest.param("deepfm", {}, id="deepfm"), pytest.param("dcn", {}, id="dcn")])
def test_torch_backend_learns_a_planted_model(planted, name, over):
    ids, dense, labels, split, oracle = planted
    fields = [f"F{i}" for i in range(5)]
    torch.manual_seed(0)
    model = build_model(name, ["D0", "D1", "D2"], fields, {f: 40 for f in fields},
                        ModelConfig(embedding_dim=8, mlp=(64, 64), **over), embedding_backend="torch").to(DEVICE)
    opt = torch.optim.Adam([{"params": model.sparse_parameters(), "lr": 2e-2},
                            {"params": model.dense_parameters(), "lr": 3e-3}])
    ids, dense, labels = ids.to(DEVICE), dense.to(DEVICE), labels.to(DEVICE)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(split, generator=g).split(256):
            idx = idx.to(DEVICE)
            loss = nn.functional.binary_cross_entropy_with_logits(model(dense[idx], ids[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = model(dense[split:], ids[split:]).cpu()
    auc = roc_auc_score(labels[split:].cpu().numpy(), scores.numpy())
    assert auc > 0.7, f"{name}: held-out AUC {auc:.3f} (oracle {oracle:.3f})"


# ------------------------------------------------------------ whole runs: the same numbers

def train_config(data, model, backend, out, max_steps=6, device="cpu", **over):
    """6 CowClip steps (r 1e-2: about a tenth of the present rows are clipped each step); small
    dense towers (DCN-Mix: 2 layers, 2 experts of rank 4) keep a run near a second."""
    values = dict(batch=1024, data=str(data), max_steps=max_steps, embedding_lr=1e-2, r=1e-2,
                  mlp=[32, 32], cross_layers=2, dcnv2_low_rank=4, dcnv2_experts=2, eval_batch=4096,
                  device=device, embedding_backend=backend, out=str(out))
    return load_config(model, "synthetic", overrides={**values, **over})


class Runs:
    """Runs made on first use and shared by the tests of this module (each ~1 s in-process)."""

    def __init__(self, data: Path, base: Path):
        self.data, self.base, self.done = data, base, {}

    def get(self, model: str, backend: str) -> dict:
        key = (model, backend)
        if key not in self.done:
            out = self.base / f"{model}-{backend}"
            tr = Trainer(train_config(self.data, model, backend, out), quiet=True)
            summary = tr.run()
            assert summary["status"] == "ok", summary
            self.done[key] = {"dir": out, "summary": summary, "clip": tr.opt.last_clip_fraction}
        return self.done[key]


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory) -> Runs:
    return Runs(small_dataset, tmp_path_factory.mktemp("backend-runs"))


def assert_same_weights(dir_a, dir_b, atol=None, rel=None):
    """Every table and dense weight of two runs' checkpoints: elementwise within ``atol``, or
    (``rel``, across devices) within a relative Frobenius distance: Adam's first steps move a
    weight whose gradient is ~0 by ±lr, so one rounding-flipped sign would fail an atol."""
    ta, da = full_tables(dir_a)
    tb, db = full_tables(dir_b)
    assert ta.keys() == tb.keys() and da.keys() == db.keys()
    for k, a, b in [(k, ta[k], tb[k]) for k in ta] + [(k, da[k], db[k]) for k in da]:
        if atol is not None:
            assert torch.allclose(a, b, atol=atol, rtol=0), (k, (a - b).abs().max())
        else:
            assert (a - b).norm() <= rel * max(b.norm(), 1e-12), (k, (a - b).norm() / b.norm())


@needs_torchrec
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_backends_train_to_the_same_weights(runs, model):
    a, b = runs.get(model, "torchrec"), runs.get(model, "torch")
    assert a["clip"] > 0 and b["clip"] == pytest.approx(a["clip"])   # CowClip on, and clipping
    assert_same_weights(a["dir"], b["dir"], atol=1e-6)
    assert b["summary"]["test_auc"] == pytest.approx(a["summary"]["test_auc"], abs=1e-6)
    for r, backend in ((a, "torchrec"), (b, "torch")):   # config.json records the concrete one
        assert json.loads((r["dir"] / "config.json").read_text())["embedding_backend"] == backend


@needs_torchrec
@pytest.mark.parametrize("first,second", [("torchrec", "torch"), ("torch", "torchrec")])
def test_a_run_resumes_and_evaluates_on_the_other_backend(runs, small_dataset, tmp_path, first, second):
    out = tmp_path / "run"
    assert Trainer(train_config(small_dataset, "dcnv2", first, out, max_steps=3), quiet=True).run()["status"] == "ok"
    (out / "summary.json").unlink()
    resumed = Trainer(train_config(small_dataset, "dcnv2", second, out), resume=True, quiet=True).run()
    assert resumed["status"] == "ok" and resumed["global_steps"] == 6
    assert json.loads((out / "config.json").read_text())["embedding_backend"] == second
    assert_same_weights(out, runs.get("dcnv2", second)["dir"], atol=1e-6)
    assert resumed["test_auc"] == pytest.approx(runs.get("dcnv2", first)["summary"]["test_auc"], abs=1e-6)
    # ctr-eval with the backend the run did not end on gives the run's own test AUC
    assert eval_cli.main(["--run", str(out), "--split", "test", "--embedding-backend", first]) == 0
    ev = json.loads((out / "eval-test.json").read_text())
    assert ev["embedding_backend"] == first
    assert ev["auc"] == pytest.approx(resumed["test_auc"], abs=1e-6)


@pytest.mark.device
def test_torch_backend_run_on_device_matches_cpu(runs, small_dataset, tmp_path):
    """A run on CTR_TEST_DEVICE equals the CPU run to float rounding; its checkpoint evaluates
    on the CPU."""
    out = tmp_path / "run"
    summary = Trainer(train_config(small_dataset, "deepfm", "torch", out, device=DEVICE.type), quiet=True).run()
    assert summary["status"] == "ok" and summary["device"].startswith(DEVICE.type)
    cpu = runs.get("deepfm", "torch")
    if DEVICE.type == "cpu":
        assert_same_weights(out, cpu["dir"], atol=1e-6)
    else:
        assert_same_weights(out, cpu["dir"], rel=1e-3)
    assert summary["test_auc"] == pytest.approx(cpu["summary"]["test_auc"], abs=1e-6 if DEVICE.type == "cpu" else 2e-3)
    assert eval_cli.main(["--run", str(out), "--device", "cpu", "--embedding-backend", "torch"]) == 0
    ev = json.loads((out / "eval-test.json").read_text())
    assert ev["auc"] == pytest.approx(summary["test_auc"], abs=1e-6 if DEVICE.type == "cpu" else 2e-3)


def test_torch_backend_refuses_sharded_plans(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="--sharding row_wise needs --embedding-backend torchrec"):
        load_config("deepfm", "synthetic", overrides={"embedding_backend": "torch", "sharding": "row_wise"})
    from ctr.cli import train as train_cli
    assert train_cli.main(["--embedding-backend", "torch", "--sharding", "table_wise", "--data",
                           str(small_dataset), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------ without TorchRec and FBGEMM

HIDE = '''\
"""Test helper: TorchRec and FBGEMM cannot be imported in this process and its children."""
import sys


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchrec", "fbgemm_gpu"):
            raise ImportError(f"{name} is hidden by the test (sitecustomize)")
        return None


sys.meta_path.insert(0, _Hide())
'''


@pytest.fixture(scope="module")
def hidden_env(tmp_path_factory) -> dict:
    """An environment whose Python processes (torchrun's workers too) cannot import TorchRec or
    FBGEMM: a ``sitecustomize`` on PYTHONPATH installs a finder that refuses them."""
    d = tmp_path_factory.mktemp("hide")
    (d / "sitecustomize.py").write_text(HIDE)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(d), str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def test_torch_alone_preprocesses_trains_evaluates_and_helps(hidden_env, tmp_path):
    script = textwrap.dedent('''
        import json, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        try:
            import torchrec  # noqa: F401
            sys.exit("torchrec is not hidden")
        except ImportError:
            pass
        import ctr
        from ctr.cli import eval as ev, preprocess, sweep, train
        assert preprocess.main(["synth", "--rows", "3000", "--out", str(out / "data"), "--quiet"]) == 0
        common = ["--model", "dcnv2", "--batch", "1k", "--data", str(out / "data"), "--mlp", "16",
                  "--cross-layers", "1", "--dcnv2-low-rank", "2", "--dcnv2-experts", "2",
                  "--eval-batch", "4096", "--quiet", "--device", "cpu"]
        assert train.main(common + ["--max-steps", "2", "--out", str(out / "run")]) == 0
        cfg = json.loads((out / "run" / "config.json").read_text())
        assert cfg["embedding_backend"] == "torch", cfg["embedding_backend"]       # auto -> torch
        assert json.loads((out / "run" / "summary.json").read_text())["status"] == "ok"
        assert ev.main(["--run", str(out / "run")]) == 0
        assert json.loads((out / "run" / "eval-test.json").read_text())["embedding_backend"] == "torch"
        # refused before anything starts, exit 2: torchrec asked for, a sharded plan under --nproc
        assert train.main(common + ["--embedding-backend", "torchrec", "--out", str(out / "r2")]) == 2
        assert train.main(common + ["--sharding", "row_wise", "--nproc", "2", "--out", str(out / "r3")]) == 2
        for cli in (train, ev, sweep, preprocess):   # ctr-train --help & co
            try:
                cli.main(["--help"])
            except SystemExit as e:
                assert e.code == 0, (cli.__name__, e.code)
            else:
                raise AssertionError(f"{cli.__name__} --help did not exit")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torchrec", "fbgemm_gpu"))
        assert not loaded, loaded
        print("TORCH-ONLY OK")
    ''')
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=hidden_env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "TORCH-ONLY OK" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
    assert "--embedding-backend {auto,torchrec,torch}" in r.stdout   # ctr-train --help's


def test_torch_backend_on_two_processes_equals_one(runs, small_dataset, hidden_env, tmp_path):
    """gloo, 2 ranks, TorchRec hidden (auto -> torch): tables replicated, gradients averaged,
    CowClip on the global counts; the same weights as one process."""
    one = runs.get("deepfm", "torch")
    cmd = [sys.executable, "-m", "ctr.cli.train", "--model", "deepfm", "--batch", "1k", "--data",
           str(small_dataset), "--max-steps", "6", "--embedding-lr", "1e-2", "--r", "1e-2", "--mlp", "32,32",
           "--eval-batch", "4096", "--device", "cpu", "--nproc", "2", "--out", str(tmp_path / "two"), "--quiet"]
    r = subprocess.run(cmd, env=hidden_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["summary"]["world_size"] == 1
    assert json.loads((tmp_path / "two" / "config.json").read_text())["embedding_backend"] == "torch"
    assert_same_weights(tmp_path / "two", one["dir"], atol=1e-5)
    assert two["test_auc"] == pytest.approx(one["summary"]["test_auc"], abs=1e-4)
