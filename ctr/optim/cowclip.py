"""CowClip: adaptive column-wise (per embedding row) gradient clipping.

Algorithm 1 of Zheng et al., "CowClip: Reducing CTR Prediction Model Training Time from
12 hours to 10 minutes on 1 GPU" (AAAI 2023), for one embedding table (one field)::

    cnt_i     = number of samples of the (global) batch whose id in this field is i
                (rows absent from the batch count as cnt = 1, see below)
    thr_i     = cnt_i * max(r * ||w_i||, zeta)                   lower_bound="paper"
    thr_i     = r * cnt_i * max(||w_i||, r * sqrt(d) * zeta)     lower_bound="reference"
    g_i      <- g_i * min(1, thr_i / ||g_i||)                    (a zero row stays zero)

Two lower bounds
----------------
``"paper"`` is Algorithm 1 as printed. ``"reference"`` is what bytedance/LargeBatchCTR runs
(TensorFlow, ``clip.py`` + ``train.py``; checked against the public source):

* ``train.py`` computes ``lower_bound = args.clip * sqrt(args.sparse_embed_dim) * args.bound``,
  i.e. ``r * sqrt(d) * zeta`` -- zeta is meant *per element*, so a row whose every element is
  zeta has norm ``sqrt(d) * zeta`` -- and passes it as ``min_w`` together with ``ratio = r``;
* ``cow_clip`` / ``clip_id_norm`` in ``clip.py`` take the row norms of the whole table
  ``clipnorm = max(||w_i||, min_w)``, build a count vector of ones for every row and scatter
  the batch's ``tf.unique_with_counts`` counts into it (absent rows keep count 1), multiply
  ``clipnorm *= cnt`` and then ``clip_t = ratio * clipnorm``;
* the clipped gradient is ``g * clip_t / max(||g||, clip_t)`` where ``||g||`` is computed from
  the row's sum of squares with zero sums replaced by 1 (so a zero row gives 0, never NaN).

Hence ``thr = r * cnt * max(||w||, r * sqrt(d) * zeta)``: r multiplies both the weight norm
and the floor, and the floor is ``sqrt(d)`` times larger than the paper's. With r = 1
(every published run) the two variants differ only by that ``sqrt(d)`` (sqrt(10) = 3.16 at
the paper's d = 10) on rows whose norm is below the floor.

Why the whole table
-------------------
The reference's L2 is Keras ``l2(lambda)`` on the Embedding layer, ``lambda * sum(W**2)`` over
the whole table, added to the loss before ``tape.gradient``; every row therefore has a dense
gradient each step and the clip runs on the full ``[R, d]`` gradient, including the L2 term,
with cnt = 1 for rows the batch does not contain. First-order ("linear") embedding tables are
not clipped (``if 'linear' in w.name: skip``); that choice belongs to the caller (the
optimizer skips fused groups of kind ``"linear"``).

Where it runs
-------------
:class:`ctr.optim.optimizer.CTROptimizer` calls :func:`cowclip_` once per fused embedding
buffer (all shards of one TBE, laid end to end), with the counts of the whole global batch,
on the total gradient ``g + 2*lambda*w``. It clips only the rows present in the batch, which
is exact whenever ``2*lambda <= r``: an absent row's gradient is the pure L2 term
``2*lambda*w``, so ``||g|| = 2*lambda*||w|| <= r*||w|| <= thr`` and the full-table clip leaves
it untouched -- true of every published configuration (lambda <= 1.28e-3). Otherwise it clips
the whole buffer, absent rows with cnt = 1.

Example (one table, or a row-wise shard holding rows ``[off, off + R)`` of it)::

    local = ids - off                                   # one field's ids, global batch
    local = local[(local >= 0) & (local < R)]           # other shards' ids are not counted
    counts = torch.bincount(local, minlength=R)         # 0 for absent rows (taken as 1)
    scale = cowclip_(grad, weight, counts, r=1.0, zeta=1e-5, lower_bound="reference")
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ctr.optim.options import LOWER_BOUNDS

__all__ = ["LOWER_BOUNDS", "cowclip_"]


def _check_params(r: float, zeta: float, lower_bound: str) -> None:
    if lower_bound not in LOWER_BOUNDS:
        raise ValueError(f"lower_bound must be one of {LOWER_BOUNDS}, got {lower_bound!r}")
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"CowClip r must be a positive finite number, got {r!r}")
    if not (math.isfinite(zeta) and zeta >= 0):
        raise ValueError(f"CowClip zeta must be a non-negative finite number, got {zeta!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # norms of half / bfloat16 rows are accumulated in float32
    return torch.promote_types(dtype, torch.float32)


# CPU: rows are processed in blocks of about this many elements (4 MB of float32), so that a
# block of w and g is read from memory once and its temporaries stay in cache. Other devices
# (CUDA) take the whole table in one go: no Python loop, no host synchronisation.
_CPU_BLOCK_ELEMENTS = 1 << 20


def _block_rows(rows: int, d: int, device: torch.device, block_rows: int | None) -> int:
    if block_rows is not None:
        if int(block_rows) < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    if device.type != "cpu":
        return max(rows, 1)
    return max(1, _CPU_BLOCK_ELEMENTS // max(d, 1))


def _gemv_path(device: torch.device) -> bool:
    """Square-into-scratch + gemv row norms and a contiguous final multiply (CPU)."""
    return device.type == "cpu"


def _row_norms_(x: Tensor, ones: Tensor | None, sq: Tensor | None, out: Tensor) -> Tensor:
    """out <- ||x_i|| per row. On CPU (``sq``: scratch of x's shape in the compute dtype) the
    rows are squared into the scratch and summed by one gemv: a reduction over a short inner
    dimension (d = 10) is several times slower there. Elsewhere: ``vector_norm``, no scratch."""
    if sq is None or ones is None:
        return torch.linalg.vector_norm(x, dim=1, dtype=out.dtype, out=out)
    torch.mul(x, x, out=sq)
    torch.mv(sq, ones, out=out)
    return out.sqrt_()


def _threshold_(wnorm: Tensor, counts: Tensor, r: float, zeta: float, lower_bound: str,
                d: int) -> Tensor:
    """In place on ``wnorm`` (= ||w_i||): the CowClip threshold, counts of 0 taken as 1."""
    if counts.is_floating_point():
        cnt = torch.where(counts == 0, torch.ones_like(counts), counts)
    else:
        cnt = counts.clamp_min(1)         # (the in-place mul_ below converts)
    if lower_bound == "paper":            # cnt * max(r * ||w||, zeta)
        if r != 1.0:
            wnorm.mul_(r)
        return wnorm.clamp_min_(zeta).mul_(cnt)
    # reference (LargeBatchCTR): r * cnt * max(||w||, r * sqrt(d) * zeta)
    wnorm.clamp_min_(r * math.sqrt(d) * zeta).mul_(cnt)
    return wnorm.mul_(r) if r != 1.0 else wnorm


def _check_shapes(grad: Tensor | None, weight: Tensor, counts: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [rows, dim], got shape {tuple(weight.shape)}")
    if grad is not None and (grad.dim() != 2 or grad.shape != weight.shape):
        raise ValueError(f"grad and weight must be 2-D of one shape, got {tuple(grad.shape)} "
                         f"and {tuple(weight.shape)}")
    if counts.shape != weight.shape[:1]:
        raise ValueError(f"counts must have shape ({weight.shape[0]},), got {tuple(counts.shape)}")
    if counts.device != weight.device or (grad is not None and grad.device != weight.device):
        raise ValueError("grad, weight and counts must be on one device")


@torch.no_grad()
def cowclip_(grad: Tensor, weight: Tensor, counts: Tensor, r: float = 1.0, zeta: float = 1e-5,
             lower_bound: str = "paper", block_rows: int | None = None) -> Tensor:
    """CowClip one table's gradient in place; returns the per-row scale applied, ``Tensor[R]``.

    ``grad``, ``weight``: ``[R, d]`` (the whole table, or a row-wise shard of it, or any
    aligned rows; ``grad`` may be a strided view, it is modified in place). ``counts``:
    ``[R]``, int or float, the number of samples of the global batch containing each row's
    id (only the ids of the rows given: a shard counts its own rows); 0 counts as 1. Per row::

        thr   = cnt * max(r * ||w||, zeta)                  lower_bound="paper"
              = r * cnt * max(||w||, r * sqrt(d) * zeta)    lower_bound="reference"
        scale = min(1, thr / ||g||)      (1 for a zero gradient row: no NaN / inf)
        g    *= scale

    The scale has the compute dtype (float32 for half / bfloat16 gradients, else the
    gradient's). Vectorised over rows (no loop over ids or rows), device-agnostic, no host
    synchronisation. On CPU the rows go in blocks of ~1M elements (``block_rows``
    overrides) so that each block of w and g is read from memory once and the temporaries
    stay in cache: per block, the two row norms are a square into a scratch buffer plus one
    gemv each (a reduction over d = 10 is ~2x slower on CPU), then a few ``[block]`` vector
    ops and one contiguous multiply of g. Other devices (CUDA): one block, the whole table,
    with ``vector_norm`` and a broadcast multiply -- no Python loop, no scratch.

    Measured on this project's machine (2 vCPUs, AVX-512, torch 2.13 CPU, idle), a
    6,000,000 x 10 table with random counts, median of 20 calls: float32 ~75 ms with 2
    threads (~140 ms with 1), float64 ~140 ms with 2 threads; the "paper" and "reference"
    bounds cost the same. For comparison the one-shot full-table version (``vector_norm`` of
    w and g, broadcast multiply) took ~150-165 ms, and one in-place pass over g
    (``g.mul_(1.0)``) ~11-24 ms.
    """
    r, zeta = float(r), float(zeta)
    _check_params(r, zeta, lower_bound)
    _check_shapes(grad, weight, counts)
    rows, d = grad.shape
    dtype = _compute_dtype(grad.dtype)
    device = grad.device
    scale = torch.empty(rows, dtype=dtype, device=device)
    if rows == 0:
        return scale
    step = min(_block_rows(rows, d, device, block_rows), rows)
    cpu = _gemv_path(device)
    ones = torch.ones(d, dtype=dtype, device=device) if cpu else None
    sq = torch.empty(step, d, dtype=dtype, device=device) if cpu else None
    gnorm_buf = torch.empty(step, dtype=dtype, device=device)
    den_buf = torch.empty(step, dtype=dtype, device=device)
    # thr >= floor > 0 (cnt >= 1) unless zeta = 0 (or a float count below 1): then thr = 0
    # is possible, and ||g|| = thr = 0 gives 0/0, replaced by 1
    floor = zeta if lower_bound == "paper" else r * r * math.sqrt(d) * zeta
    maybe_zero_threshold = counts.is_floating_point() or not floor >= torch.finfo(dtype).tiny
    for lo in range(0, rows, step):       # one iteration on CUDA; blocks of ~1M elements on CPU
        hi = min(lo + step, rows)
        n = hi - lo
        g = grad[lo:hi]
        w = weight[lo:hi]
        if w.dtype != dtype and cpu:
            w = w.to(dtype)
        thr = scale[lo:hi]                # the threshold is built in the output's storage
        scratch = sq[:n] if sq is not None else None
        _row_norms_(w, ones, scratch, thr)
        _threshold_(thr, counts[lo:hi], r, zeta, lower_bound, d)
        gnorm = _row_norms_(g if g.dtype == dtype or not cpu else g.to(dtype), ones, scratch,
                            gnorm_buf[:n])
        # scale = thr / max(||g||, thr) = min(1, thr / ||g||) when ||g|| > 0; the only 0/0
        # (||g|| = thr = 0) and every zero gradient row get scale 1
        thr.div_(torch.maximum(gnorm, thr, out=den_buf[:n]))
        if maybe_zero_threshold:
            thr.masked_fill_(gnorm == 0, 1.0)
        if scratch is not None:           # a contiguous multiply beats a broadcast over d on CPU
            g.mul_(scratch.copy_(thr.unsqueeze(1).expand(n, d)))
        else:
            g.mul_(thr.unsqueeze(1))
    return scale
