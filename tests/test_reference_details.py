"""The reference code's details (bytedance/LargeBatchCTR on TF 2.4 Keras + DeepCTR) as ctr's
defaults, and today's alternatives as options: Adam's epsilon, L2 on dense weights, CowClip's
lower bound, the warm-up, Avazu's hour, the loss, and where optimizer state lives."""

from __future__ import annotations

import copy
import io
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ctr.data.raw import AVAZU_COLUMNS, detect_format
from ctr.distributed.shards import FusedGroup, TableShard, dense_parameters
from ctr.models import CROSS_L2, ModelConfig, build_model, reference_l2
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.options import OptimizerOptions
from ctr.optim.scaling import Hyperparams
from ctr.train.config import ConfigError, TrainConfig, load_config
from tests.test_optimizer import FIELDS, make_groups
from tests.test_preprocess import avazu_rows, read_split, run, write_text

B1, B2 = 0.9, 0.999
SPARSE = ["C0", "C1"]
DENSE = ["I0", "I1", "I2"]
VOCAB = {"C0": 11, "C1": 7}


def keras_adam_(w, g, m, v, t, lr, eps=1e-7):
    """tf.keras.optimizers.Adam (TF 2.4, ``ResourceApplyAdam``): epsilon hat, float32."""
    m.mul_(B1).add_(g, alpha=1 - B1)
    v.mul_(B2).addcmul_(g, g, value=1 - B2)
    lr_t = lr * math.sqrt(1 - B2 ** t) / (1 - B1 ** t)
    w.sub_(lr_t * m / (v.sqrt() + eps))


def small_model(name="dcnv2", **over):
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=4, mlp=(8,), cross_layers=2, **over)
    return build_model(name, DENSE, SPARSE, VOCAB, cfg)


# ---------------------------------------------------------------- 1, 2: Adam epsilon, dense L2


@pytest.mark.parametrize("form", ["keras", "torch"])
def test_adam_matches_hand_written_keras_adam_with_reference_l2(form):
    """Five steps of both groups against Keras' Adam with the reference's L2 in the loss:
    tables λ, the dense features' linear kernel λ, cross kernels 1e-5, the DNN none. The
    gradients are tiny (sqrt(v) near eps), so torch's epsilon form is far off."""
    hp = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=3e-5, warmup_epochs=0, cowclip=False)
    gen = torch.Generator().manual_seed(0)
    names = {"dense_linear.weight": hp.l2, "cross.kernels.0": CROSS_L2, "cross.U_kernels.1": CROSS_L2,
             "cross.bias.0": 0.0, "dnn.layers.0.weight": 0.0}
    dense = {n: torch.nn.Parameter(torch.randn(3, generator=gen)) for n in names}
    groups = make_groups()
    want_w = [p.detach().clone() for p in dense.values()] + [g.weight.detach().clone() for g in groups]
    coefs = list(names.values()) + [hp.l2] * len(groups)
    state = [(torch.zeros_like(w), torch.zeros_like(w)) for w in want_w]
    opts = OptimizerOptions(adam_epsilon_form=form)
    opt = CTROptimizer(dense, groups, hp, 0, FIELDS, options=opts)
    ids = torch.zeros(4, len(FIELDS), dtype=torch.int32)
    params = list(dense.values()) + [g.weight for g in groups]
    for t in range(1, 6):
        grads = [torch.randn(p.shape, generator=gen) * 1e-7 for p in params]
        opt.zero_grad()
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step(ids)
        for i, (w, gr) in enumerate(zip(want_w, grads)):
            lr = hp.dense_lr if i < len(dense) else hp.embedding_lr
            keras_adam_(w, gr + 2 * coefs[i] * w, *state[i], t, lr)
        assert opt.sparse.param_groups[0]["eps"] == opt.dense.param_groups[0]["eps"] == opt.adam_eps(t)
    for p, w in zip(params, want_w):
        if form == "keras":
            torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-7)
        else:
            assert (p.detach() - w).abs().max() > 1e-4


def test_torch_form_is_torch_adam():
    """The alternative, ``adam_epsilon_form="torch"``, ``adam_epsilon=1e-8``: torch's own Adam."""
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(5, generator=gen))
    q = torch.nn.Parameter(p.detach().clone())
    opt = CTROptimizer({"w": p}, [], Hyperparams(1e-3, 1e-3), 0, FIELDS,
                       options=OptimizerOptions(adam_epsilon_form="torch", adam_epsilon=1e-8))
    ref = torch.optim.Adam([q], lr=1e-3)
    for _ in range(4):
        g = torch.randn(5, generator=gen) * 1e-6
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(torch.zeros(1, len(FIELDS), dtype=torch.int32))
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,over", [("deepfm", {}), ("wd", {}), ("dcn", {}), ("dcnv2", {}),
                                       ("dcnv2", {"dcnv2_low_rank": 2, "dcnv2_experts": 3})])
def test_dense_l2_groups_by_name(name, over):
    model = small_model(name, **over)
    named = dense_parameters(model)
    opt = CTROptimizer(named, [], Hyperparams(1e-3, 1e-4, l2=4e-5), 0, FIELDS)
    decay = {id(p): pg["weight_decay"] for pg in opt.dense.param_groups for p in pg["params"]}
    cross = [n for n in named if n.startswith("cross.") and "kernels" in n]
    assert bool(cross) == name.startswith("dcn")
    for n, p in named.items():
        want = 8e-5 if n == "dense_linear.weight" else 2 * CROSS_L2 if n in cross else 0.0
        assert decay[id(p)] == pytest.approx(want), n
    if over:   # DCN-Mix: U, V, C regularised, gates and biases not
        assert {n.split(".")[1] for n in cross} == {"U_kernels", "V_kernels", "C_kernels"}
        assert reference_l2("cross.gates.0.weight", 1.0) == ("none", 0.0)
    off = CTROptimizer(named, [], Hyperparams(1e-3, 1e-4, l2=4e-5), 0, FIELDS,
                       options=OptimizerOptions(dense_l2="none"))
    assert [pg["weight_decay"] for pg in off.dense.param_groups] == [0.0]


def test_dense_state_round_trips_and_its_structure_depends_on_names_only():
    """As ctr.train.checkpoint saves it (torch.save, weights_only load): a resumed optimizer
    continues exactly. λ equal to the cross's 1e-5 still gives separate groups, so the layout
    never depends on hyperparameter values; a load keeps this run's L2."""
    gen = torch.Generator().manual_seed(2)
    a = small_model("dcn")
    b = copy.deepcopy(a)
    hp = Hyperparams(1e-3, 1e-4, l2=1e-5, warmup_epochs=1)
    opt_a = CTROptimizer(dense_parameters(a), [], hp, 3, FIELDS)
    params_a, params_b = list(dense_parameters(a).values()), list(dense_parameters(b).values())
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in params_a] for _ in range(5)]

    def step(opt, params, gs):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step(torch.zeros(1, len(FIELDS), dtype=torch.int32))

    for gs in grads[:3]:
        step(opt_a, params_a, gs)
    buf = io.BytesIO()
    torch.save(opt_a.dense_state_dict(), buf)
    with torch.no_grad():
        for p, q in zip(params_b, params_a):
            p.copy_(q)
    opt_b = CTROptimizer(dense_parameters(b), [], hp, 3, FIELDS)
    assert len(opt_b.dense.param_groups) == 3        # none, linear, cross
    opt_b.load_dense_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    opt_b.step_count = opt_a.step_count
    for gs in grads[3:]:
        step(opt_a, params_a, gs)
        step(opt_b, params_b, gs)
    for p, q in zip(params_a, params_b):
        assert torch.equal(p, q)
    other = CTROptimizer(dense_parameters(copy.deepcopy(a)), [], hp.replace(l2=2e-5), 3, FIELDS)
    other.load_dense_state_dict(opt_a.dense_state_dict())
    assert [pg["weight_decay"] for pg in other.dense.param_groups] == [0.0, 4e-5, 2 * CROSS_L2]
    with pytest.raises(ValueError):                  # ctr.train.checkpoint: CheckpointError
        CTROptimizer(dense_parameters(b), [], hp, 3, FIELDS, options=OptimizerOptions(
            dense_l2="none")).load_dense_state_dict(opt_a.dense_state_dict())


# ---------------------------------------------------------------- 1-4: defaults and options


@pytest.mark.parametrize("model", ["deepfm", "dcn", "dcnv2", "wd"])
def test_configs_default_to_the_reference(model):
    """criteo / avazu: every reference detail. synthetic: the same except Algorithm 1's
    lower bound, under which the CPU sweep presets' r, zeta scaling keeps the clip level."""
    for dataset in ("criteo", "avazu"):
        assert load_config(model, dataset).optimizer_options() == OptimizerOptions()
    synth = load_config(model, "synthetic").optimizer_options()
    assert synth == OptimizerOptions(lower_bound="paper")
    assert TrainConfig().optimizer_options() == OptimizerOptions()
    assert OptimizerOptions() == OptimizerOptions("reference", "keras", 1e-7, "reference", "reference")


def test_options_are_settable_and_checked():
    old = {"cowclip_lower_bound": "paper", "adam_epsilon_form": "torch", "adam_epsilon": "1e-8",
           "dense_l2": "none", "warmup_form": "linear"}
    cfg = load_config("deepfm", "criteo", overrides=old)
    assert cfg.optimizer_options() == OptimizerOptions("paper", "torch", 1e-8, "none", "linear")
    assert cfg.adam_epsilon == 1e-8
    for key, bad in (("adam_epsilon_form", "tf"), ("adam_epsilon", 0), ("dense_l2", "all"),
                     ("warmup_form", "cosine"), ("cowclip_lower_bound", "other")):
        with pytest.raises(ConfigError, match=key.replace("cowclip_", "")):
            load_config("deepfm", "criteo", overrides={key: bad})


# ---------------------------------------------------------------- 4: warm-up


def keras_polynomial_decay(step, initial, decay_steps, end, power=1.0):
    """tf.keras.optimizers.schedules.PolynomialDecay (cycle=False)."""
    p = min(step, decay_steps) / decay_steps
    return (initial - end) * (1 - p) ** power + end


def test_warmup_is_keras_polynomial_decay_from_1e8():
    hp = Hyperparams(8e-4, 1e-4, 0.0, 1, True)
    opt = CTROptimizer({"w": torch.nn.Parameter(torch.zeros(1))}, [], hp, 4, FIELDS)
    got = [opt.dense_lr(t) for t in range(7)]
    assert got == pytest.approx([keras_polynomial_decay(t, 1e-8, 4, 8e-4) for t in range(7)], rel=1e-12)
    assert got[0] == pytest.approx(1e-8) and got[4:] == [8e-4] * 3
    assert CTROptimizer({"w": torch.nn.Parameter(torch.zeros(1))}, [], hp, 0, FIELDS).dense_lr(0) == 8e-4


@pytest.mark.parametrize("epochs,rows,batch,spe,reference,linear", [
    (1.0, 10_000, 3_000, 4, 3, 4),        # reference: full batches only, int(N / B) = 3
    (0.5, 10_000, 3_000, 4, 1, 2),        # int(0.5 * 3) = 1; round(0.5 * 4) = 2
    (0.1, 900_000, 1024, 879, 87, 88),    # the CPU preset's top cell: int(0.1 * 878)
    (1.0, 9_000, 3_000, 3, 3, 3),
])
def test_warmup_steps(epochs, rows, batch, spe, reference, linear):
    assert CTROptimizer.warmup_steps_for(epochs, rows, batch, spe) == reference
    assert CTROptimizer.warmup_steps_for(epochs, rows, batch, spe, "linear") == linear


# ---------------------------------------------------------------- 5: Avazu hour


def test_avazu_hour_raw_by_default(tmp_path):
    """The reference label-encodes the YYMMDDHH value as it is: 22 fields, no weekday."""
    rows = avazu_rows(300, seed=5)
    f = write_text(tmp_path / "train.csv", rows, ",", header=AVAZU_COLUMNS)
    assert not detect_format(f).avazu_hour
    meta = run([f], tmp_path / "out", split="sequential:1")
    assert meta["sparse_fields"] == AVAZU_COLUMNS[2:] and len(meta["sparse_fields"]) == 22
    assert meta["sources"][0]["avazu_hour"] == "raw"
    raw = pd.DataFrame(rows, columns=AVAZU_COLUMNS)["hour"]
    ids = read_split(tmp_path / "out", "train")["hour"]
    assert meta["vocab_sizes"]["hour"] == raw.nunique() + 1
    assert (ids.groupby(raw).nunique() == 1).all() and ids.nunique() == raw.nunique()
    split = run([f], tmp_path / "split", split="sequential:1", avazu_hour="split")
    assert split["sparse_fields"] == AVAZU_COLUMNS[2:] + ["weekday"]
    assert split["sources"][0]["avazu_hour"] == "split"
    with pytest.raises(ValueError, match="avazu_hour"):
        detect_format(f, avazu_hour="hh")


def test_avazu_hour_on_the_real_sample(tmp_path, shared_data):
    path = shared_data / "Lapis-Hong__Wide-ResDNN/data/avazu/train"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    hours = pd.read_csv(path, dtype=str)["hour"]
    meta = run([path], tmp_path / "raw")
    assert len(meta["sparse_fields"]) == 22 and "weekday" not in meta["sparse_fields"]
    assert meta["vocab_sizes"]["hour"] == hours.nunique() + 1
    split = run([path], tmp_path / "split", avazu_hour="split")
    assert len(split["sparse_fields"]) == 23 and split["vocab_sizes"]["weekday"] == 2


# ---------------------------------------------------------------- 6: the loss


def keras_bce(logits):
    """The reference's loss: DeepCTR's sigmoid output (then a reshape, so Keras does not
    recover the logits) into Keras' binary_crossentropy, which clips to [1e-7, 1 - 1e-7]
    and adds 1e-7 inside the logs (TF 2.4 ``backend.binary_crossentropy``)."""
    p = torch.sigmoid(logits).clamp(1e-7, 1 - 1e-7)
    return lambda y: -(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7))


def test_logit_loss_equals_the_references_clipped_loss_on_realistic_logits():
    """Why ctr keeps BCE on logits: on CTR-like logits (here N(-1.5, 1.5²), |z| < 9) the mean
    loss and its gradient agree with the reference's clipped-probability loss to float32
    rounding (measured: 5e-7 and 1e-6 relative). They differ only past |z| ≈ 16, where the
    reference's clip zeroes the gradient: a confidently wrong prediction there would never be
    corrected, an artefact of the clip rather than a choice of the paper."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, generator=gen) * 1.5 - 1.5
    y = torch.bernoulli(torch.sigmoid(z), generator=gen)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = F.binary_cross_entropy_with_logits(za, y)
    ref = keras_bce(zb)(y).mean()
    ours.backward()
    ref.backward()
    assert float((ours - ref).abs().detach() / ours.detach()) < 5e-6
    assert float((za.grad - zb.grad).norm() / za.grad.norm()) < 1e-5
    far_ref, far_ours = torch.tensor([20.0], requires_grad=True), torch.tensor([20.0], requires_grad=True)
    keras_bce(far_ref)(torch.zeros(1)).sum().backward()       # p = 1 in float32, label 0
    F.binary_cross_entropy_with_logits(far_ours, torch.zeros(1)).backward()
    assert far_ref.grad.item() == 0.0 and far_ours.grad.item() == pytest.approx(1.0)


# ---------------------------------------------------------------- 8: optimizer state device


def test_sparse_state_is_created_on_the_weights_device():
    """torch's fused CUDA Adam wants its 'step' on the parameter's device; 'meta' stands in
    for a GPU here (the state made by ensure_sparse_state must follow the weight)."""
    w = torch.nn.Parameter(torch.empty(8, device="meta"))
    g = FusedGroup(w, 4, [TableShard("emb_A", "A", "embedding", 2, 4, 0, 2, 0, False)])
    opt = CTROptimizer({"b": torch.nn.Parameter(torch.zeros(1))}, [g], Hyperparams(1e-3, 1e-3), 0, ["A"])
    opt.ensure_sparse_state()
    st = opt.sparse_state_of(g)
    assert {k: v.device.type for k, v in st.items()} == {"step": "meta", "exp_avg": "meta",
                                                          "exp_avg_sq": "meta"}


@pytest.mark.device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sparse_state_on_cuda_steps_with_fused_adam():
    w = torch.nn.Parameter(torch.randn(8, device="cuda") * 1e-2)
    g = FusedGroup(w, 4, [TableShard("emb_A", "A", "embedding", 2, 4, 0, 2, 0, False)])
    opt = CTROptimizer({"b": torch.nn.Parameter(torch.zeros(1, device="cuda"))}, [g],
                       Hyperparams(1e-3, 1e-3, cowclip=True), 0, ["A"])
    opt.ensure_sparse_state()
    assert opt.sparse_state_of(g)["step"].device == w.device
    w.grad = torch.randn_like(w)
    opt.step(torch.zeros(3, 1, dtype=torch.int32, device="cuda"))
    assert int(opt.sparse_state_of(g)["step"].item()) == 1
