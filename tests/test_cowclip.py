"""CowClip kernel against a brute-force loop written straight from Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from ctr.optim.cowclip import (
    LOWER_BOUNDS,
    CowClipConfig,
    count_ids,
    cowclip_,
    cowclip_sparse_,
    cowclip_threshold,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-15), torch.float32: dict(rtol=2e-6, atol=1e-9)}


# ----------------------------------------------------------------------------------------
# the brute-force reference: Python loops over ids and rows, Python floats
# ----------------------------------------------------------------------------------------

def brute_force(grad, weight, ids, r, zeta, lower_bound, row_offset=0):
    """Algorithm 1 for one table (or a row-wise shard starting at row_offset).

    Returns (clipped grad as nested lists, per-row scale list)."""
    G = grad.double().tolist()
    W = weight.double().tolist()
    id_list = [int(x) for x in ids.tolist()]
    d = len(G[0]) if G else 0
    out, scales = [], []
    for k, (g, w) in enumerate(zip(G, W)):
        row_id = row_offset + k
        cnt = 0
        for x in id_list:                          # samples of the batch containing the id
            if x == row_id:
                cnt += 1
        if cnt == 0:                               # absent from the batch: cnt = 1
            cnt = 1
        w_norm = math.sqrt(sum(v * v for v in w))
        g_norm = math.sqrt(sum(v * v for v in g))
        if lower_bound == "paper":
            clip = cnt * max(r * w_norm, zeta)
        else:                                      # LargeBatchCTR: per-element bound
            clip = r * cnt * max(w_norm, r * math.sqrt(d) * zeta)
        if g_norm == 0:                            # a zero gradient stays zero
            out.append(list(g))
            scales.append(1.0)
            continue
        s = min(clip, g_norm) / g_norm
        out.append([v * s for v in g])
        scales.append(s)
    return out, scales


def reference_code(grad, weight, ids, ratio, bound):
    """A line-by-line torch transcription of bytedance/LargeBatchCTR (train.py + clip.py).

    train.py:  lower_bound = clip * sqrt(embed_dim) * bound;  uniq, _, cnt = unique_with_counts
    clip.py:   clipnorm = max(norm(w), min_w); cnts = scatter(ones, ids, cnt); clipnorm *= cnts
               clip_t = ratio * clipnorm; l2 = sum(g*g) (0 -> 1); g * clip_t / max(sqrt(l2), clip_t)
    """
    d = weight.shape[1]
    min_w = ratio * math.sqrt(d) * bound
    uniq, cnt = torch.unique(ids, return_counts=True)
    clipnorm = torch.clamp_min(torch.linalg.vector_norm(weight, dim=-1), min_w)
    cnts = torch.ones(weight.shape[0], dtype=torch.int64).scatter(0, uniq, cnt)
    clipnorm = clipnorm * cnts.to(weight.dtype)
    clip_t = ratio * clipnorm
    l2sum = (grad * grad).sum(-1)
    l2sum_safe = torch.where(l2sum > 0, l2sum, torch.ones_like(l2sum))
    l2norm = torch.sqrt(l2sum_safe)
    return grad * clip_t.unsqueeze(-1) / torch.maximum(l2norm, clip_t).unsqueeze(-1)


def make_table(rows, d, batch, dtype, seed, *, id_range=None, zero_grad_rows=(),
               zero_weight_rows=()):
    """Random table + batch ids with duplicates and absent rows; gradients are drawn per row
    at several magnitudes so that both clipped and untouched rows occur."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, d, generator=gen, dtype=torch.float64) * 1e-2
    mag = 10.0 ** torch.randint(-6, 0, (rows, 1), generator=gen).double()
    grad = torch.randn(rows, d, generator=gen, dtype=torch.float64) * mag
    lo, hi = id_range if id_range else (0, rows)
    # a skewed draw: few ids very frequent (duplicates), many never drawn (absent)
    u = torch.rand(batch, generator=gen, dtype=torch.float64)
    ids = (lo + ((hi - lo) * u ** 3).long()).clamp_max(hi - 1)
    for i in zero_grad_rows:
        grad[i] = 0
    for i in zero_weight_rows:
        weight[i] = 0
    return grad.to(dtype), weight.to(dtype), ids


def check_against_brute(grad, weight, ids, r, zeta, lb, row_offset=0):
    expected, exp_scale = brute_force(grad, weight, ids, r, zeta, lb, row_offset)
    counts = count_ids(ids, grad.shape[0], row_offset)
    g = grad.clone()
    scale = cowclip_(g, weight, counts, r=r, zeta=zeta, lower_bound=lb)
    tol = TOL[grad.dtype]
    assert torch.isfinite(g).all() and torch.isfinite(scale).all()
    torch.testing.assert_close(g, torch.tensor(expected, dtype=grad.dtype).reshape(grad.shape),
                               **tol)
    torch.testing.assert_close(scale.double(), torch.tensor(exp_scale, dtype=torch.float64),
                               rtol=tol["rtol"] * 4, atol=tol["atol"])
    # the CPU path goes in blocks of rows: small blocks (and a ragged last one) give the same
    for block_rows in (1, 7):
        g2 = grad.clone()
        s2 = cowclip_(g2, weight, counts, r=r, zeta=zeta, lower_bound=lb, block_rows=block_rows)
        torch.testing.assert_close(g2, g, **TOL[grad.dtype])   # (gemv summation order)
        torch.testing.assert_close(s2, scale, **TOL[grad.dtype])
    return g, scale


# ----------------------------------------------------------------------------------------
# count_ids
# ----------------------------------------------------------------------------------------

def test_count_ids_duplicates_absent_and_shard():
    ids = torch.tensor([3, 1, 3, 3, 0, 9, 7, 1])
    assert count_ids(ids, 10).tolist() == [1, 2, 0, 3, 0, 0, 0, 1, 0, 1]
    # a row-wise shard holding rows [3, 8): 9, 0 and 1 are someone else's
    assert count_ids(ids, 5, row_offset=3).tolist() == [3, 0, 0, 0, 1]
    assert count_ids(ids, 3, row_offset=20).tolist() == [0, 0, 0]
    assert count_ids(ids[:0], 4).tolist() == [0, 0, 0, 0]
    assert count_ids(ids, 0).shape == (0,)
    assert count_ids(ids.int(), 10).tolist() == count_ids(ids, 10).tolist()
    assert count_ids(ids.view(2, 4), 10).tolist() == count_ids(ids, 10).tolist()
    assert count_ids(ids, 10).dtype == torch.int64


def test_count_ids_matches_loop_random():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 500, (4096,), generator=gen)
    for offset, rows in [(0, 500), (0, 100), (120, 77), (450, 100)]:
        got = count_ids(ids, rows, offset).tolist()
        want = [sum(1 for x in ids.tolist() if x == offset + k) for k in range(rows)]
        assert got == want


def test_count_ids_rejects_bad_input():
    with pytest.raises(TypeError):
        count_ids(torch.tensor([1.0, 2.0]), 4)
    with pytest.raises(ValueError):
        count_ids(torch.tensor([1]), -1)


# ----------------------------------------------------------------------------------------
# cowclip_ against the brute force
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("r,zeta", [(1.0, 1e-5), (1.0, 1e-3), (0.5, 2e-4), (2.0, 0.0)])
def test_single_table_matches_brute_force(dtype, lb, r, zeta):
    grad, weight, ids = make_table(300, 10, 1024, dtype, seed=11,
                                   zero_grad_rows=(0, 5, 17), zero_weight_rows=(0, 1, 2, 40))
    g, scale = check_against_brute(grad, weight, ids, r, zeta, lb)
    counts = count_ids(ids, 300)
    # the random draw exercises every case
    assert (counts == 0).any() and (counts > 1).any()
    assert (scale < 1).any() and (scale == 1).any()
    assert torch.equal(g[[0, 5, 17]], torch.zeros_like(g[[0, 5, 17]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lb", LOWER_BOUNDS)
def test_several_fields_of_different_sizes(dtype, lb):
    sizes, d, batch = [1, 7, 64, 1000], 8, 2048
    gen = torch.Generator().manual_seed(5)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in sizes], dim=1)
    for f, n in enumerate(sizes):
        grad, weight, _ = make_table(n, d, 1, dtype, seed=100 + f, zero_grad_rows=(0,) if n > 2 else ())
        check_against_brute(grad, weight, ids[:, f], 1.0, 1e-4, lb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lb", LOWER_BOUNDS)
def test_row_wise_shards_match_full_table(dtype, lb):
    rows, d = 257, 6
    grad, weight, ids = make_table(rows, d, 3000, dtype, seed=7, zero_grad_rows=(3, 200))
    full = grad.clone()
    full_scale = cowclip_(full, weight, count_ids(ids, rows), r=1.0, zeta=1e-5, lower_bound=lb)
    bounds = [0, 64, 65, 190, rows]                # uneven shards, one of a single row
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        # each shard sees the whole global batch's ids but owns only its rows
        shard_g = grad[lo:hi].clone()
        check_against_brute(shard_g, weight[lo:hi], ids, 1.0, 1e-5, lb, row_offset=lo)
        s = cowclip_(shard_g, weight[lo:hi], count_ids(ids, hi - lo, lo), r=1.0, zeta=1e-5,
                     lower_bound=lb)
        torch.testing.assert_close(shard_g, full[lo:hi], **TOL[dtype])
        torch.testing.assert_close(s, full_scale[lo:hi], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ratio,bound", [(1.0, 1e-5), (1.0, 1e-2), (0.7, 3e-3)])
def test_reference_lower_bound_is_largebatchctr(dtype, ratio, bound):
    grad, weight, ids = make_table(200, 10, 512, dtype, seed=21, zero_grad_rows=(1, 2),
                                   zero_weight_rows=(2, 3, 4))
    want = reference_code(grad, weight, ids, ratio, bound)
    g = grad.clone()
    cowclip_(g, weight, count_ids(ids, 200), r=ratio, zeta=bound, lower_bound="reference")
    torch.testing.assert_close(g, want, **TOL[dtype])


def test_paper_and_reference_bounds_differ_where_expected():
    # a zero weight row: the floor decides. paper: cnt*zeta; reference: r*cnt*r*sqrt(d)*zeta
    d, zeta = 10, 1e-3
    weight = torch.zeros(2, d, dtype=torch.float64)
    weight[1] = 1.0                                 # a big row: floor irrelevant
    counts = torch.tensor([2, 3])
    thr_p = cowclip_threshold(weight, counts, r=0.5, zeta=zeta, lower_bound="paper")
    thr_r = cowclip_threshold(weight, counts, r=0.5, zeta=zeta, lower_bound="reference")
    assert thr_p[0].item() == pytest.approx(2 * zeta)
    assert thr_r[0].item() == pytest.approx(0.5 * 2 * 0.5 * math.sqrt(d) * zeta)
    assert thr_p[1].item() == pytest.approx(3 * 0.5 * math.sqrt(d))
    assert thr_r[1].item() == pytest.approx(thr_p[1].item())


def test_edge_cases_no_nan():
    d = 4
    weight = torch.zeros(4, d)
    weight[3] = 1.0
    grad = torch.zeros(4, d)
    grad[1] = 1.0       # zero weight, zeta = 0 -> threshold 0 -> clipped to zero
    grad[2] = 0.0       # zero weight and zero gradient: 0/0 guarded
    grad[3] = 1e-30     # tiny gradient, no overflow
    counts = torch.tensor([0, 5, 0, 1])
    g = grad.clone()
    scale = cowclip_(g, weight, counts, r=1.0, zeta=0.0)
    assert torch.isfinite(g).all() and torch.isfinite(scale).all()
    assert torch.equal(g[1], torch.zeros(d)) and scale[1].item() == 0.0
    assert torch.equal(g[2], torch.zeros(d)) and scale[2].item() == 1.0
    assert torch.equal(g[3], grad[3]) and scale[3].item() == 1.0
    # empty table
    e = torch.zeros(0, d)
    assert cowclip_(e, e.clone(), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_absent_row_counts_as_one():
    weight = torch.tensor([[3.0, 4.0]], dtype=torch.float64)   # ||w|| = 5
    grad = torch.tensor([[30.0, 40.0]], dtype=torch.float64)   # ||g|| = 50
    for counts, want in [(torch.tensor([0]), 0.1), (torch.tensor([1]), 0.1),
                         (torch.tensor([4]), 0.4), (torch.tensor([4.0]), 0.4),
                         (torch.tensor([20]), 1.0)]:
        g = grad.clone()
        scale = cowclip_(g, weight, counts, r=1.0, zeta=1e-5)
        assert scale.item() == pytest.approx(want)
        torch.testing.assert_close(g, grad * want)


def test_in_place_on_views_and_parameters():
    grad, weight, ids = make_table(50, 6, 200, torch.float64, seed=2)
    counts = count_ids(ids, 50)
    want = grad.clone()
    cowclip_(want, weight, counts)
    # a row-slice of a fused buffer and a column-strided view
    buf = torch.zeros(70, 6, dtype=torch.float64)
    buf[10:60] = grad
    cowclip_(buf[10:60], weight, counts)
    torch.testing.assert_close(buf[10:60], want, rtol=0, atol=0)
    assert torch.equal(buf[:10], torch.zeros(10, 6, dtype=torch.float64))
    wide = torch.zeros(50, 12, dtype=torch.float64)
    wide[:, ::2] = grad
    cowclip_(wide[:, ::2], weight, counts)
    torch.testing.assert_close(wide[:, ::2], want, rtol=1e-14, atol=0)
    # the weight may be a Parameter (requires_grad) and the grad its .grad
    p = torch.nn.Parameter(weight.clone())
    p.grad = grad.clone()
    cowclip_(p.grad, p, counts)
    torch.testing.assert_close(p.grad, want, rtol=0, atol=0)
    assert p.grad.grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients(dtype):
    grad, weight, ids = make_table(100, 8, 300, torch.float32, seed=9)
    counts = count_ids(ids, 100)
    want = grad.clone()
    cowclip_(want, weight, counts)
    g = grad.to(dtype)
    scale = cowclip_(g, weight.to(dtype), counts)
    assert scale.dtype == torch.float32
    torch.testing.assert_close(g.float(), want, rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_non_cpu_code_path(monkeypatch, dtype):
    """The CUDA code path (vector_norm, broadcast multiply, no scratch), exercised on CPU."""
    import ctr.optim.cowclip as cc
    grad, weight, ids = make_table(300, 10, 1024, torch.float64, seed=8, zero_grad_rows=(4,))
    grad, weight = grad.to(dtype), weight.to(dtype)
    counts = count_ids(ids, 300)
    for lb, zeta in [("paper", 1e-5), ("reference", 1e-5), ("paper", 0.0)]:
        want = grad.clone()
        want_scale = cowclip_(want, weight, counts, zeta=zeta, lower_bound=lb)
        monkeypatch.setattr(cc, "_gemv_path", lambda device: False)
        for block_rows in (None, 7):
            g = grad.clone()
            scale = cowclip_(g, weight, counts, zeta=zeta, lower_bound=lb, block_rows=block_rows)
            tol = TOL.get(dtype, dict(rtol=1e-3, atol=1e-6))
            torch.testing.assert_close(g, want, **tol)
            torch.testing.assert_close(scale, want_scale, **tol)
        monkeypatch.undo()


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    grad, weight, ids = make_table(128, 10, 512, torch.float32, seed=4)
    want = grad.clone()
    cowclip_(want, weight, count_ids(ids, 128))
    g = grad.to(device)
    scale = cowclip_(g, weight.to(device), count_ids(ids.to(device), 128))
    assert g.device.type == device and scale.device.type == device
    torch.testing.assert_close(g.cpu(), want)


def test_shape_and_parameter_validation():
    g = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        cowclip_(g, torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError):
        cowclip_(g, torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError):
        cowclip_(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        cowclip_(g, g.clone(), torch.zeros(3), lower_bound="nope")
    with pytest.raises(ValueError):
        cowclip_(g, g.clone(), torch.zeros(3), r=0.0)
    with pytest.raises(ValueError):
        cowclip_(g, g.clone(), torch.zeros(3), zeta=-1.0)
    with pytest.raises(ValueError):
        cowclip_(g, g.clone(), torch.zeros(3), block_rows=0)


def test_config():
    cfg = CowClipConfig(enabled=True, r="1", zeta="1e-5", lower_bound="reference")
    assert cfg.r == 1.0 and cfg.zeta == 1e-5
    assert cfg.kwargs() == {"r": 1.0, "zeta": 1e-5, "lower_bound": "reference"}
    with pytest.raises(ValueError):
        CowClipConfig(lower_bound="other")
    with pytest.raises(ValueError):
        CowClipConfig(r=-1)


# ----------------------------------------------------------------------------------------
# the sparse fast path
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("offset", [0, 40])
def test_sparse_matches_full_when_absent_rows_only_have_l2(lb, offset):
    rows, d, lam = 120, 10, 1.28e-3                 # the largest published L2 (Criteo 128K)
    grad, weight, _ = make_table(rows, d, 1, torch.float64, seed=13, zero_weight_rows=(5,))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (400,), generator=gen)     # global ids; this shard: offset..
    present = count_ids(ids, rows, offset) > 0
    assert (~present).any() and present.any()
    grad[~present] = 0                              # data gradient only where present ...
    grad += 2 * lam * weight                        # ... plus the whole-table L2
    full = grad.clone()
    cowclip_(full, weight, count_ids(ids, rows, offset), r=1.0, zeta=1e-5, lower_bound=lb)
    sparse = grad.clone()
    rows_hit, scale = cowclip_sparse_(sparse, weight, ids, r=1.0, zeta=1e-5, lower_bound=lb,
                                      row_offset=offset)
    assert torch.equal(rows_hit, present.nonzero().squeeze(1))
    torch.testing.assert_close(sparse, full, rtol=1e-14, atol=0)
    assert torch.equal(sparse[~present], grad[~present])     # absent rows untouched
