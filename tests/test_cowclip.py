"""CowClip as training runs it -- ``CTROptimizer.clip_`` / ``step`` on fused groups, and the
``cowclip_`` kernel they call -- against brute-force loops written straight from Algorithm 1
(Python floats, one row at a time, counts over the whole global batch, cnt = 1 for absent rows,
the clip on the total gradient ``g + 2λw`` of the whole table)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ctr.distributed.shards import FusedGroup, TableShard
from ctr.optim.cowclip import LOWER_BOUNDS, cowclip_
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.options import OptimizerOptions
from ctr.optim.scaling import Hyperparams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: {"rtol": 1e-12, "atol": 1e-15}, torch.float32: {"rtol": 2e-6, "atol": 1e-9}}

FIELDS = ["A", "B", "C", "D"]
VOCAB = {"A": 40, "B": 1, "C": 200, "D": 9}
DIM = 6


# ----------------------------------------------------------------------------------------
# brute force: Algorithm 1 (or the reference's floor), one row at a time, Python floats
# ----------------------------------------------------------------------------------------

def clip_row(g, w, cnt, r, zeta, lower_bound):
    """One row: (clipped gradient, scale). ``cnt`` 0 (absent from the batch) counts as 1."""
    cnt = cnt or 1
    d = len(w)
    w_norm = math.sqrt(sum(v * v for v in w))
    g_norm = math.sqrt(sum(v * v for v in g))
    if lower_bound == "paper":
        thr = cnt * max(r * w_norm, zeta)
    else:                                          # LargeBatchCTR: per-element bound
        thr = r * cnt * max(w_norm, r * math.sqrt(d) * zeta)
    if g_norm == 0:                                # a zero gradient stays zero
        return list(g), 1.0
    s = min(thr, g_norm) / g_norm
    return [v * s for v in g], s


def loop_counts(ids, rows, row_offset=0):
    """Occurrences of ids ``row_offset .. row_offset + rows - 1`` in one field's global ids."""
    seen = Counter(int(x) for x in ids.reshape(-1).tolist())
    return torch.tensor([seen[row_offset + k] for k in range(rows)], dtype=torch.int64)


def brute_clip_group(group, data_grad, ids, hp, lower_bound):
    """What the optimizer must leave in ``weight.grad``: every row of every shard clipped on
    its total gradient ``g + 2λw`` with cnt counted over the global batch for the row's global
    id, handed back as ``clipped - 2λw``. Returns (grad [rows, d] float64, scale [rows])."""
    pos = {f: i for i, f in enumerate(FIELDS)}
    W = group.view().detach().double().tolist()
    G = data_grad.view(-1, group.dim).double().tolist()
    l2x2 = 2.0 * hp.l2
    out, scales = [None] * len(W), [1.0] * len(W)
    for s in group.shards:
        counts = Counter(int(x) for x in ids[:, pos[s.field]].tolist())
        for local in range(s.rows):
            k = s.fused_row + local
            w = W[k]
            total = [g + l2x2 * v for g, v in zip(G[k], w)]
            if group.kind == "embedding":
                total, scales[k] = clip_row(total, w, counts[s.row_offset + local], hp.r,
                                            hp.zeta, lower_bound)
            out[k] = [t - l2x2 * v for t, v in zip(total, w)]
    return torch.tensor(out, dtype=torch.float64), torch.tensor(scales, dtype=torch.float64)


def assert_rows_close(got, want, ref):
    """torch's float32 tolerance, relative to each row's magnitude (``ref``: that row's scale,
    e.g. |g| + |2λw|), so that rows of 1e-6 and of 1e-1 are held to the same precision."""
    s = ref.double().abs().amax(1, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    torch.testing.assert_close(got.double() / s, want.double() / s, rtol=1.3e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------
# fused groups built by hand, and the optimizer around them
# ----------------------------------------------------------------------------------------

def make_group(specs, dim=DIM, kind="embedding", seed=0, zero_weight_rows=(), vocab=VOCAB):
    """A fused buffer holding the shards ``specs`` = [(field, row_offset, rows)] end to end."""
    shards, at = [], 0
    for field, off, rows in specs:
        prefix = "emb" if kind == "embedding" else "lin"
        shards.append(TableShard(f"{prefix}_{field}", field, kind, vocab[field], dim, off, rows,
                                 at, False))
        at += rows
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(at, dim, generator=gen) * 1e-2
    w[list(zero_weight_rows)] = 0
    return FusedGroup(torch.nn.Parameter(w.flatten()), dim, shards)


def layout(seed=0):
    """Two embedding buffers as two ranks might hold them -- table C row-wise sharded
    ([0, 90) and [90, 200)), the others whole, several shards per buffer, a one-row table --
    and a first-order buffer (never clipped)."""
    g0 = make_group([("A", 0, 40), ("C", 0, 90), ("B", 0, 1)], seed=seed,
                    zero_weight_rows=(3, 50, 129))
    g1 = make_group([("C", 90, 110), ("D", 0, 9)], seed=seed + 1, zero_weight_rows=(7,))
    lin = make_group([("A", 0, 40), ("C", 0, 200)], dim=1, kind="linear", seed=seed + 2)
    return [g0, g1, lin]


def global_ids(batch, seed, fields=FIELDS):
    """Skewed draws: a few ids very frequent (cnt > 1), many never drawn (absent)."""
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for f in fields:
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        cols.append((VOCAB[f] * u ** 3).long().clamp_max(VOCAB[f] - 1))
    return torch.stack(cols, dim=1).to(torch.int32)


def present_mask(group, ids):
    pos = {f: i for i, f in enumerate(FIELDS)}
    mask = torch.zeros(group.rows, dtype=torch.bool)
    for s in group.shards:
        mask[s.fused_row: s.fused_row + s.rows] = loop_counts(ids[:, pos[s.field]], s.rows,
                                                              s.row_offset) > 0
    return mask


def data_gradients(groups, ids, seed, zero_rows=()):
    """As backward leaves them: a gradient only on rows present in the batch, at several
    magnitudes per row so that both clipped and untouched rows occur; ``zero_rows`` of the
    first group are present rows whose gradient is zero."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for g in groups:
        mag = 10.0 ** torch.randint(-5, 0, (g.rows, 1), generator=gen).float()
        gr = torch.randn(g.rows, g.dim, generator=gen) * mag
        gr[~present_mask(g, ids)] = 0
        grads.append(gr.flatten())
    for k in zero_rows:
        grads[0].view(-1, groups[0].dim)[k] = 0
    return grads


def optimizer(groups, hp, lower_bound):
    return CTROptimizer([torch.nn.Parameter(torch.zeros(1))], groups, hp, warmup_steps=0,
                        sparse_fields=FIELDS, options=OptimizerOptions(lower_bound=lower_bound))


def hparams(r=1.0, zeta=1e-5, l2=0.0, cowclip=True):
    return Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=l2, warmup_epochs=0, cowclip=cowclip,
                       r=r, zeta=zeta)


def run_clip(groups, grads, ids, hp, lower_bound):
    opt = optimizer(groups, hp, lower_bound)
    for g, gr in zip(groups, grads):
        g.weight.grad = gr.clone()
    opt.clip_(ids)
    return opt, [g.view(g.weight.grad) for g in groups]


# ----------------------------------------------------------------------------------------
# CTROptimizer.clip_ against the brute force
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("r,zeta,l2", [
    (1.0, 1e-5, 0.0),        # no L2: Algorithm 1 alone
    (1.0, 1e-3, 1e-3),       # a floor that binds on small rows; the largest published L2
    (0.5, 2e-4, 1e-3),
    (2.0, 0.0, 0.9),         # zeta = 0; 2λ = 1.8 <= r: still only present rows
    (1.0, 1e-5, 0.7),        # 2λ > r: the whole-table path
    (0.5, 2e-4, 0.3),        # 2λ > r with r != 1
])
def test_clip_matches_brute_force(lb, r, zeta, l2):
    groups = layout()
    ids = global_ids(256, seed=1)
    zero_rows = (3, 4, 45)   # present rows with zero gradient; row 3 also has zero weight
    grads = data_gradients(groups, ids, seed=2, zero_rows=zero_rows)
    hp = hparams(r, zeta, l2)
    opt, got = run_clip(groups, grads, ids, hp, lb)

    clipped = considered = 0
    absent_any = dup_any = False
    for g, gr, out in zip(groups, grads, got):
        want, scale = brute_clip_group(g, gr, ids, hp, lb)
        w = g.view().detach()
        assert torch.isfinite(out).all()
        assert_rows_close(out, want, gr.view(-1, g.dim).abs() + (2 * l2 * w).abs())
        present = present_mask(g, ids)
        absent_any |= bool((~present).any())
        if g.kind == "linear":   # first order: never clipped, not even looked at
            assert torch.equal(out, gr.view(-1, g.dim))
            continue
        pos = {f: i for i, f in enumerate(FIELDS)}
        dup_any |= any(bool((loop_counts(ids[:, pos[s.field]], s.rows, s.row_offset) > 1).any())
                       for s in g.shards)
        if 2 * l2 <= r:
            # the exactness argument: absent rows are never clipped by the full-table rule, so
            # leaving them alone (their data gradient is zero) is Algorithm 1 exactly
            assert (scale[~present] == 1).all()
            assert torch.equal(out[~present], torch.zeros_like(out[~present]))
            considered += int(present.sum())
        else:
            considered += g.rows
        clipped += int((scale < 1).sum())
    # a zero total gradient (zero data gradient, zero weight) stays exactly zero
    assert torch.equal(got[0][3], torch.zeros(DIM))
    if l2 == 0:
        for k in zero_rows:
            assert torch.equal(got[0][k], torch.zeros(DIM))
    # the draw exercises every case; the clip statistic counts what the brute force clips
    assert absent_any and dup_any and 0 < clipped < considered
    assert int(opt._last_clip[0]) == clipped and int(opt._last_clip[1]) == considered
    assert opt.last_clip_fraction == pytest.approx(clipped / considered)


def test_threshold_counts_samples_of_the_global_batch():
    """Hand-worked: ||w|| = 5, ||g|| = 50, so the scale is min(1, cnt * 5 / 50)."""
    g = make_group([("D", 0, 4)], dim=2)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([3.0, 4.0] * 4))
    grad = torch.tensor([30.0, 40.0] * 4)
    # row 0 once, row 1 four times, row 2 twenty times (> 10: not clipped), row 3 absent
    col = torch.tensor([0] + [1] * 4 + [2] * 20 + [5] * 3)
    ids = torch.zeros(len(col), len(FIELDS), dtype=torch.int32)
    ids[:, FIELDS.index("D")] = col
    for lb in LOWER_BOUNDS:
        _, (out,) = run_clip([g], [grad], ids, hparams(r=1.0, zeta=1e-5), lb)
        want = torch.tensor([[3.0, 4.0], [12.0, 16.0], [30.0, 40.0], [30.0, 40.0]])
        torch.testing.assert_close(out, want)   # row 3: absent, no data gradient in training


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
def test_absent_rows_count_as_one_on_the_whole_table_path(lb):
    """2λ > r: an absent row's gradient 2λw exceeds its threshold r||w|| (cnt = 1) and is
    clipped to r·w, so the optimizer hands back (r - 2λ)·w -- not the 0 that clipping only the
    present rows would leave."""
    r, l2 = 1.0, 0.7
    groups = layout()[:2]
    ids = global_ids(64, seed=3)
    grads = data_gradients(groups, ids, seed=4)
    opt, got = run_clip(groups, grads, ids, hparams(r=r, zeta=1e-5, l2=l2), lb)
    for g, out in zip(groups, got):
        absent = ~present_mask(g, ids)
        w = g.view().detach()[absent]
        assert absent.sum() > 10 and (w.norm(dim=1) > 0).any()
        assert_rows_close(out[absent], (r - 2 * l2) * w, w)
    assert int(opt._last_clip[1]) == sum(g.rows for g in groups)


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("l2", [1e-3, 0.5, 0.5 + 1e-3])
def test_present_rows_only_when_2l2_le_r(lb, l2):
    """At 2λ <= r (the boundary 2λ = r included) the optimizer clips only the present rows,
    which equals the brute force's whole-table clip; just above, it clips the whole table."""
    r = 1.0
    groups = layout()[:2]
    ids = global_ids(128, seed=5)
    grads = data_gradients(groups, ids, seed=6)
    hp = hparams(r=r, zeta=1e-5, l2=l2)
    opt, got = run_clip(groups, grads, ids, hp, lb)
    n_present = 0
    for g, gr, out in zip(groups, grads, got):
        want, scale = brute_clip_group(g, gr, ids, hp, lb)
        assert_rows_close(out, want, gr.view(-1, g.dim).abs() + (2 * l2 * g.view().detach()).abs())
        absent = ~present_mask(g, ids)
        n_present += int((~absent).sum())
        if 2 * l2 <= r:
            assert (scale[absent] == 1).all()
            assert torch.equal(out[absent], torch.zeros_like(out[absent]))
        else:
            assert (scale[absent] < 1).any() and (out[absent] != 0).any()
    whole = sum(g.rows for g in groups)
    assert int(opt._last_clip[1]) == (n_present if 2 * l2 <= r else whole)


def test_clip_is_on_the_gradient_including_l2():
    """||w|| = 1, r = 1, cnt = 1, 2λw = (0.3, 0.4). g = (0.6, 0.8) alone is at the threshold,
    but g + 2λw = (0.9, 1.2) is clipped to (0.6, 0.8), handed back as (0.3, 0.4); g = -(0.9, 1.2)
    alone would be clipped, but g + 2λw = -(0.6, 0.8) is not."""
    g = make_group([("D", 0, 3)], dim=2)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([0.6, 0.8] * 3))
    grad = torch.tensor([0.6, 0.8, -0.9, -1.2, 0.0, 0.0])
    ids = torch.zeros(3, len(FIELDS), dtype=torch.int32)
    ids[:, FIELDS.index("D")] = torch.tensor([0, 1, 2])
    for lb in LOWER_BOUNDS:
        _, (out,) = run_clip([g], [grad], ids, hparams(r=1.0, zeta=1e-5, l2=0.25), lb)
        torch.testing.assert_close(out, torch.tensor([[0.3, 0.4], [-0.9, -1.2], [0.0, 0.0]]))


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
def test_first_order_groups_never_clipped(lb):
    """Huge first-order gradients pass untouched; the clip statistic counts embedding rows only;
    a step with CowClip moves the linear weights exactly as a step without it."""
    groups = layout()
    lin = groups[2]
    ids = global_ids(32, seed=7)
    grads = data_gradients(groups, ids, seed=8)
    grads[2] = grads[2] * 1e6 + 1.0
    for l2 in (0.0, 1e-3, 0.7):
        opt, got = run_clip(groups, grads, ids, hparams(l2=l2), lb)
        assert torch.equal(got[2], grads[2].view(-1, 1))
        assert int(opt._last_clip[1]) <= groups[0].rows + groups[1].rows
    after = []
    for cowclip in (True, False):
        groups = layout()
        opt = optimizer(groups, hparams(l2=1e-3, cowclip=cowclip), lb)
        for g, gr in zip(groups, grads):
            g.weight.grad = gr.clone()
        opt.step(ids)
        after.append(groups[2].weight.detach().clone())
    assert torch.equal(after[0], after[1]) and not torch.equal(after[0], lin.weight.detach())


# ---------------------------------------------------------------- sharding: counts and offsets


def test_group_counts_match_a_loop_and_ignore_other_shards():
    """The optimizer's per-buffer counts against a loop, for every shard of every buffer, on
    both of ``present()``'s paths (sorting a small batch, a histogram for a large one)."""
    groups = layout()
    opt = optimizer(groups, hparams(), "paper")
    pos = {f: i for i, f in enumerate(FIELDS)}
    for batch in (2, 4096):
        ids = global_ids(batch, seed=batch)
        for g in groups[:2]:
            index = opt._index[id(g)]
            want = torch.cat([loop_counts(ids[:, pos[s.field]], s.rows, s.row_offset)
                              for s in g.shards])
            assert index.counts(ids).tolist() == want.tolist()
            assert index.counts(ids.long()).tolist() == want.tolist()
            rows, cnt = index.present(ids)
            assert rows.tolist() == want.nonzero().flatten().tolist()
            assert cnt.tolist() == want[want > 0].tolist()
    for g in groups[:2]:               # (present() sorts when batch * shards * 16 < rows)
        assert 2 * len(g.shards) * 16 < g.rows < 4096 * len(g.shards) * 16


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
def test_other_shards_ids_do_not_count(lb):
    """Adding ids that belong to C's other shard ([90, 200)) changes nothing in buffer 0."""
    groups = layout()
    ids = global_ids(64, seed=9)
    grads = data_gradients(groups, ids, seed=10)
    _, got = run_clip(groups, grads, ids, hparams(zeta=1e-3, l2=0.7), lb)
    more = ids.clone()
    more[:, FIELDS.index("C")] = torch.arange(90, 154, dtype=torch.int32)
    ids2 = torch.cat([ids, more])      # C's ids in buffer 0's rows are unchanged
    groups2 = layout()
    _, got2 = run_clip(groups2, grads, ids2, hparams(zeta=1e-3, l2=0.7), lb)
    c0 = slice(40, 130)                # C's rows [0, 90) in buffer 0
    assert torch.equal(got2[0][c0], got[0][c0])


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("l2", [1e-3, 0.7])
def test_row_wise_shards_equal_the_whole_table(lb, l2):
    """Table C split unevenly over four buffers (a shard of a single row, shards behind other
    tables) clips as the whole table in one buffer, which clips as the brute force."""
    whole = make_group([("C", 0, 200)], seed=11, zero_weight_rows=(2,))
    parts = [make_group([("A", 0, 40), ("C", 0, 64)], seed=12),
             make_group([("C", 64, 1)], seed=13),
             make_group([("D", 0, 9), ("C", 65, 85)], seed=14),
             make_group([("C", 150, 50)], seed=15)]
    ids = global_ids(512, seed=16)
    hp = hparams(r=1.0, zeta=1e-4, l2=l2)
    grads = data_gradients([whole] + parts, ids, seed=17)
    w_c, g_c = whole.view().detach(), grads[0].view(-1, DIM)
    for p, gr in zip(parts, grads[1:]):          # C's rows: the whole table's weights and grads
        for s in p.shards:
            if s.field == "C":
                with torch.no_grad():
                    p.view()[s.fused_row: s.fused_row + s.rows] = w_c[s.row_offset: s.row_offset + s.rows]
                gr.view(-1, DIM)[s.fused_row: s.fused_row + s.rows] = g_c[s.row_offset: s.row_offset + s.rows]
    _, got = run_clip([whole] + parts, grads, ids, hp, lb)
    want, _ = brute_clip_group(whole, grads[0], ids, hp, lb)
    ref = g_c.abs() + (2 * l2 * w_c).abs()
    assert_rows_close(got[0], want, ref)
    covered = 0
    for p, gr, out in zip(parts, grads[1:], got[1:]):
        want_p, _ = brute_clip_group(p, gr, ids, hp, lb)   # the other tables of the buffer
        assert_rows_close(out, want_p, gr.view(-1, DIM).abs() + (2 * l2 * p.view().detach()).abs())
        for s in p.shards:
            if s.field == "C":
                here = slice(s.fused_row, s.fused_row + s.rows)
                there = slice(s.row_offset, s.row_offset + s.rows)
                assert_rows_close(out[here], got[0][there], ref[there])
                covered += s.rows
    assert covered == 200


@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("l2", [1e-3, 0.7])
def test_step_applies_the_clipped_gradient(lb, l2):
    """``step`` with CowClip = ``clip_`` then Adam with weight decay 2λ: the same as a step
    without CowClip given the brute force's clipped gradients."""
    ids = global_ids(128, seed=18)
    groups, plain = layout(), layout()
    grads = data_gradients(groups, ids, seed=19)
    hp = hparams(r=1.0, zeta=1e-4, l2=l2)
    opt = optimizer(groups, hp, lb)
    ref = optimizer(plain, hparams(r=1.0, zeta=1e-4, l2=l2, cowclip=False), lb)
    for g, p, gr in zip(groups, plain, grads):
        g.weight.grad = gr.clone()
        p.weight.grad = brute_clip_group(p, gr, ids, hp, lb)[0].float().flatten()
    opt.step(ids)
    ref.step(ids)
    assert opt.last_clip_fraction > 0
    for g, p in zip(groups, plain):
        torch.testing.assert_close(g.weight.detach(), p.weight.detach())


# ----------------------------------------------------------------------------------------
# the cowclip_ kernel itself (any rows, any counts, dense gradients)
# ----------------------------------------------------------------------------------------

def reference_code(grad, weight, ids, ratio, bound):
    """A line-by-line torch transcription of bytedance/LargeBatchCTR (train.py + clip.py).

    train.py:  lower_bound = clip * sqrt(embed_dim) * bound;  uniq, _, cnt = unique_with_counts
    clip.py:   clipnorm = max(norm(w), min_w); cnts = scatter(ones, ids, cnt); clipnorm *= cnts
               clip_t = ratio * clipnorm; l2 = sum(g*g) (0 -> 1); g * clip_t / max(sqrt(l2), clip_t)
    """
    d = weight.shape[1]
    min_w = ratio * math.sqrt(d) * bound
    uniq, cnt = torch.unique(ids.long(), return_counts=True)
    clipnorm = torch.clamp_min(torch.linalg.vector_norm(weight, dim=-1), min_w)
    cnts = torch.ones(weight.shape[0], dtype=torch.int64).scatter(0, uniq, cnt)
    clipnorm = clipnorm * cnts.to(weight.dtype)
    clip_t = ratio * clipnorm
    l2sum = (grad * grad).sum(-1)
    l2sum_safe = torch.where(l2sum > 0, l2sum, torch.ones_like(l2sum))
    l2norm = torch.sqrt(l2sum_safe)
    return grad * clip_t.unsqueeze(-1) / torch.maximum(l2norm, clip_t).unsqueeze(-1)


def make_table(rows, d, batch, dtype, seed, *, zero_grad_rows=(), zero_weight_rows=()):
    """A random table with a dense gradient at several magnitudes per row, and one field's
    skewed batch ids (duplicates and absent rows)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, d, generator=gen, dtype=torch.float64) * 1e-2
    mag = 10.0 ** torch.randint(-6, 0, (rows, 1), generator=gen).double()
    grad = torch.randn(rows, d, generator=gen, dtype=torch.float64) * mag
    u = torch.rand(batch, generator=gen, dtype=torch.float64)
    ids = (rows * u ** 3).long().clamp_max(rows - 1)
    for i in zero_grad_rows:
        grad[i] = 0
    for i in zero_weight_rows:
        weight[i] = 0
    return grad.to(dtype), weight.to(dtype), ids


def check_kernel_against_brute(grad, weight, counts, r, zeta, lb):
    G, W = grad.double().tolist(), weight.double().tolist()
    rows = [clip_row(g, w, int(c), r, zeta, lb) for g, w, c in zip(G, W, counts.tolist())]
    expected = torch.tensor([x for x, _ in rows], dtype=grad.dtype).reshape(grad.shape)
    exp_scale = torch.tensor([s for _, s in rows], dtype=torch.float64)
    g = grad.clone()
    scale = cowclip_(g, weight, counts, r=r, zeta=zeta, lower_bound=lb)
    tol = TOL[grad.dtype]
    assert torch.isfinite(g).all() and torch.isfinite(scale).all()
    torch.testing.assert_close(g, expected, **tol)
    torch.testing.assert_close(scale.double(), exp_scale, rtol=tol["rtol"] * 4, atol=tol["atol"])
    # the CPU path goes in blocks of rows: small blocks (and a ragged last one) give the same
    for block_rows in (1, 7):
        g2 = grad.clone()
        s2 = cowclip_(g2, weight, counts, r=r, zeta=zeta, lower_bound=lb, block_rows=block_rows)
        torch.testing.assert_close(g2, g, **tol)     # (gemv summation order)
        torch.testing.assert_close(s2, scale, **tol)
    return g, scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lb", LOWER_BOUNDS)
@pytest.mark.parametrize("r,zeta", [(1.0, 1e-5), (1.0, 1e-3), (0.5, 2e-4), (2.0, 0.0)])
def test_kernel_matches_brute_force(dtype, lb, r, zeta):
    grad, weight, ids = make_table(300, 10, 1024, dtype, seed=11,
                                   zero_grad_rows=(0, 5, 17), zero_weight_rows=(0, 1, 2, 40))
    counts = loop_counts(ids, 300)
    g, scale = check_kernel_against_brute(grad, weight, counts, r, zeta, lb)
    assert (counts == 0).any() and (counts > 1).any()
    assert (scale < 1).any() and (scale == 1).any()
    assert torch.equal(g[[0, 5, 17]], torch.zeros_like(g[[0, 5, 17]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ratio,bound", [(1.0, 1e-5), (1.0, 1e-2), (0.7, 3e-3)])
def test_kernel_reference_bound_is_largebatchctr(dtype, ratio, bound):
    grad, weight, ids = make_table(200, 10, 512, dtype, seed=21, zero_grad_rows=(1, 2),
                                   zero_weight_rows=(2, 3, 4))
    want = reference_code(grad, weight, ids, ratio, bound)
    g = grad.clone()
    cowclip_(g, weight, loop_counts(ids, 200), r=ratio, zeta=bound, lower_bound="reference")
    torch.testing.assert_close(g, want, **TOL[dtype])


@pytest.mark.parametrize("ratio,bound,l2", [(1.0, 1e-5, 0.0), (1.0, 1e-2, 1e-3), (0.7, 3e-3, 0.3),
                                            (0.7, 3e-3, 0.7)])
def test_optimizer_reference_bound_is_largebatchctr(ratio, bound, l2):
    """The optimizer with lower_bound="reference" on one whole table: its total gradient
    ``g + 2λw`` is the reference code's clip of ``g + 2λw`` (whole table, cnt = 1 absent)."""
    g = make_group([("R", 0, 200)], dim=10, seed=22, zero_weight_rows=(2, 3, 4), vocab={"R": 200})
    gen = torch.Generator().manual_seed(23)
    col = (200 * torch.rand(512, generator=gen, dtype=torch.float64) ** 3).long()
    mag = 10.0 ** torch.randint(-5, 0, (200, 1), generator=gen).float()
    data = torch.randn(200, 10, generator=gen) * mag
    data[loop_counts(col, 200) == 0] = 0
    data[[1, 2]] = 0
    opt = CTROptimizer([torch.nn.Parameter(torch.zeros(1))], [g],
                       hparams(r=ratio, zeta=bound, l2=l2), 0, ["R"], OptimizerOptions())
    g.weight.grad = data.flatten().clone()
    opt.clip_(col.view(-1, 1))
    w = g.view().detach().double()
    total = data.double() + 2 * l2 * w
    got = g.view(g.weight.grad).double() + 2 * l2 * w
    assert_rows_close(got, reference_code(total, w, col, ratio, bound), total)
    assert opt.last_clip_fraction > 0


def test_paper_and_reference_bounds_differ_where_expected():
    """A zero weight row: the floor decides, paper cnt·ζ, reference r·cnt·r·√d·ζ; a big row:
    both cnt·r·||w||. Through the optimizer and the kernel alike (scale = thr / ||g||)."""
    d, zeta, r = 10, 1e-3, 0.5
    big = math.sqrt(d)                               # ||w|| of a row of ones
    want = {"paper": [2 * zeta, 3 * r * big], "reference": [r * 2 * r * big * zeta, 3 * r * big]}
    g = make_group([("D", 0, 2)], dim=d)
    with torch.no_grad():
        g.weight.zero_()
        g.view()[1] = 1.0
    grad = torch.full((2, d), 100.0)                 # ||g|| = 100·√d: clipped in both rows
    ids = torch.zeros(5, len(FIELDS), dtype=torch.int32)
    ids[:, FIELDS.index("D")] = torch.tensor([0, 0, 1, 1, 1])
    for lb in LOWER_BOUNDS:
        thr = torch.tensor(want[lb], dtype=torch.float64)
        _, (out,) = run_clip([g], [grad.flatten()], ids, hparams(r=r, zeta=zeta), lb)
        torch.testing.assert_close(out, (grad * (thr / (100 * big)).unsqueeze(1)).float())
        k = grad.double().clone()
        scale = cowclip_(k, g.view().detach().double(), torch.tensor([2, 3]), r=r, zeta=zeta,
                         lower_bound=lb)
        torch.testing.assert_close(scale, thr / (100 * big), rtol=1e-12, atol=0)
    assert want["paper"][0] != pytest.approx(want["reference"][0])


def test_kernel_absent_row_counts_as_one():
    weight = torch.tensor([[3.0, 4.0]], dtype=torch.float64)   # ||w|| = 5
    grad = torch.tensor([[30.0, 40.0]], dtype=torch.float64)   # ||g|| = 50
    for counts, want in [(torch.tensor([0]), 0.1), (torch.tensor([1]), 0.1),
                         (torch.tensor([4]), 0.4), (torch.tensor([4.0]), 0.4),
                         (torch.tensor([20]), 1.0)]:
        g = grad.clone()
        scale = cowclip_(g, weight, counts, r=1.0, zeta=1e-5)
        assert scale.item() == pytest.approx(want)
        torch.testing.assert_close(g, grad * want)


def test_kernel_edge_cases_no_nan():
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
    e = torch.zeros(0, d)                             # empty table
    assert cowclip_(e, e.clone(), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_kernel_in_place_on_views_and_parameters():
    grad, weight, ids = make_table(50, 6, 200, torch.float64, seed=2)
    counts = loop_counts(ids, 50)
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
def test_kernel_low_precision_gradients(dtype):
    grad, weight, ids = make_table(100, 8, 300, torch.float32, seed=9)
    counts = loop_counts(ids, 100)
    want = grad.clone()
    cowclip_(want, weight, counts)
    g = grad.to(dtype)
    scale = cowclip_(g, weight.to(dtype), counts)
    assert scale.dtype == torch.float32
    torch.testing.assert_close(g.float(), want, rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_kernel_non_cpu_code_path(monkeypatch, dtype):
    """The CUDA code path (vector_norm, broadcast multiply, no scratch), exercised on CPU."""
    import ctr.optim.cowclip as cc
    grad, weight, ids = make_table(300, 10, 1024, torch.float64, seed=8, zero_grad_rows=(4,))
    grad, weight = grad.to(dtype), weight.to(dtype)
    counts = loop_counts(ids, 300)
    for lb, zeta in [("paper", 1e-5), ("reference", 1e-5), ("paper", 0.0)]:
        want = grad.clone()
        want_scale = cowclip_(want, weight, counts, zeta=zeta, lower_bound=lb)
        monkeypatch.setattr(cc, "_gemv_path", lambda device: False)
        for block_rows in (None, 7):
            g = grad.clone()
            scale = cowclip_(g, weight, counts, zeta=zeta, lower_bound=lb, block_rows=block_rows)
            tol = TOL.get(dtype, {"rtol": 1e-3, "atol": 1e-6})
            torch.testing.assert_close(g, want, **tol)
            torch.testing.assert_close(scale, want_scale, **tol)
        monkeypatch.undo()


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_device_agnostic(device):
    grad, weight, ids = make_table(128, 10, 512, torch.float32, seed=4)
    counts = loop_counts(ids, 128)
    want = grad.clone()
    cowclip_(want, weight, counts)
    g = grad.to(device)
    scale = cowclip_(g, weight.to(device), counts.to(device))
    assert g.device.type == device and scale.device.type == device
    torch.testing.assert_close(g.cpu(), want)


def test_kernel_shape_and_parameter_validation():
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
