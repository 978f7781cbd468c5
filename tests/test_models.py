"""ctr.models: shapes, gradients, the FM / cross formulas, learning, init, parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

# These tests build the torchrec backend's models (the default); without TorchRec they skip, and
# tests/test_backends.py covers the torch backend's (on CTR_TEST_DEVICE too).
pytest.importorskip("torchrec")
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor  # noqa: E402
from torchrec.modules.embedding_configs import PoolingType  # noqa: E402

from ctr.models import MODELS, CTRModel, ModelConfig, SparseArch, build_model  # noqa: E402
from ctr.models.layers import (FM, MLP, MatrixCrossNet, MixtureCrossNet, VectorCrossNet,  # noqa: E402
                               glorot_normal_)

SPARSE = ["C0", "C1", "C2", "C3", "C4"]
DENSE = ["I0", "I1", "I2"]
VOCAB = {"C0": 50, "C1": 37, "C2": 61, "C3": 20, "C4": 45}

# (test id, model name, ModelConfig overrides); small widths keep the suite fast.
VARIANTS = [
    ("deepfm", "deepfm", {}),
    ("wd", "wd", {}),
    ("dcn", "dcn", {}),
    ("dcnv2", "dcnv2", {}),
    ("dcnv2-mix", "dcnv2", {"dcnv2_low_rank": 4, "dcnv2_experts": 3}),
]
SMALL = dict(embedding_dim=8, mlp=(32, 32))


def variant_params():
    return [pytest.param(name, over, id=vid) for vid, name, over in VARIANTS]


def make_kjt(ids: torch.Tensor, keys: list[str], dtype: torch.dtype = torch.int64) -> KeyedJaggedTensor:
    """[B, F] ids -> KJT, one id per sample per key, values key-major."""
    b, f = ids.shape
    return KeyedJaggedTensor(keys=keys, values=ids.t().reshape(-1).to(dtype),
                             lengths=torch.ones(b * f, dtype=torch.int32))


def random_batch(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, VOCAB[f], (b,), generator=g) for f in SPARSE], dim=1)
    return ids, torch.randn(b, len(DENSE), generator=g)


def small_model(name: str, seed: int = 0, **over) -> CTRModel:
    torch.manual_seed(seed)
    return build_model(name, DENSE, SPARSE, VOCAB, ModelConfig(**{**SMALL, **over}))


# ---------------------------------------------------------------------------------------
# contract: shapes, dtypes, tables, parameter groups, init
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,over", variant_params())
def test_output_is_logits_of_shape_b_for_int32_and_int64_ids(name, over):
    model = small_model(name, **over)
    ids, dense = random_batch(7)
    out64 = model(dense, make_kjt(ids, SPARSE, torch.int64))
    out32 = model(dense, make_kjt(ids, SPARSE, torch.int32))
    assert out64.shape == (7,) and out64.dtype == torch.float32
    assert torch.isfinite(out64).all()
    torch.testing.assert_close(out32, out64, rtol=0, atol=0)
    # logits, not probabilities: a sigmoid output could not leave [0, 1]
    big = model(dense * 50, make_kjt(ids, SPARSE))
    assert ((big < 0) | (big > 1)).any()


@pytest.mark.parametrize("name,over", variant_params())
def test_gradients_reach_every_parameter(name, over):
    model = small_model(name, **over)
    ids, dense = random_batch(64)
    labels = (torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    loss = nn.functional.binary_cross_entropy_with_logits(model(dense, make_kjt(ids, SPARSE)), labels)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert p.grad.abs().sum() > 0, f"{n} got a zero gradient"
    # the embedding tables get gradient exactly on the rows of the batch
    for f_idx, f in enumerate(SPARSE):
        for ebc in (model.sparse.embedding, model.sparse.linear):
            prefix = "emb_" if ebc is model.sparse.embedding else "lin_"
            grad = ebc.embedding_bags[prefix + f].weight.grad
            touched = grad.abs().sum(dim=1) > 0
            expect = torch.zeros(VOCAB[f], dtype=torch.bool)
            expect[ids[:, f_idx].unique()] = True
            assert torch.equal(touched, expect), f"{prefix}{f}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparse_arch_tables_follow_the_naming_contract(name):
    model = small_model(name)
    assert isinstance(model.sparse, SparseArch)
    for ebc, prefix, dim in ((model.sparse.embedding, "emb_", 8), (model.sparse.linear, "lin_", 1)):
        assert isinstance(ebc, EmbeddingBagCollection)
        cfgs = ebc.embedding_bag_configs()
        assert [c.name for c in cfgs] == [prefix + f for f in SPARSE]
        for c, f in zip(cfgs, SPARSE):
            assert c.feature_names == [f]
            assert c.embedding_dim == dim
            assert c.num_embeddings == VOCAB[f]
            assert c.pooling == PoolingType.SUM


def test_sparse_arch_looks_up_rows_and_sums_first_order_weights():
    torch.manual_seed(0)
    arch = SparseArch(SPARSE, VOCAB, embedding_dim=4)
    ids, _ = random_batch(6)
    emb, lin = arch(make_kjt(ids, SPARSE, torch.int32))
    assert emb.shape == (6, len(SPARSE), 4) and lin.shape == (6,)
    want_lin = torch.zeros(6)
    for j, f in enumerate(SPARSE):
        torch.testing.assert_close(emb[:, j], arch.embedding.embedding_bags[f"emb_{f}"].weight[ids[:, j]])
        want_lin += arch.linear.embedding_bags[f"lin_{f}"].weight[ids[:, j], 0]
    torch.testing.assert_close(lin, want_lin)
    no_lin = SparseArch(SPARSE, VOCAB, embedding_dim=4, with_linear=False)
    assert no_lin.linear is None and no_lin(make_kjt(ids, SPARSE))[1] is None


@pytest.mark.parametrize("name,over", variant_params())
def test_param_groups_split_all_parameters_without_overlap(name, over):
    model = small_model(name, **over)
    sparse, dense = model.sparse_parameters(), model.dense_parameters()
    tables = [b.weight for ebc in (model.sparse.embedding, model.sparse.linear)
              for b in ebc.embedding_bags.values()]
    assert {id(p) for p in sparse} == {id(p) for p in tables} and len(sparse) == len(tables)
    assert not {id(p) for p in sparse} & {id(p) for p in dense}
    assert {id(p) for p in sparse} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    assert len(sparse) + len(dense) == len(list(model.parameters()))
    dense_ids = {id(p) for p in dense}
    assert id(model.bias) in dense_ids and id(model.dense_linear.weight) in dense_ids


@pytest.mark.parametrize("name,over", variant_params())
def test_init_is_deterministic_under_a_seed(name, over):
    a, b, c = small_model(name, 3, **over), small_model(name, 3, **over), small_model(name, 4, **over)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].float().abs().sum() > 0)


def test_embedding_and_first_order_init_are_normal_with_init_std():
    torch.manual_seed(0)
    model = build_model("deepfm", DENSE, ["big"], {"big": 20000}, ModelConfig(init_std=0.05, mlp=(8,)))
    emb = model.sparse.embedding.embedding_bags["emb_big"].weight
    lin = model.sparse.linear.embedding_bags["lin_big"].weight
    for w in (emb, lin):
        assert abs(w.mean().item()) < 0.003
        assert w.std().item() == pytest.approx(0.05, rel=0.03)
    assert model.bias.item() == 0.0


def test_dense_layers_use_deepctr_init():
    torch.manual_seed(0)
    model = build_model("dcn", DENSE, SPARSE, VOCAB, ModelConfig(embedding_dim=8, mlp=(400, 300)))
    d = model.deep_input_dim
    first = model.dnn.layers[0]
    # glorot_normal: truncated at 2 std, kept values have std sqrt(2 / (fan_in + fan_out))
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / (d + 400)), rel=0.05)
    assert first.weight.abs().max() <= 2 * math.sqrt(2 / (d + 400)) / 0.8796 + 1e-6
    assert all((m.bias == 0).all() for m in model.dnn.layers if isinstance(m, nn.Linear))
    assert all((b == 0).all() for b in model.cross.bias)
    w = torch.empty(2000, 1000)
    glorot_normal_(w, 1000, 2000)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 3000), rel=0.02)


def test_dnn_init_defaults_to_glorot_normal_everywhere():
    assert ModelConfig().dnn_init == "glorot_normal"
    from ctr.train.config import load_config
    for dataset in ("criteo", "avazu", "synthetic"):
        for name in MODELS:
            assert load_config(name, dataset).model_settings().dnn_init == "glorot_normal", (dataset, name)
    # the default changes nothing: the same draws as a model built without the option
    torch.manual_seed(5)
    default = build_model("deepfm", DENSE, SPARSE, VOCAB, ModelConfig(**SMALL)).state_dict()
    torch.manual_seed(5)
    named = build_model("deepfm", DENSE, SPARSE, VOCAB, ModelConfig(**SMALL, dnn_init="glorot_normal"))
    assert all(torch.equal(default[k], v) for k, v in named.state_dict().items())


def test_dnn_init_torch_is_nn_linear_default_on_dense_layers_only():
    from ctr.models.layers import DNN_INITS
    from ctr.train.settings import SETTING
    assert SETTING["dnn_init"].choices == DNN_INITS and SETTING["dnn_init"].where == "model"
    mlp = (400, 300)
    torch.manual_seed(0)
    glorot = build_model("dcnv2", DENSE, SPARSE, VOCAB,
                         ModelConfig(embedding_dim=8, mlp=mlp, dcnv2_low_rank=4, dcnv2_experts=2))
    torch.manual_seed(0)
    tor = build_model("dcnv2", DENSE, SPARSE, VOCAB,
                      ModelConfig(embedding_dim=8, mlp=mlp, dcnv2_low_rank=4, dcnv2_experts=2, dnn_init="torch"))
    d = tor.deep_input_dim
    first_g, first_t = glorot.dnn.layers[0], tor.dnn.layers[0]
    # glorot: truncated normal, std sqrt(2 / (fan_in + fan_out)), zero bias;
    # torch: U(±1/sqrt(fan_in)) kernel (std 1/sqrt(3 fan_in)) and bias
    assert first_g.weight.std().item() == pytest.approx(math.sqrt(2 / (d + 400)), rel=0.05)
    assert first_t.weight.std().item() == pytest.approx(1 / math.sqrt(3 * d), rel=0.05)
    assert first_t.weight.abs().max() <= 1 / math.sqrt(d) + 1e-6
    assert (first_g.bias == 0).all() and (first_t.bias != 0).all()
    assert first_t.bias.abs().max() <= 1 / math.sqrt(d) + 1e-6
    second = tor.dnn.layers[2]
    assert second.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 400), rel=0.05)
    for layer, fan_in in ((tor.logit, tor.logit.in_features), (tor.dense_linear, len(DENSE))):
        assert layer.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-6
    assert not torch.equal(glorot.logit.weight, tor.logit.weight)
    # tables, cross network (kernels, gates) and the global bias keep their initialisation
    sg, st = glorot.state_dict(), tor.state_dict()
    kept = [k for k in st if k.startswith("sparse.") or k.startswith("cross.") or k == "bias"]
    assert any(k.startswith("cross.") for k in kept) and any("gates" in k for k in kept)
    assert all(torch.equal(sg[k], st[k]) for k in kept)
    with pytest.raises(ValueError, match="dnn_init"):
        build_model("deepfm", DENSE, SPARSE, VOCAB, ModelConfig(**SMALL, dnn_init="he"))


def test_build_model_rejects_unknown_names_and_empty_towers():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("xdeepfm", DENSE, SPARSE, VOCAB, ModelConfig())
    with pytest.raises(ValueError):
        build_model("dcn", DENSE, SPARSE, VOCAB, ModelConfig(mlp=(), cross_layers=0))


@pytest.mark.parametrize("name", ["dcn", "dcnv2"])
def test_cross_only_and_deep_only_variants(name):
    ids, dense = random_batch(5)
    cross_only = small_model(name, mlp=())
    deep_only = small_model(name, cross_layers=0)
    assert cross_only.dnn is None and deep_only.cross is None
    assert cross_only(dense, make_kjt(ids, SPARSE)).shape == (5,)
    assert deep_only(dense, make_kjt(ids, SPARSE)).shape == (5,)


def test_models_without_dense_features():
    torch.manual_seed(0)
    ids, _ = random_batch(5)
    for name in MODELS:
        model = build_model(name, [], SPARSE, VOCAB, ModelConfig(**SMALL))
        assert model.dense_linear is None
        assert model(torch.empty(5, 0), make_kjt(ids, SPARSE)).shape == (5,)


def test_dropout_follows_every_activation_and_is_off_in_eval():
    mlp = MLP(6, (5, 4), dropout=0.5)
    kinds = [type(m) for m in mlp.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout]
    model = small_model("deepfm", dropout=0.5).eval()
    ids, dense = random_batch(5)
    kjt = make_kjt(ids, SPARSE)
    torch.testing.assert_close(model(dense, kjt), model(dense, kjt))


# ---------------------------------------------------------------------------------------
# formulas: FM and the cross layers against hand computations
# ---------------------------------------------------------------------------------------

def test_fm_equals_pairwise_brute_force():
    emb = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = torch.zeros(4, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        want += (emb[:, i] * emb[:, j]).sum(dim=1)
    torch.testing.assert_close(FM()(emb), want)


def test_vector_cross_matches_hand_computation():
    net = VectorCrossNet(in_features=2, num_layers=2)
    with torch.no_grad():
        for w, b in zip(net.kernels, net.bias):
            w.copy_(torch.tensor([[1.0], [-1.0]]))
            b.copy_(torch.tensor([[0.5], [0.0]]))
    # x0 = [1, 2]; layer 1: x0.w = -1 -> x0*-1 + b + x0 = [0.5, 0]
    #               layer 2: x1.w = 0.5 -> x0*0.5 + b + x1 = [0.5+0.5+0.5, 1+0+0] = [1.5, 1]
    out = net(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.5, 1.0]]))


def test_matrix_cross_matches_hand_computation():
    net = MatrixCrossNet(in_features=2, num_layers=2)
    with torch.no_grad():
        for w, b in zip(net.kernels, net.bias):
            w.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
            b.copy_(torch.tensor([[0.5], [-1.0]]))
    # x0 = [1, 2]; layer 1: W x0 + b = [1.5, 3] -> x0 ⊙ . + x0 = [2.5, 8]
    #               layer 2: W x1 + b = [3, 12]  -> x0 ⊙ . + x1 = [5.5, 32]
    out = net(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[5.5, 32.0]]))


@pytest.mark.parametrize("experts", [1, 3])
def test_mixture_cross_matches_deepctr_crossnetmix_loops(experts):
    torch.manual_seed(0)
    n, r, layers = 4, 2, 2
    net = MixtureCrossNet(in_features=n, num_layers=layers, low_rank=r, num_experts=experts)
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
    x = torch.randn(3, n)
    out = net(x)
    # DeepCTR CrossNetMix.call, one sample and one expert at a time, V as DeepCTR's [N, r]
    for s in range(3):
        x0 = x[s]
        xl = x0.clone()
        for l in range(layers):
            gates = torch.stack([net.gates[k].weight[0] @ xl if experts > 1 else torch.tensor(0.0)
                                 for k in range(experts)])
            probs = torch.softmax(gates, 0)
            moe = torch.zeros(n)
            for k in range(experts):
                v_deepctr = net.V_kernels[l][k].t()                     # [N, r]
                v = torch.tanh(v_deepctr.t() @ xl)
                v = torch.tanh(net.C_kernels[l][k] @ v)
                expert = x0 * (net.U_kernels[l][k] @ v + net.bias[l][:, 0])
                moe = moe + probs[k] * expert
            xl = moe + xl
        torch.testing.assert_close(out[s], xl, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# learning: a planted logistic model with pairwise interactions
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    g = torch.Generator().manual_seed(1234)
    n, vocab = 20000, 50
    fields, dense_fields = [f"F{i}" for i in range(5)], ["D0", "D1", "D2"]
    ids = torch.randint(0, vocab, (n, 5), generator=g)
    dense = torch.randn(n, 3, generator=g)
    first = torch.randn(5, vocab, generator=g) * 0.5
    factors = torch.randn(5, vocab, 4, generator=g) * 0.5
    logit = sum(first[f, ids[:, f]] for f in range(5))
    for i, j in itertools.combinations(range(5), 2):
        logit = logit + (factors[i, ids[:, i]] * factors[j, ids[:, j]]).sum(1)
    logit = logit + dense @ torch.tensor([0.8, -0.6, 0.4]) + 0.5 * dense[:, 0] * dense[:, 1] - 0.5
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    split = 16000
    oracle = roc_auc_score(labels[split:].numpy(), logit[split:].numpy())
    return dict(ids=ids, dense=dense, labels=labels, split=split, fields=fields,
                dense_fields=dense_fields, vocab={f: vocab for f in fields}, oracle=oracle)


@pytest.mark.parametrize("name,over", variant_params())
def test_each_model_learns_a_planted_interaction_model(planted, name, over):
    assert planted["oracle"] > 0.8  # the planted signal is strong enough to demand 0.7
    torch.manual_seed(0)
    model = build_model(name, planted["dense_fields"], planted["fields"], planted["vocab"],
                        ModelConfig(embedding_dim=8, mlp=(64, 64), **over))
    opt = torch.optim.Adam([{"params": model.sparse_parameters(), "lr": 2e-2},
                            {"params": model.dense_parameters(), "lr": 3e-3}])
    ids, dense, labels, split = planted["ids"], planted["dense"], planted["labels"], planted["split"]
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        for idx in torch.randperm(split, generator=g).split(256):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(dense[idx], make_kjt(ids[idx], planted["fields"])), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = model(dense[split:], make_kjt(ids[split:], planted["fields"], torch.int32))
    auc = roc_auc_score(labels[split:].numpy(), scores.numpy())
    assert auc > 0.7, f"{name}: held-out AUC {auc:.3f} (oracle {planted['oracle']:.3f})"
