"""The optimizer step of the paper: Adam on two groups, whole-table L2, CowClip, dense warmup.

::

    loss.backward()                      g = ∇ mean BCE over the global batch
    CTROptimizer.step(counts):           (options.update = "dense", the paper's regime)
      every table row (emb + linear)     g += 2·λ·w        (L2 over the whole table, the reference's)
      embedding rows                     g *= min(1, thr / ‖g‖)   (CowClip; cnt over the global
                                                            batch; absent rows cnt = 1)
      dense weights                      g += 2·c·w        (c: reference_l2(name, λ), see ctr.models)
      dense lr                           PolynomialDecay 1e-8 -> lr_d over the warm-up, then lr_d
      Adam(dense params), Adam(fused embedding buffers), Keras' epsilon

    options.update = "sparse" (row-sparse, TorchRec's fused optimizers' regime):
      rows present in the global batch   g += 2·λ_row·w (λ_row = λ/s·min(cnt, s) under the
                                         cowclip rule, λ otherwise; options.sparse_l2);
                                         CowClip (embedding rows); lazy Adam on these
                                         rows only (m, v, w of every other row untouched; bias
                                         correction by the global step count, as SparseAdam's)

Where the counts come from (:mod:`ctr.distributed.counts`, one ``RowCounts`` per step):
TorchRec's sharded lookups, which receive every id of the global batch that falls in their
rows (data-parallel groups: summed over ranks), or the global batch's ids [B, F] (the torch
backend; ``step(global_ids)`` counts them itself). Both give the same rows and counts.

Where a group's gradient comes from: TorchRec's dense kernel leaves a full ``weight.grad``;
the torch backend in training leaves the batch's touched rows in ``group.row_grad``
(:mod:`ctr.models.row_grad`: ``[U, D]`` values, no full-size gradient made by the backward).
Both give the same rows and numbers; the step reads whichever the group has.

How it stays fast in the paper's regime, where every row is updated every step:

- it works on whole fused TBE buffers (one per sharding group), so a step is a handful of
  tensor ops however many fields there are; the ids of every field are offset into their
  group's rows and counted together;
- the L2 term is folded into Adam's fused kernel (``weight_decay = 2λ`` is exactly
  ``g + 2λw``), so the whole table costs one pass per step: w, m, v read and written, and the
  gradient read (a row-grad group's is a persistent buffer holding zeros except on the rows
  written before the pass, zeroed again after it);
- CowClip runs on the rows present in the batch only. That is exact: an absent row's
  gradient is ``2λw`` and its threshold is at least ``r‖w‖``, so it is never clipped when
  ``2λ <= r`` (every published setting); otherwise the full-table clip runs. A present row is
  clipped on its total gradient ``g + 2λw`` and handed back as ``clipped - 2λw`` for Adam's
  weight decay to add the L2 term again.

In the sparse regime a row-grad group's step is O(batch): its rows come from one sort of the
batch's ids (never a table-sized histogram), and w, m, v are gathered, updated and scattered on
those rows. (TorchRec's dense kernel hands over a full ``weight.grad``: correct, not faster.)

Where the reference code (TF 2.4 Keras + DeepCTR) and torch differ, :class:`OptimizerOptions`
(:mod:`ctr.optim.options`) chooses; its defaults are the reference's. Keras' epsilon is kept
with torch's fused Adam by giving it ``eps / sqrt(1 - b2^t)`` each step (:meth:`adam_eps`).

Example::

    opt = CTROptimizer(dense_parameters(dmp), fused_groups(dmp), hparams, warmup_steps=W,
                       sparse_fields=meta["sparse_fields"], options=OptimizerOptions())
    opt.zero_grad(); loss.backward(); opt.step(parts.row_counts(batch.global_ids))
    opt.step(batch.global_ids)           # the same, counted from the global batch's ids
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from ctr.distributed.counts import IdCounter, RowCounts
from ctr.distributed.shards import FusedGroup
from ctr.models import reference_l2
from ctr.models.row_grad import TouchedRows
from ctr.optim.cowclip import cowclip_
from ctr.optim.options import ADAM_BETAS, WARMUP_START_LR, OptimizerOptions
from ctr.optim.scaling import Hyperparams


def _clipped(scale: torch.Tensor, touched: TouchedRows) -> torch.Tensor:
    """Rows CowClip scaled down (a tensor: read off the step), padding slots not counted."""
    below = scale < 1
    return (below & touched.valid).sum() if touched.valid is not None else below.sum()


class CTROptimizer:
    """Adam for dense weights and for embedding tables, with the reference's L2 and CowClip."""

    def __init__(self, dense_params: Mapping[str, torch.nn.Parameter] | Iterable[torch.nn.Parameter],
                 groups: list[FusedGroup], hparams: Hyperparams, warmup_steps: int,
                 sparse_fields: list[str], options: OptimizerOptions | None = None):
        """``dense_params``: by name (``dense_parameters(dmp)``), which the dense L2 groups are
        chosen by; an unnamed iterable is named by position and so gets no dense L2."""
        self.hp = hparams
        self.options = opts = options if options is not None else OptimizerOptions()
        self.groups = groups
        self.warmup_steps = max(0, int(warmup_steps))
        self.lower_bound = opts.lower_bound
        named = (dict(dense_params) if isinstance(dense_params, Mapping)
                 else {str(i): p for i, p in enumerate(dense_params)})
        dense_groups = self._dense_param_groups(named)
        self._dense_decay = [pg["weight_decay"] for pg in dense_groups]
        self.dense = torch.optim.Adam(dense_groups, lr=hparams.dense_lr, betas=ADAM_BETAS,
                                      eps=opts.adam_epsilon, fused=True)
        sparse = [g.weight for g in groups]
        # Adam needs at least one parameter; a rank may hold no table at all (table_wise, W > #tables).
        # weight_decay = 2λ is the gradient of λ·ΣW² over the whole table (coupled L2, not AdamW).
        self.sparse = (torch.optim.Adam(sparse, lr=hparams.embedding_lr, betas=ADAM_BETAS,
                                        eps=opts.adam_epsilon, weight_decay=2.0 * hparams.l2,
                                        fused=True) if sparse else None)
        self._id_counter = IdCounter(groups, sparse_fields)
        self._index = self._id_counter.index      # per group: global ids -> its rows
        for g in groups:
            if g.row_grad is not None and [s.field for s in g.shards] != list(sparse_fields):
                raise ValueError(f"a row-gradient table's fields {[s.field for s in g.shards]} are not "
                                 f"the batch's id columns {list(sparse_fields)}")
        self.step_count = 0
        self._last_clip: tuple[torch.Tensor | int, torch.Tensor | int] = (0, 0)

    def _dense_param_groups(self, named: dict[str, torch.nn.Parameter]) -> list[dict[str, Any]]:
        """Adam param groups by :func:`ctr.models.reference_l2`'s group, in order of first
        appearance. The structure depends only on the parameter names (the same under any
        sharding and world size), so the dense state_dict loads at any world size;
        ``weight_decay = 2c`` is the gradient of ``c·ΣW²``, as for the tables."""
        groups: dict[str, dict[str, Any]] = {}
        for name, p in named.items():
            key, coef = (reference_l2(name, self.hp.l2) if self.options.dense_l2 == "reference"
                         else ("none", 0.0))
            groups.setdefault(key, {"params": [], "weight_decay": 2.0 * coef})["params"].append(p)
        return list(groups.values())

    @staticmethod
    def warmup_steps_for(warmup_epochs: float, train_rows: int, batch: int, steps_per_epoch: int,
                         form: str = "reference") -> int:
        """Warm-up length in steps: ``int(warmup_epochs * int(N / B))`` as the reference's
        ``train.py`` (full batches only), or ``round(warmup_epochs * steps_per_epoch)`` for
        ``form="linear"`` (ctr's earlier rule, a last partial batch counted)."""
        if form == "reference":
            return int(warmup_epochs * int(train_rows // batch))
        return int(round(warmup_epochs * steps_per_epoch))

    def dense_lr(self, step: int) -> float:
        """The dense lr at 0-based ``step``. Reference: Keras' ``PolynomialDecay(1e-8, W, lr,
        power=1)``, ``(1e-8 - lr)·(1 - t/W) + lr`` for ``t < W``, then ``lr``; linear:
        ``lr·min(1, (t+1)/W)``. No warm-up when ``W = 0``."""
        lr, w = self.hp.dense_lr, self.warmup_steps
        if w <= 0:
            return lr
        if self.options.warmup_form == "reference":
            return lr if step >= w else (WARMUP_START_LR - lr) * (1.0 - step / w) + lr
        return lr * min(1.0, (step + 1) / w)

    def adam_eps(self, t: int) -> float:
        """torch Adam's eps at 1-based step ``t``: Keras' ``eps_hat`` is torch's
        ``eps_hat / sqrt(1 - b2^t)`` (torch adds eps after dividing sqrt(v) by that factor)."""
        eps = self.options.adam_epsilon
        if self.options.adam_epsilon_form == "keras":
            return eps / math.sqrt(1.0 - ADAM_BETAS[1] ** t)
        return eps

    def zero_grad(self) -> None:
        # set_to_none: autograd then hands over its fresh gradient instead of adding it to a
        # zeroed full-table buffer (one pass over every table saved per step).
        self.dense.zero_grad(set_to_none=True)
        for g in self.groups:
            g.weight.grad = None
            if g.row_grad is not None:
                g.row_grad.clear_()

    @property
    def last_clip_fraction(self) -> float:
        """Share of the embedding rows considered last step that CowClip scaled down. Kept as
        tensors during the step and read only here, so a GPU step has no host sync for it."""
        clipped, total = self._last_clip
        total = int(total)
        return int(clipped) / total if total else 0.0

    def _has_grad(self, g: FusedGroup) -> bool:
        return g.row_grad is not None or g.weight.grad is not None

    def row_counts(self, batch: RowCounts | torch.Tensor) -> RowCounts:
        """The step's counts: ``batch`` itself, or counted from the global batch's ids [B, F]."""
        return batch if isinstance(batch, RowCounts) else self._id_counter.of(batch)

    def _touched(self, g: FusedGroup, counts: RowCounts
                 ) -> tuple[TouchedRows, torch.Tensor, torch.Tensor | None]:
        """(the group's rows present in the global batch, sorted, with their counts; their
        gradient ``[U, D]``; the full ``[rows, D]`` gradient it was gathered from, or None when
        the rows are the gradient itself). A row-grad group's values are modified in place by
        callers. Read and write rows through ``touched.index`` (the fixed-size form off the CPU
        has padding slots: count 0, zero gradient, see :class:`~ctr.models.row_grad.TouchedRows`)."""
        if g.row_grad is not None:
            touched = g.row_grad.global_rows(counts.ids)
            assert g.row_grad.values is not None
            return touched, g.row_grad.values, None
        touched = counts.touched(g)
        grad2d = g.view(g.weight.grad)
        return touched, grad2d.index_select(0, touched.index), grad2d

    def _clip_total_(self, total: torch.Tensor, w_rows: torch.Tensor, counts: torch.Tensor
                     ) -> torch.Tensor:
        """CowClip in place on rows' total gradients ``g + 2λw``; returns the per-row scale."""
        hp = self.hp
        return cowclip_(total, w_rows, counts, r=hp.r, zeta=hp.zeta, lower_bound=self.lower_bound)

    @torch.no_grad()
    def _cowclip_group_(self, g: FusedGroup, batch: RowCounts) -> tuple[torch.Tensor, torch.Tensor | int]:
        """Clips the group's embedding rows in place (the dense regime: the gradient left for
        Adam's ``weight_decay = 2λ`` is ``clipped - 2λw``); returns (rows clipped, considered)."""
        hp = self.hp
        w2d = g.view()
        l2x2 = 2.0 * hp.l2
        if l2x2 > hp.r:  # absent rows could be clipped too: clip the whole table (exact, slower)
            if g.row_grad is not None:
                g.row_grad.global_rows(batch.ids)            # checks the rows cover the batch
                full = g.view(g.row_grad.dense(g.weight))
                g.row_grad.mark_dense_dirty()                # absent rows are written too
            else:
                full = g.view(g.weight.grad)
            counts = batch.counts(g)
            full.add_(w2d, alpha=l2x2)
            scale = self._clip_total_(full, w2d, counts)
            full.sub_(w2d, alpha=l2x2)
            return (scale < 1).sum(), scale.numel()
        touched, total, grad2d = self._touched(g, batch)
        before = total[:1].clone() if touched.padded and grad2d is not None else None
        w_rows = w2d.index_select(0, touched.index)
        total.add_(w_rows, alpha=l2x2)
        scale = self._clip_total_(total, w_rows, touched.counts)
        total.sub_(w_rows, alpha=l2x2)
        if grad2d is not None:
            grad2d.index_copy_(0, touched.index, touched.pad_like_first(total, before))
        return _clipped(scale, touched), touched.distinct()

    @torch.no_grad()
    def clip_(self, batch: RowCounts | torch.Tensor) -> None:
        """CowClip on every embedding group's gradient, in place, as the dense regime's step
        does (``step`` calls it when the rule has CowClip on; public so a benchmark can time it
        alone). ``batch``: as for :meth:`step`."""
        counts = self.row_counts(batch)
        clipped: torch.Tensor | int = 0
        total: torch.Tensor | int = 0
        for g in self.groups:
            if g.kind == "embedding" and self._has_grad(g):
                c, n = self._cowclip_group_(g, counts)
                clipped, total = clipped + c, total + n
        self._last_clip = (clipped, total)

    @torch.no_grad()
    def step(self, batch: RowCounts | torch.Tensor) -> None:
        """One update. ``batch``: the step's CowClip counts (:class:`~ctr.distributed.counts.
        RowCounts`, e.g. from the sharded lookups: ``ModelParts.row_counts``), or the whole global
        batch's ids [B, F] to count them from."""
        counts = self.row_counts(batch)
        for g in self.groups:
            if not self._has_grad(g):   # no backward reached it: a zero gradient, as on the peers
                g.weight.grad = torch.zeros_like(g.weight)
        t = self.step_count + 1
        eps = self.adam_eps(t)
        for pg in self.dense.param_groups:
            pg["lr"], pg["eps"] = self.dense_lr(self.step_count), eps
        self.dense.step()
        if self.options.update == "sparse":
            self._sparse_step_(counts, t, eps)
        else:
            self._dense_step_(counts, eps)
        self.step_count += 1

    def _dense_step_(self, counts: RowCounts, eps: float) -> None:
        """The paper's regime: CowClip on the present rows, then one fused Adam pass over every
        row of every table (L2 as its weight decay)."""
        if self.hp.cowclip:
            self.clip_(counts)
        else:
            self._last_clip = (0, 0)
        if self.sparse is None:
            return
        row_groups = [g for g in self.groups if g.row_grad is not None]
        for g in row_groups:
            assert g.row_grad is not None
            g.row_grad.global_rows(counts.ids)    # the rows cover the global batch (synced)
            g.weight.grad = g.row_grad.dense(g.weight)
        for pg in self.sparse.param_groups:
            pg["eps"] = eps
        self.sparse.step()
        for g in row_groups:
            assert g.row_grad is not None
            g.weight.grad = None
            g.row_grad.clear_()

    def _sparse_step_(self, counts: RowCounts, t: int, eps: float) -> None:
        """The row-sparse regime: L2, CowClip and Adam on the rows present in the batch."""
        if self.sparse is None:
            self._last_clip = (0, 0)
            return
        self.ensure_sparse_state()
        clipped: torch.Tensor | int = 0
        considered: torch.Tensor | int = 0
        for g in self.groups:
            c, n = self._sparse_step_group_(g, counts, t, eps)
            if g.kind == "embedding" and self.hp.cowclip:
                clipped, considered = clipped + c, considered + n
            if g.row_grad is not None:
                g.row_grad.clear_()
        self._last_clip = (clipped, considered)

    @torch.no_grad()
    def _sparse_step_group_(self, g: FusedGroup, batch: RowCounts, t: int, eps: float
                            ) -> tuple[torch.Tensor | int, torch.Tensor | int]:
        """Lazy Adam on the group's present rows: ``g + 2λw``, CowClip (embedding groups), then
        torch Adam's update on those rows' w, m, v. Returns (rows clipped, rows considered)."""
        assert self.sparse is not None
        hp = self.hp
        touched, total, _ = self._touched(g, batch)
        rows, counts = touched.index, touched.counts
        st = self.sparse.state[g.weight]
        w2d, m2d, v2d = g.view(), g.view(st["exp_avg"]), g.view(st["exp_avg_sq"])
        w = w2d.index_select(0, rows)
        s = hp.l2_batch_ratio
        if self.options.sparse_l2 == "count" and s != 1.0:
            # λ_base·min(cnt, s) per present row: the base run's L2 per epoch (options docstring)
            coef = counts.to(w.dtype).clamp(max=s).mul_(2.0 * hp.l2 / s)
            total.addcmul_(w, coef.unsqueeze(1))
        else:
            total.add_(w, alpha=2.0 * hp.l2)
        clipped: torch.Tensor | int = 0
        if hp.cowclip and g.kind == "embedding":
            clipped = _clipped(self._clip_total_(total, w, counts), touched)
        m, v = m2d.index_select(0, rows), v2d.index_select(0, rows)
        # slot 0's values before the update: padding writes them back where no row is touched
        before = [x[:1].clone() for x in (w, m, v)] if touched.padded else [None, None, None]
        b1, b2 = ADAM_BETAS
        # torch.optim.Adam's arithmetic (torch's eps form; adam_eps gives Keras' in it)
        m.lerp_(total, 1.0 - b1)
        v.mul_(b2).addcmul_(total, total, value=1.0 - b2)
        denom = v.sqrt().div_(math.sqrt(1.0 - b2 ** t)).add_(eps)
        w.addcdiv_(m, denom, value=-hp.embedding_lr / (1.0 - b1 ** t))
        w2d.index_copy_(0, rows, touched.pad_like_first(w, before[0]))
        m2d.index_copy_(0, rows, touched.pad_like_first(m, before[1]))
        v2d.index_copy_(0, rows, touched.pad_like_first(v, before[2]))
        st["step"].add_(1.0)
        return clipped, touched.distinct()

    # ---- state, keyed by table rows so a checkpoint can be loaded at another world size ----

    def sparse_state_of(self, g: FusedGroup) -> dict[str, torch.Tensor]:
        if self.sparse is None:
            return {}
        return self.sparse.state.get(g.weight, {})

    def dense_state_dict(self) -> dict[str, Any]:
        return self.dense.state_dict()

    def load_dense_state_dict(self, state: dict[str, Any]) -> None:
        """Moments and steps from ``state``; the L2 of each group stays this run's (lr and eps
        are set every step)."""
        self.dense.load_state_dict(state)
        for pg, decay in zip(self.dense.param_groups, self._dense_decay):
            pg["weight_decay"] = decay

    def ensure_sparse_state(self) -> None:
        """Creates zero Adam moments for every fused buffer, so they can be filled from a checkpoint."""
        if self.sparse is None:
            return
        for g in self.groups:
            st = self.sparse.state[g.weight]
            if not st:
                # on the parameter's device: torch's fused CUDA Adam wants its step there
                st["step"] = torch.zeros((), dtype=torch.float32, device=g.weight.device)
                st["exp_avg"] = torch.zeros_like(g.weight)
                st["exp_avg_sq"] = torch.zeros_like(g.weight)
