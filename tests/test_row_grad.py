"""The torch backend's row gradients (ctr.models.row_grad): the backward yields the touched rows
only, N ranks all-reduce those rows only, and the paper's dense step built on them gives the
numbers of the whole-table step (full ``F.embedding`` gradient + CTROptimizer), step after step,
at 1 and 2 ranks."""

from __future__ import annotations

import pytest
import torch

from ctr.data.dataset import read_meta
from ctr.distributed.env import DistEnv
from ctr.models.fused_sparse import FusedSparseArch
from ctr.models.row_grad import TOUCHED_ROWS_ENV, TouchedRows
from ctr.optim.scaling import Hyperparams
from tests.conftest import DEVICE
from tests.step_harness import Setup, run, run_ranks

FIELDS = ["A", "B", "C"]
VOCAB = {"A": 9, "B": 4, "C": 30}


def _ids(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, VOCAB[f], (b,), generator=g) for f in FIELDS], dim=1)


def _arch(row_grads: bool) -> FusedSparseArch:
    torch.manual_seed(0)
    arch = FusedSparseArch(FIELDS, VOCAB, 6).to(DEVICE)
    arch.use_row_grads(row_grads)
    return arch


@pytest.mark.device
def test_backward_yields_the_touched_rows_and_no_table_gradient():
    fast, plain = _arch(True), _arch(False)
    ids = _ids(40, 1).to(DEVICE)
    w = torch.randn(40, 3, 6, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    for arch in (fast, plain):
        emb, lin = arch(ids)
        ((emb * w).sum() + (lin ** 2).sum()).backward()
    for f, p in zip(fast.tables(), plain.tables()):
        assert f.weight.grad is None and f.row_grad is not None and p.weight.grad is not None
        touched = f.row_grad.touched
        expect = torch.unique(f.positions(ids))
        assert torch.equal(touched.rows, expect)                          # sorted, distinct
        assert torch.equal(touched.counts, torch.bincount(f.positions(ids).flatten())[expect])
        assert f.row_grad.values.shape == (expect.numel(), f.dim)
        full = p.weight.grad.index_select(0, expect)
        if DEVICE.type == "cpu":   # the same sums in the same order as F.embedding's backward
            assert torch.equal(f.row_grad.values, full)
        else:
            torch.testing.assert_close(f.row_grad.values, full)
        rest = torch.ones(p.weight.shape[0], dtype=torch.bool, device=DEVICE)
        rest[expect] = False
        assert (p.weight.grad[rest] == 0).all()                           # nothing lost elsewhere
    # both tables share one sort of the batch's ids
    assert fast.embedding.row_grad.touched is fast.linear.row_grad.touched


def test_lookups_without_grad_record_nothing_and_match_f_embedding():
    fast, plain = _arch(True), _arch(False)
    ids = _ids(10, 3).to(DEVICE)
    with torch.no_grad():
        a, b = fast(ids), plain(ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert fast.embedding.row_grad.values is None


def test_a_second_backward_through_other_ids_is_refused():
    arch = _arch(True)
    arch(_ids(8, 1))[0].sum().backward()
    with pytest.raises(RuntimeError, match="second backward"):
        arch(_ids(8, 2))[0].sum().backward()


def test_one_rank_global_rows_must_be_the_backwards():
    arch = _arch(True)
    ids = _ids(8, 1)
    arch(ids)[0].sum().backward()
    rg = arch.embedding.row_grad
    with pytest.raises(RuntimeError, match="sync_gradients"):
        rg.global_rows(torch.cat([ids, ids]))
    assert isinstance(rg.global_rows(ids), TouchedRows)


def _assert_same(result, exact: bool):
    fast, ref = result["fast"], result["ref"]
    assert fast.keys() == ref.keys()
    for k in fast:
        if exact:
            assert torch.equal(fast[k], ref[k]), (k, (fast[k] - ref[k]).abs().max())
        else:
            torch.testing.assert_close(fast[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


LARGE_L2 = Hyperparams(dense_lr=1e-3, embedding_lr=1e-2, l2=1e-2, warmup_epochs=0, cowclip=True,
                       r=1e-2, zeta=1e-5)   # 2λ > r: the full-table clip (absent rows clipped too)


@pytest.mark.device
@pytest.mark.parametrize("model,hp,form", [("deepfm", None, "exact"), ("dcnv2", None, "exact"),
                                           ("wd", LARGE_L2, "exact"), ("deepfm", None, "fixed"),
                                           ("wd", LARGE_L2, "fixed")],
                         ids=["deepfm", "dcnv2", "wd-full-table-clip", "deepfm-fixed-size-rows",
                              "wd-full-table-clip-fixed-size-rows"])
def test_dense_step_on_row_gradients_equals_the_whole_table_step(small_dataset, model, hp, form, monkeypatch):
    """32 steps, CowClip on and clipping, L2 on, dense warm-up on: the same weights and Adam
    moments as the full-gradient step (bit for bit on the CPU), with the touched rows in either
    form (fixed: the GPU's, padded to the lookups, no host sync; to float32 rounding, since the
    CPU's gemv row norms in CowClip round a row by the matrix's row count)."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, form)
    setup = Setup(str(small_dataset), "dense", model, batch=128, steps=32)
    if hp is not None:
        setup.hp = hp
    env = DistEnv(0, 1, 0, DEVICE, "gloo")
    result = run(setup, env)
    assert result["steps"] == 32
    assert all(a == b for a, b in result["clip"]) and min(a for a, _ in result["clip"]) > 0
    _assert_same(result, exact=DEVICE.type == "cpu" and form == "exact")


def test_two_ranks_all_reduce_only_touched_rows_and_equal_the_whole_table_step(small_dataset, tmp_path):
    """gloo, 2 ranks: the fast step sends [U, D] per table (never a table-sized tensor) and ends
    with the weights and moments of the full-gradient step with its full-table all-reduce."""
    setup = Setup(str(small_dataset), "dense", "deepfm", batch=128, steps=32)
    results = run_ranks(setup, 2, str(tmp_path))
    weights = results[0]["fast"]
    dense_size = sum(v.numel() for k, v in weights.items() if not k.startswith(("sparse.", "table")))
    lookups = 128 * len(read_meta(small_dataset)["sparse_fields"])   # global batch x fields
    for r in results:
        assert r["steps"] == 32
        _assert_same(r, exact=True)
        sizes = r["reduce_sizes"]
        assert len(sizes) == 3 * 32                 # per step: emb rows, linear rows, dense flat
        for emb, lin, dense in zip(sizes[0::3], sizes[1::3], sizes[2::3]):
            u = lin                                 # [U, 1]: the global batch's distinct rows
            assert 0 < u <= lookups and emb == u * 8 and dense == dense_size
            assert emb < weights["sparse.embedding.weight"].numel() // 20
    for k in results[0]["fast"]:                    # the ranks agree
        assert torch.equal(results[0]["fast"][k], results[1]["fast"][k]), k


def test_two_ranks_in_the_fixed_size_form_equal_the_whole_table_step(small_dataset, tmp_path, monkeypatch):
    """The GPU's form of the touched rows at 2 gloo ranks: padding slots (zero values) land on a
    padding slot of the global rows; the weights and moments are the whole-table step's."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "fixed")     # the spawned ranks inherit it
    setup = Setup(str(small_dataset), "dense", "deepfm", batch=128, steps=16)
    results = run_ranks(setup, 2, str(tmp_path))
    lookups = 128 * len(read_meta(small_dataset)["sparse_fields"])
    for r in results:
        _assert_same(r, exact=False)   # float32 rounding: see the 1-rank test
        assert r["reduce_sizes"][1::3] == [lookups + 1] * 16    # [n_g + 1, 1]: fixed, no U read
    for k in results[0]["fast"]:
        assert torch.equal(results[0]["fast"][k], results[1]["fast"][k]), k


@pytest.mark.device
@pytest.mark.parametrize("limit_gap", [0, 5])
def test_fixed_size_touched_rows_are_unique_padded(monkeypatch, limit_gap):
    """Slot k holds the k-th distinct row, its count and the inverse of every lookup, as
    ``torch.unique`` gives them; then padding (``limit``, count 0) up to n + 1 slots. ``index``
    points padding at the first row and ``pad_like_first`` copies slot 0 there."""
    g = torch.Generator().manual_seed(4)
    pos = torch.randint(0, 40, (50, 3), generator=g).to(DEVICE)
    limit = int(pos.max()) + 1 + limit_gap
    rows, inverse, counts = torch.unique(pos.flatten(), sorted=True, return_inverse=True, return_counts=True)
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "fixed")
    t = TouchedRows.of(pos, inverse=True, limit=limit)
    u = rows.numel()
    assert t.padded and t.rows.shape == t.counts.shape == (151,)
    assert torch.equal(t.rows[:u], rows) and (t.rows[u:] == limit).all()
    assert torch.equal(t.counts[:u], counts) and (t.counts[u:] == 0).all()
    assert torch.equal(t.inverse, inverse) and int(t.distinct()) == u
    assert torch.equal(t.index[:u], rows) and (t.index[u:] == rows[0]).all()
    vals = torch.arange(151.0, device=DEVICE).unsqueeze(1).repeat(1, 2)
    padded = t.pad_like_first(vals)
    assert torch.equal(padded[:u], vals[:u]) and (padded[u:] == 0).all()
    with pytest.raises(ValueError, match="limit"):
        TouchedRows.of(pos)
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "exact")
    e = TouchedRows.of(pos, inverse=True)
    assert not e.padded and torch.equal(e.rows, rows) and e.index is e.rows and e.valid is None


def test_fixed_size_rows_leave_out_positions_past_the_table(monkeypatch):
    """A sharded lookup's positions mark other shards' ids with the table's row count: in the
    fixed-size form those get count 0 (padding); with no row of the table at all, padding
    points at row 0. ``from_counts`` puts a count vector's non-zero rows first."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "fixed")
    t = TouchedRows.of(torch.tensor([5, 9, 2, 9, 5, 9]), limit=9)
    assert t.rows.tolist() == [2, 5, 9, 9, 9, 9, 9] and t.counts.tolist() == [1, 2, 0, 0, 0, 0, 0]
    assert t.index.tolist() == [2, 5, 2, 2, 2, 2, 2] and int(t.distinct()) == 2
    none = TouchedRows.of(torch.tensor([9, 9]), limit=9)
    assert none.index.tolist() == [0, 0, 0] and int(none.distinct()) == 0
    vals, before = torch.ones(3, 2), torch.full((1, 2), 7.0)
    assert none.pad_like_first(vals, before).tolist() == [[7.0, 7.0]] * 3    # row 0 keeps its value
    c = TouchedRows.from_counts(torch.tensor([0, 3, 0, 1]))
    assert c.rows.tolist() == [1, 3, 0, 2] and c.counts.tolist() == [3, 1, 0, 0]
    assert c.index.tolist() == [1, 3, 1, 1]
