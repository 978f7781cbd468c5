"""CTROptimizer's fast step (fused groups, L2 folded into Adam, CowClip on present rows only)
against a brute-force step written straight from Algorithm 1: loop over rows, explicit
whole-table L2, full-table clip with cnt = 1 for absent rows, plain Adam in Keras' or torch's
epsilon form, either lower bound."""

import math

import pytest
import torch

from ctr.distributed.shards import FusedGroup, TableShard
from ctr.models.row_grad import TOUCHED_ROWS_ENV
from ctr.optim.optimizer import CTROptimizer
from ctr.optim.options import OptimizerOptions
from ctr.optim.scaling import Hyperparams
from tests.conftest import DEVICE

FIELDS = ["A", "B", "C"]
DIM = 4


def make_groups(seed=0, device="cpu"):
    """Group 0: tables A (7 rows) and B (5 rows) whole; group 1: rows 10..19 of table C (30 rows),
    as a row-wise shard; group 2: first-order tables (never clipped). Drawn on the CPU, then
    placed on ``device``."""
    g = torch.Generator().manual_seed(seed)

    def param(n):
        return torch.nn.Parameter((torch.randn(n, generator=g) * 1e-3).to(device))
    emb = FusedGroup(param(12 * DIM), DIM, [
        TableShard("emb_A", "A", "embedding", 7, DIM, 0, 7, 0, False),
        TableShard("emb_B", "B", "embedding", 5, DIM, 0, 5, 7, False)])
    rw = FusedGroup(param(10 * DIM), DIM, [
        TableShard("emb_C", "C", "embedding", 30, DIM, 10, 10, 0, False)])
    lin = FusedGroup(param(12), 1, [
        TableShard("lin_A", "A", "linear", 7, 1, 0, 7, 0, False),
        TableShard("lin_B", "B", "linear", 5, 1, 0, 5, 7, False)])
    return [emb, rw, lin]


def brute_step(groups, grads, ids, hp, adam_state, t, opts):
    """Algorithm 1 (or the reference's floor) + whole-table L2 + Adam, one row at a time."""
    b1, b2, eps = 0.9, 0.999, opts.adam_epsilon
    pos = {f: i for i, f in enumerate(FIELDS)}
    for gi, g in enumerate(groups):
        w = g.weight.detach().view(-1, g.dim)
        grad = grads[gi].view(-1, g.dim).clone() + 2 * hp.l2 * w
        if hp.cowclip and g.kind == "embedding":
            for s in g.shards:
                for local in range(s.rows):
                    row = s.row_offset + local
                    cnt = int((ids[:, pos[s.field]] == row).sum()) or 1
                    fr = s.fused_row + local
                    wn = float(w[fr].norm())
                    if opts.lower_bound == "paper":
                        thr = cnt * max(hp.r * wn, hp.zeta)
                    else:   # LargeBatchCTR: r * cnt * max(||w||, r * sqrt(d) * zeta)
                        thr = hp.r * cnt * max(wn, hp.r * math.sqrt(g.dim) * hp.zeta)
                    gn = float(grad[fr].norm())
                    if gn > 0:
                        grad[fr] *= min(1.0, thr / gn)
        m, v = adam_state.setdefault(gi, (torch.zeros_like(w), torch.zeros_like(w)))
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        with torch.no_grad():
            if opts.adam_epsilon_form == "keras":   # epsilon hat: added before the bias correction
                w -= hp.embedding_lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
            else:
                mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                w -= hp.embedding_lr * mhat / (vhat.sqrt() + eps)


def absent_rows_get_no_data_gradient(groups, grads, ids):
    """As backward does: only rows of ids in the batch get a data gradient."""
    pos = {f: i for i, f in enumerate(FIELDS)}
    for g, gr in zip(groups, grads):
        view = gr.view(-1, g.dim)
        for s in g.shards:
            present = set(ids[:, pos[s.field]].tolist())
            for local in range(s.rows):
                if s.row_offset + local not in present:
                    view[s.fused_row + local] = 0


OPTIONS = {"reference": OptimizerOptions(),
           "paper-torch": OptimizerOptions(lower_bound="paper", adam_epsilon_form="torch",
                                           adam_epsilon=1e-8)}


@pytest.mark.device
@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("l2", [1e-5, 0.7])   # 0.7: 2λ > r, the full-table clip path
@pytest.mark.parametrize("cowclip", [True, False])
def test_fast_step_equals_brute_force(l2, cowclip, options):
    """The fast step on DEVICE (CTR_TEST_DEVICE), the brute-force one on the CPU."""
    opts = OPTIONS[options]
    # zeta 1e-3: the reference's floor sqrt(d)*zeta = 2e-3 binds on these ~2e-3-norm rows
    hp = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=l2, warmup_epochs=0, cowclip=cowclip,
                     r=1.0, zeta=1e-4 if options == "paper-torch" else 1e-3)
    fast, slow = make_groups(device=DEVICE), make_groups()
    dense = torch.nn.Parameter(torch.zeros(3, device=DEVICE))
    opt = CTROptimizer([dense], fast, hp, warmup_steps=0, sparse_fields=FIELDS, options=opts)
    gen = torch.Generator().manual_seed(1)
    state, clipped_any = {}, False
    for t in range(1, 4):
        ids = torch.stack([torch.randint(0, 7, (16,), generator=gen),
                           torch.randint(0, 5, (16,), generator=gen),
                           torch.randint(0, 30, (16,), generator=gen)], dim=1).to(torch.int32)
        ids[:6, 0] = 3  # a frequent id
        grads = [torch.randn(g.weight.shape, generator=gen) * 1e-2 for g in fast]
        grads[0].view(-1, DIM)[5] = 0  # a zero gradient row stays zero
        absent_rows_get_no_data_gradient(fast, grads, ids)
        opt.zero_grad()
        dense.grad = torch.zeros(3, device=DEVICE)
        for g, gr in zip(fast, grads):
            g.weight.grad = gr.to(DEVICE)
        opt.step(ids.to(DEVICE))
        clipped_any |= opt.last_clip_fraction > 0
        brute_step(slow, grads, ids, hp, state, t, opts)
        for a, b in zip(fast, slow):
            assert torch.allclose(a.weight.detach().cpu(), b.weight, atol=1e-6, rtol=1e-5)
    assert clipped_any == cowclip  # the test would notice a clip that never fires


@pytest.mark.parametrize("update", ["dense", "sparse"])
def test_full_gradient_groups_in_the_fixed_size_form_equal_the_exact_one(update, monkeypatch):
    """The torchrec backend's groups (a full ``weight.grad``) read their rows in the fixed-size
    form off the CPU (no host sync); forced here, the step equals the exact form's (to float32
    rounding: CowClip's gemv row norms), also at a step where the row-wise shard receives no id
    of the batch: its padding then points at row 0 and writes back what was there."""
    hp = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=1e-5, warmup_epochs=0, cowclip=True, r=1.0, zeta=1e-3)
    out = {}
    for form in ("exact", "fixed"):
        monkeypatch.setenv(TOUCHED_ROWS_ENV, form)
        groups = make_groups(device=DEVICE)
        dense = torch.nn.Parameter(torch.zeros(3, device=DEVICE))
        opt = CTROptimizer([dense], groups, hp, warmup_steps=0, sparse_fields=FIELDS,
                           options=OptimizerOptions(update=update))
        gen = torch.Generator().manual_seed(1)
        clipped = 0.0
        for t in range(4):
            ids = torch.stack([torch.randint(0, 7, (16,), generator=gen),
                               torch.randint(0, 5, (16,), generator=gen),
                               torch.randint(0, 30, (16,), generator=gen)], dim=1)
            if t == 2:
                ids[:, 2] %= 10          # C ids 0..9: none in the row-wise shard (rows 10..19)
            grads = [torch.randn(g.weight.shape, generator=gen) * 1e-2 for g in groups]
            absent_rows_get_no_data_gradient(groups, grads, ids)
            opt.zero_grad()
            dense.grad = torch.zeros(3, device=DEVICE)
            for g, gr in zip(groups, grads):
                g.weight.grad = gr.to(DEVICE)
            shard_before = groups[1].weight.detach().clone()
            opt.step(ids.to(DEVICE))
            clipped = max(clipped, opt.last_clip_fraction)
            if t == 2 and update == "sparse":     # a lazy step leaves an untouched shard alone
                assert torch.equal(groups[1].weight.detach(), shard_before)
        assert clipped > 0
        out[form] = [g.weight.detach().cpu().clone() for g in groups] + [
            opt.sparse_state_of(g)[k].cpu().clone() for g in groups for k in ("exp_avg", "exp_avg_sq")]
    for a, b in zip(out["exact"], out["fixed"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.device
def test_counts_cover_global_batch_and_ignore_other_shards():
    groups = make_groups(device=DEVICE)
    opt = CTROptimizer([torch.nn.Parameter(torch.zeros(1, device=DEVICE))], groups,
                       Hyperparams(1e-3, 1e-3, 0.0, 0, True, 1.0, 1e-5), 0, FIELDS)
    ids = torch.tensor([[1, 0, 9], [1, 4, 10], [6, 4, 19], [1, 2, 25]], dtype=torch.int32, device=DEVICE)
    c0 = opt._index[id(groups[0])].counts(ids)
    assert c0.tolist() == [0, 3, 0, 0, 0, 0, 1] + [1, 0, 1, 0, 2]
    c1 = opt._index[id(groups[1])].counts(ids)
    assert c1.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # rows 10 and 19; 9 and 25 elsewhere
    for g, full in ((groups[0], c0), (groups[1], c1)):   # both paths of present(): sort and histogram
        index = opt._index[id(g)]
        for total_rows in (index.total_rows, 10**6):
            index_rows = index.total_rows
            rows, cnt = index.present(ids) if total_rows == index_rows else _present_sorted(index, ids)
            assert rows.tolist() == full.nonzero().flatten().tolist()
            assert cnt.tolist() == full[full > 0].tolist()


def _present_sorted(index, ids):
    """present() forced onto its sorting path by pretending the group is huge."""
    saved = index.total_rows
    try:
        pos = index._positions(ids)
        rows, cnt = torch.unique(pos, return_counts=True)
        keep = rows < saved
        return rows[keep], cnt[keep]
    finally:
        index.total_rows = saved


def test_dense_warmup_linear():
    """ctr's earlier warm-up (the default, the reference's, is in test_reference_details.py)."""
    opt = CTROptimizer([torch.nn.Parameter(torch.zeros(1))], [],
                       Hyperparams(8e-4, 1e-4, 0.0, 1, True, 1.0, 1e-5), warmup_steps=4,
                       sparse_fields=FIELDS, options=OptimizerOptions(warmup_form="linear"))
    assert [opt.dense_lr(t) for t in range(6)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 8e-4, 8e-4])
    assert math.isclose(CTROptimizer([torch.nn.Parameter(torch.zeros(1))], [],
                                     Hyperparams(8e-4, 1e-4, 0.0, 0, True, 1.0, 1e-5), 0,
                                     FIELDS).dense_lr(0), 8e-4)
