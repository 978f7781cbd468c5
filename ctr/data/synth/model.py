"""The planted model: feature laws, id supports and the label model of synthetic Criteo.

Everything the synthetic data *is* lives here; the writers (:mod:`ctr.data.synth.tsv`,
:mod:`ctr.data.synth.dataset`) only lay out the rows a :class:`PlantedModel` generates. A
model is fixed by ``(seed, SynthConfig)``; the row count only sets how much of the huge
fields' id support exists (:func:`support_sizes`). Rows come in chunks of
:data:`CHUNK_ROWS`, each from random streams seeded by ``(seed, stream, chunk)``, so a chunk
is the same whichever writer asks for it and however many threads generate it.

Example::

    model = PlantedModel(seed=0, rows=1_000_000)
    ch = model.chunk(0)                 # Chunk: label, dense (NaN = missing), ids (Zipf ranks), p
    model.logit(ch.dense, ch.ids)       # the planted logit of any raw rows
    model.effects("C3")                 # the first-order effect of every id of C3
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, cast

import numpy as np

from ctr.data.dataset import CRITEO_DENSE, CRITEO_SPARSE

# The data's identity: part of meta["synthetic"] and of the demo cache key
# (ctr.data.synth.demo), so a cached dataset from another version is regenerated.
# 2: dataset ids label-encoded by frequency (were Zipf ranks)
# 3: split sizes rounded as ctr-preprocess rounds them (SplitSpec.sizes: the leading splits
#    round half up, the last takes the rest; was: the trailing splits rounded half to even)
GENERATOR_VERSION = 3
CRITEO_ROWS = 45_840_617          # rows of the Criteo Kaggle train.txt
CHUNK_ROWS = 1 << 18              # rows per generated chunk (part of the output's identity)
ID_BLOCK = 1 << 16                # per-id parameters are drawn in blocks of (at most) this many ids
CALIBRATION_ROWS = 1 << 18
CALIBRATION_SUPPORT_ROWS = 1_000_000  # calibration sample uses the support of a 1M-row dataset

# Distinct values per field in Criteo Kaggle train.txt.
CRITEO_CARDINALITY = {
    "C1": 1460, "C2": 583, "C3": 10131227, "C4": 2202608, "C5": 305, "C6": 24, "C7": 12517,
    "C8": 633, "C9": 3, "C10": 93145, "C11": 5683, "C12": 8351593, "C13": 3194, "C14": 27,
    "C15": 14992, "C16": 5461306, "C17": 10, "C18": 5652, "C19": 2173, "C20": 4, "C21": 7046547,
    "C22": 18, "C23": 15, "C24": 286181, "C25": 105, "C26": 142572,
}
# field -> (missing rate, missing group). Fields of one group share one uniform draw, so
# their missing values nest (as in Criteo, where whole blocks of fields are absent together).
DENSE_MISSING = {
    "I1": (0.45, "a"), "I2": (0.0, None), "I3": (0.21, "b"), "I4": (0.22, "b"),
    "I5": (0.026, None), "I6": (0.22, "b"), "I7": (0.04, "c"), "I8": (0.0005, None),
    "I9": (0.04, "c"), "I10": (0.45, "a"), "I11": (0.04, "c"), "I12": (0.77, None),
    "I13": (0.22, "b"),
}
CAT_MISSING = {
    "C3": (0.03, "a"), "C4": (0.03, "a"), "C12": (0.07, "a"), "C16": (0.03, "a"),
    "C19": (0.44, "b"), "C20": (0.44, "b"), "C21": (0.44, "b"), "C22": (0.76, "b"),
    "C23": (0.44, "b"), "C24": (0.44, "b"), "C25": (0.44, "b"), "C26": (0.44, "b"),
}
# field -> (median, log-scale sigma, P(0), loading on the shared per-row activity factor)
DENSE_SPEC = {
    "I1": (1, 1.3, 0.30, 0.6), "I2": (3, 2.0, 0.10, 0.3), "I3": (7, 1.5, 0.05, 0.5),
    "I4": (4, 1.0, 0.05, 0.6), "I5": (2800, 2.0, 0.02, 0.4), "I6": (33, 1.8, 0.10, 0.5),
    "I7": (3, 1.6, 0.15, 0.6), "I8": (7, 1.2, 0.03, 0.3), "I9": (38, 1.4, 0.02, 0.5),
    "I10": (1, 0.6, 0.40, 0.6), "I11": (1, 1.0, 0.25, 0.6), "I12": (1, 1.2, 0.60, 0.4),
    "I13": (4, 1.2, 0.10, 0.5),
}
I2_NEGATIVE = 0.02                 # P(I2 in {-1, -2, -3}), as in Criteo

# seed-sequence stream tags (arbitrary distinct constants; the writers use SPLIT and SCRAMBLE)
(STREAM_TABLE, STREAM_MODEL, STREAM_DENSE, STREAM_CAT, STREAM_LABEL, STREAM_SPLIT, STREAM_CAL,
 STREAM_SCRAMBLE) = (11, 12, 13, 14, 15, 16, 17, 18)


@dataclass(frozen=True)
class SynthConfig:
    """The planted model's knobs (all part of the generated data's identity)."""

    positive_rate: float = 0.25     # mean click probability (intercept calibrated to it)
    sd_first: float = 1.5           # std of the first-order per-id effects' sum
    sd_fm: float = 1.0              # std of the pairwise latent-factor interactions
    sd_dense: float = 0.3           # std of the linear dense term
    sd_nonlinear: float = 0.5       # std of the nonlinear term
    fm_dim: int = 4                 # latent dimension of the planted interactions
    field_spread: float = 1.0       # log-std of the per-field scales (larger: fewer strong fields)
    zipf: float = 1.05              # Zipf exponent of the id frequencies
    vocab_scale: float = 1.0        # multiplies the scaled support of the huge fields
    min_scaled_vocab: int = 100_000  # fields up to this size keep their real cardinality

    def __post_init__(self):
        if not 0.0 < self.positive_rate < 1.0:
            raise ValueError(f"positive_rate must be in (0, 1), got {self.positive_rate}")
        for k in ("sd_first", "sd_fm", "sd_dense", "sd_nonlinear"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if self.fm_dim < 1:
            raise ValueError("fm_dim must be >= 1")
        if self.zipf <= 0 or self.vocab_scale <= 0 or self.min_scaled_vocab < 1:
            raise ValueError("zipf and vocab_scale must be > 0, min_scaled_vocab >= 1")


def make_config(**model_kwargs) -> SynthConfig:
    """A :class:`SynthConfig` from keyword knobs; unknown names raise ``TypeError``."""
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(model_kwargs) - names)
    if unknown:
        raise TypeError(f"unknown synthetic model parameter(s) {unknown}; known: {sorted(names)}")
    return SynthConfig(**{k: v for k, v in model_kwargs.items() if v is not None})


def support_sizes(rows: int, config: SynthConfig = SynthConfig()) -> dict[str, int]:
    """Ids per field for a dataset of ``rows`` rows (the documented scaling rule)."""
    out = {}
    for f, v in CRITEO_CARDINALITY.items():
        if v <= config.min_scaled_vocab:
            out[f] = v
        else:
            scaled = math.ceil(v * config.vocab_scale * rows / CRITEO_ROWS)
            out[f] = int(min(v, max(config.min_scaled_vocab, scaled)))
    return out


def check_rows(rows: int) -> int:
    """``rows`` as an int if it is a positive whole number, else ``ValueError`` (row counts
    given as text go through :func:`ctr.data.synth.parse_rows`)."""
    if int(rows) != rows or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return int(rows)


def _ss(*words: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(w) for w in words])


def seeded_rng(*words: int) -> np.random.Generator:
    """The generator of the random stream named by ``words`` (seed, stream tag, indices)."""
    return np.random.default_rng(_ss(*words))


@dataclass
class Chunk:
    """One generated chunk of rows (raw, before any dataset transform)."""

    label: np.ndarray   # int8 [n]
    dense: np.ndarray   # float64 [n, 13], NaN = missing, integer-valued otherwise
    ids: np.ndarray     # int32 [n, 26], 0 = missing, else 1..support (Zipf rank)
    p: np.ndarray       # float64 [n], true click probability


class PlantedModel:
    """The generator: feature laws and planted label model for ``(seed, config)``.

    ``rows`` only fixes the id supports of the huge fields (see :func:`support_sizes`); all
    parameters are shared by every row count.

    Features
    --------
    Dense ``I_j``: ``floor(exp(ln(median+0.5) + sigma*z))`` with ``z`` a mix of a per-row shared
    "activity" factor and noise, some zero inflation, and ``I2`` sometimes ``-1..-3``. Missing
    values come in nested groups (a row missing ``I3`` mostly also misses ``I4, I6, I13``) with
    the real marginal rates (I1 45%, I3 21%, I12 77%, ...).

    Categorical ``C_f``: the id is the rank of a Zipf law ``P(k) ~ k^-zipf`` over ``support_f``
    ids, sampled by inverse CDF (``np.searchsorted`` on the cumulative table). Fields up to
    ``min_scaled_vocab`` (100K) ids keep their real Criteo cardinality. The huge fields (C3, C4,
    C12, C16, C21, C24, C26; up to 10M ids in Criteo) are scaled with the row count::

        support_f = min(V_f, max(min_scaled_vocab, ceil(V_f * vocab_scale * rows / 45_840_617)))

    so a small dataset keeps the real rows-per-id ratio of the full 45.8M-row log, where most ids
    of those fields occur once or a few times (at 1M rows about half of C3's distinct ids are
    singletons, and a fifth of its rows carry an id seen fewer than 10 times).

    The Zipf rank is the *raw* id (what the planted model is defined on, and what the TSV
    scrambles into hex). :func:`~ctr.data.synth.generate_dataset` label-encodes it per field as
    ``ctr-preprocess`` does: the ranks that occur in the generated rows (all splits) get ids
    ``1..V-1`` by descending count, ties by ascending rank, ``0`` stays missing, and
    ``vocab_sizes[f] = V`` = distinct observed ids + 1, so embedding tables have no rows for ids
    never seen (at 1M rows, 107K of C3's 221K ranks occur; all fields together need 0.66M rows
    instead of 1.12M). ``ctr-preprocess`` on the TSV of the same rows gives the same ``V`` and
    the same ids, except that ids of equal count may come in another order (it breaks ties by
    the hex key).

    The planted model (labels)
    --------------------------
    ::

        logit = b + a1*first + a2*fm + a3*dense + a4*nonlinear,     y ~ Bernoulli(sigmoid(logit))

    - ``first = sum_f w_f[id_f]``: a per-id effect for every id of every field (id 0 = missing has
      one too). ``w_f[k] ~ N(0, s_f^2)`` whatever the id's frequency: **rare ids carry as much
      signal as frequent ones**. That is the regime where large-batch training hurts (a rare
      id's embedding gets few, diluted updates; CowClip's argument), so the data must not hide
      it. The field scales ``s_f`` are log-normal (``field_spread``): a few fields matter much
      more than the others, as in real logs.
    - ``fm = sum_{f<g} <v_f[id_f], v_g[id_g]>``: pairwise interactions of ``fm_dim``-dim latent
      factors, exactly what DeepFM's FM part can represent.
    - ``dense``: linear in ``x_j = (log1p(I_j) - log1p(median_j)) / sigma_j`` (0 if missing).
    - ``nonlinear``: ``sin(2 x_a) * x_b`` (dense), ``s_f[id_f] * x_d`` (a per-id slope on a dense
      feature) and ``t_f * t_g * t_h`` (a three-way product of per-id scalars of three fields).
      The networks see minmax-scaled dense values and have no three-way term, so they learn
      this only in part.

    Each component is scaled so its standard deviation on a calibration sample is ``sd_first``,
    ``sd_fm``, ``sd_dense``, ``sd_nonlinear``; then ``b`` is set by bisection so the mean click
    probability is ``positive_rate`` (0.25). The parameters depend only on the seed and the model
    knobs (per-id parameters are drawn in blocks of ids, each block seeded from
    ``(seed, field, block)``; calibration uses a fixed-size sample at the 1M-row support), never
    on the row count: a bigger dataset with the same seed is the same model with more of the
    long tail revealed. The true probability is known, so meta.json records the oracle::

        meta["oracle"] = {"test_auc": roc_auc_score(y_test, p_test), "test_logloss": ...}

    At the defaults, on 1M rows: 25% positives, oracle test AUC ~0.857; one-hot logistic
    regression reaches ~0.76 and a DeepFM (dim 10, MLP 400x3, Adam, batch 4096) ~0.765 after its
    best (first) epoch. The gap is mostly per-id effects that 1M rows cannot pin down (most ids
    are seen tens of times or fewer; the learners overfit them after one epoch) plus the dense
    terms, which minmax scaling hides; more data closes it in part.
    """

    def __init__(self, seed: int, rows: int, config: SynthConfig = SynthConfig()):
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed, self.rows, self.config = int(seed), int(rows), config
        self.dense_fields, self.sparse_fields = list(CRITEO_DENSE), list(CRITEO_SPARSE)
        self.support = support_sizes(rows, config)
        self.cal_support = support_sizes(CALIBRATION_SUPPORT_ROWS, config)
        m = seeded_rng(seed, STREAM_MODEL)
        nf = len(self.sparse_fields)
        # per-field scales of the first-order effects and of the latent factors
        self.first_scale = np.exp(config.field_spread * m.standard_normal(nf))
        self.fm_scale = np.exp(0.6 * config.field_spread * m.standard_normal(nf))
        self.dense_beta = m.standard_normal(len(self.dense_fields))
        mid = [i for i, f in enumerate(self.sparse_fields) if 100 <= CRITEO_CARDINALITY[f] <= 20000]
        small = [i for i, f in enumerate(self.sparse_fields) if 10 <= CRITEO_CARDINALITY[f] <= 20000]
        self.slope_field = int(m.choice(mid))
        self.triple_fields = [int(i) for i in m.choice(small, size=3, replace=False)]
        a, b, d = m.choice(len(self.dense_fields), size=3, replace=False)
        self.sin_dense, self.mul_dense, self.slope_dense = int(a), int(b), int(d)
        # dense laws
        spec = np.array([DENSE_SPEC[f] for f in self.dense_fields], dtype=np.float64)
        self._d_median, self._d_sigma, self._d_pzero, self._d_load = spec.T
        self._d_mu = np.log(self._d_median + 0.5)
        self._d_center = np.log1p(self._d_median)
        self._d_rate, self._d_group = _groups(self.dense_fields, DENSE_MISSING)
        self._c_rate, self._c_group = _groups(self.sparse_fields, CAT_MISSING)
        # per-id parameters, large enough for the data and for the calibration sample
        self._w: list[np.ndarray] = []      # [V+1] first-order effect (row 0 = missing id)
        self._v: list[np.ndarray] = []      # [V+1, fm_dim] latent factors
        self._t: list[np.ndarray | None] = []  # [V+1] scalars of the three-way product
        self._s: list[np.ndarray | None] = []  # [V+1] per-id slopes on a dense feature
        for i, f in enumerate(self.sparse_fields):
            self._draw_params(i, max(self.support[f], self.cal_support[f]))
        self._sampler = {f: ZipfSampler(self.support[f], config.zipf) for f in self.sparse_fields}
        # component scales and intercept from the calibration sample, then fused tables
        self.scales = np.ones(4)
        self.nl_scales = np.ones(3)
        self.intercept = 0.0
        self._calibrate()
        self._fuse()

    # ---- parameters -------------------------------------------------------------------
    def _draw_params(self, fi: int, n_ids: int) -> None:
        """Parameters of ids ``0..n_ids`` of field ``fi``, drawn in blocks of ``ID_BLOCK``
        ids seeded by ``(seed, field, block)`` so they never depend on the table size."""
        k = self.config.fm_dim
        ncols = k + 3
        # block size from the field's Criteo cardinality only (small fields: one small block)
        block = min(ID_BLOCK, 1 << math.ceil(math.log2(CRITEO_CARDINALITY[self.sparse_fields[fi]] + 1)))
        nb = (n_ids + 1 + block - 1) // block
        t = np.empty((nb * block, ncols), dtype=np.float32)
        for b in range(nb):
            rng = seeded_rng(self.seed, STREAM_TABLE, fi, b)
            t[b * block:(b + 1) * block] = rng.standard_normal((block, ncols), dtype=np.float32)
        t = t[:n_ids + 1]
        self._w.append(np.ascontiguousarray(t[:, 0]) * np.float32(self.first_scale[fi]))
        self._v.append(np.ascontiguousarray(t[:, 1:1 + k]) * np.float32(self.fm_scale[fi]))
        # the nonlinear term's per-id scalars are kept only where used
        self._t.append(np.ascontiguousarray(t[:, 1 + k]) if fi in self.triple_fields else None)
        self._s.append(np.ascontiguousarray(t[:, 2 + k]) if fi == self.slope_field else None)

    def _raw_components(self, dense: np.ndarray, ids: np.ndarray):
        """The four logit components, unscaled (calibration only; float64)."""
        n = ids.shape[0]
        first = np.zeros(n)
        s = np.zeros((n, self.config.fm_dim))
        q = np.zeros(n)
        for j in range(ids.shape[1]):
            col = ids[:, j]
            first += self._w[j][col]
            s += self._v[j][col]
            q += _rowdot(self._v[j], self._v[j])[col]
        fm = 0.5 * (_rowdot(s, s) - q)
        x = self._dense_x(dense)
        return first, fm, x @ self.dense_beta, self._nl_parts(x, ids)

    def _nl_parts(self, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        f1, f2, f3 = self.triple_fields
        slopes = self._s[self.slope_field]
        t1, t2, t3 = self._t[f1], self._t[f2], self._t[f3]
        assert slopes is not None and t1 is not None and t2 is not None and t3 is not None
        triple = (t1[ids[:, f1]] * t2[ids[:, f2]]).astype(np.float64) * t3[ids[:, f3]]
        return (np.sin(2.0 * x[:, self.sin_dense]) * x[:, self.mul_dense],
                slopes[ids[:, self.slope_field]] * x[:, self.slope_dense],
                triple)

    def _nonlinear(self, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        parts = self._nl_parts(x, ids)
        total = cast(np.ndarray, sum(p / s for p, s in zip(parts, self.nl_scales)))
        return total / math.sqrt(len(parts))

    def _calibrate(self) -> None:
        rng = seeded_rng(self.seed, STREAM_CAL)
        n = CALIBRATION_ROWS
        samplers = {f: ZipfSampler(self.cal_support[f], self.config.zipf)
                    for f in self.sparse_fields}
        dense = self._dense(rng, n)
        ids = self._ids(rng, n, samplers)
        first, fm, lin, nl_parts = self._raw_components(dense, ids)
        self.nl_scales = np.array([_safe_std(x) for x in nl_parts])
        nl = self._nonlinear(self._dense_x(dense), ids)
        c = self.config
        target = np.array([c.sd_first, c.sd_fm, c.sd_dense, c.sd_nonlinear])
        self.scales = target / np.array([_safe_std(x) for x in (first, fm, lin, nl)])
        a = self.scales
        z = a[0] * first + a[1] * fm + a[2] * lin + a[3] * nl
        lo, hi = -30.0, 30.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if _sigmoid(z + mid).mean() < c.positive_rate:
                lo = mid
            else:
                hi = mid
        self.intercept = 0.5 * (lo + hi)

    def _fuse(self) -> None:
        """Folds the scales into per-id tables: ``logit = b + sum_f c_f[id] + |S|^2/2 + ...``
        with ``S = sum_f u_f[id]``, ``u = sqrt(a_fm) v``, ``c = a_first w - |u|^2/2``."""
        a_first, a_fm = self.scales[0], self.scales[1]
        self._u = [(v * np.float32(math.sqrt(a_fm))) for v in self._v]
        self._c = [(np.float32(a_first) * w - 0.5 * _rowdot(u, u)).astype(np.float32)
                   for w, u in zip(self._w, self._u)]
        self._dense_coef = self.scales[2] * self.dense_beta
        self._v = []                       # only the calibration needs the unscaled factors

    # ---- rows -------------------------------------------------------------------------
    def _dense(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """float64 [n, 13] (column-major: each field contiguous), NaN = missing."""
        nd = len(self.dense_fields)
        col = (slice(None), None)
        act = rng.standard_normal(n)
        z = rng.standard_normal((nd, n))
        load = self._d_load[col]
        z *= np.sqrt(1.0 - load * load)
        z += load * act
        z *= self._d_sigma[col]
        z += self._d_mu[col]
        v = np.floor(np.exp(z, out=z), out=z)
        v[rng.random((nd, n)) < self._d_pzero[col]] = 0.0
        i2 = self.dense_fields.index("I2")
        neg = rng.random(n)
        which = np.searchsorted([0.8, 0.95], rng.random(n))   # -1: 80%, -2: 15%, -3: 5%
        v[i2] = np.where(neg < I2_NEGATIVE, -1.0 - which, v[i2])
        for j, miss in _missing(rng, n, self._d_rate, self._d_group):
            v[j, miss] = np.nan
        return v.T

    def _ids(self, rng: np.random.Generator, n: int, samplers: dict[str, ZipfSampler]) -> np.ndarray:
        """int32 [n, 26] (column-major), 0 = missing, else the Zipf rank 1..support."""
        ids = np.empty((len(self.sparse_fields), n), dtype=np.int32)
        for j, f in enumerate(self.sparse_fields):
            r = samplers[f].sample(rng.random(n))
            np.add(r, 1, out=ids[j], casting="unsafe")
        for j, miss in _missing(rng, n, self._c_rate, self._c_group):
            ids[j, miss] = 0
        return ids.T

    def _dense_x(self, dense: np.ndarray) -> np.ndarray:
        """float64 [n, 13]: ``(log1p(max(I, 0)) - log1p(median)) / sigma``, 0 where missing."""
        x = np.maximum(dense.T, 0.0, order="C")            # a new field-major array
        np.log1p(x, out=x)
        x -= self._d_center[:, None]
        x /= self._d_sigma[:, None]
        np.nan_to_num(x, copy=False, nan=0.0)
        return x.T

    def logit(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The planted logit (float64 [n]) of raw rows: dense float64 [n, 13] with NaN =
        missing, ids int [n, 26] with 0 = missing (Zipf ranks, as in :class:`Chunk`)."""
        n = ids.shape[0]
        acc = np.zeros(n, dtype=np.float32)
        s = np.zeros((n, self.config.fm_dim), dtype=np.float32)
        for j in range(ids.shape[1]):
            col = ids[:, j]
            acc += self._c[j][col]
            s += self._u[j][col]
        x = self._dense_x(dense)
        out = acc.astype(np.float64)
        out += 0.5 * _rowdot(s, s)
        out += x @ self._dense_coef
        out += self.scales[3] * self._nonlinear(x, ids)
        out += self.intercept
        return out

    def num_chunks(self) -> int:
        return (self.rows + CHUNK_ROWS - 1) // CHUNK_ROWS

    def chunk_rows(self, i: int) -> int:
        return min(CHUNK_ROWS, self.rows - i * CHUNK_ROWS)

    def dense_chunk(self, i: int) -> np.ndarray:
        """Only the dense features of chunk ``i`` (cheap; for fitting transforms)."""
        return self._dense(seeded_rng(self.seed, STREAM_DENSE, i), self.chunk_rows(i))

    def ids_chunk(self, i: int) -> np.ndarray:
        """Only the raw ids of chunk ``i`` (equal to ``chunk(i).ids``; for counting ids)."""
        return self._ids(seeded_rng(self.seed, STREAM_CAT, i), self.chunk_rows(i), self._sampler)

    def chunk(self, i: int) -> Chunk:
        """Chunk ``i``: rows ``[i*CHUNK_ROWS, ...)``, from streams seeded by ``(seed, i)``."""
        n = self.chunk_rows(i)
        dense = self._dense(seeded_rng(self.seed, STREAM_DENSE, i), n)
        ids = self._ids(seeded_rng(self.seed, STREAM_CAT, i), n, self._sampler)
        p = _sigmoid(self.logit(dense, ids))
        label = (seeded_rng(self.seed, STREAM_LABEL, i).random(n) < p).astype(np.int8)
        return Chunk(label, dense, ids, p)

    def map_chunks(self, fn: Callable[[int], Any], workers: int = 2) -> Iterator[Any]:
        """``fn(i)`` for every chunk index ``i`` in order, computed ``workers`` at a time in
        threads (numpy releases the GIL in the heavy parts), at most ``workers`` ahead."""
        yield from _ordered_map(fn, range(self.num_chunks()), workers)

    def chunks(self, workers: int = 2) -> Iterator[Chunk]:
        """All chunks in order, generated in threads (the result does not depend on
        ``workers``)."""
        yield from self.map_chunks(self.chunk, workers)

    def effects(self, field: str) -> np.ndarray:
        """The scaled first-order effect ``a_first * w`` of every id of ``field`` (index = id)."""
        j = self.sparse_fields.index(field)
        return self.scales[0] * self._w[j][:self.support[field] + 1].astype(np.float64)

    def describe(self) -> dict[str, Any]:
        """Every generator parameter, JSON-ready (goes into ``meta["synthetic"]``)."""
        return {
            "generator": "ctr.data.synth",
            "version": GENERATOR_VERSION,
            "rows": self.rows,
            "seed": self.seed,
            "chunk_rows": CHUNK_ROWS,
            "model": dataclasses.asdict(self.config),
            "support": dict(self.support),
            "support_rule": ("fields with <= min_scaled_vocab ids keep their Criteo cardinality "
                             "V; others: min(V, max(min_scaled_vocab, ceil(V * vocab_scale * "
                             f"rows / {CRITEO_ROWS})))"),
            "criteo_cardinality": dict(CRITEO_CARDINALITY),
            "dense_missing": {f: r for f, (r, _) in DENSE_MISSING.items()},
            "sparse_missing": {f: CAT_MISSING.get(f, (0.0, None))[0] for f in self.sparse_fields},
            "dense_law": {f: dict(zip(("median", "sigma", "p_zero", "activity_loading"), s))
                          for f, s in DENSE_SPEC.items()},
            "i2_negative_rate": I2_NEGATIVE,
            "intercept": self.intercept,
            "component_scales": dict(zip(("first", "fm", "dense", "nonlinear"),
                                         map(float, self.scales))),
            "nonlinear_terms": {
                "sin_dense": f"sin(2*x[{self.dense_fields[self.sin_dense]}]) * "
                             f"x[{self.dense_fields[self.mul_dense]}]",
                "slope": f"s[{self.sparse_fields[self.slope_field]}] * "
                         f"x[{self.dense_fields[self.slope_dense]}]",
                "triple": "t[" + "] * t[".join(self.sparse_fields[f] for f in self.triple_fields) + "]",
            },
            "calibration": {"rows": CALIBRATION_ROWS, "support_rows": CALIBRATION_SUPPORT_ROWS},
        }


class ZipfSampler:
    """Inverse-CDF sampling of Zipf ranks ``0..n-1`` (``P(k) ~ (k+1)^-s``), exactly equal to
    ``np.searchsorted(cdf, u, side="right")``, sped up by a guide table: a uniform's cell
    ``floor(u*G)`` bounds its answer, and only cells holding a CDF step need a (vectorised,
    bounded) binary search."""

    def __init__(self, n: int, s: float):
        w = np.arange(1, n + 1, dtype=np.float64) ** -s
        self.cdf = np.cumsum(w)
        self.cdf /= self.cdf[-1]
        self.n = n
        self.G = 1 << int(min(20, max(8, math.ceil(math.log2(4 * n)))))
        self.guide = None
        if n > 64:
            # guide[m] = searchsorted(cdf, m/G, "right") = #{k: cdf[k]*G <= m}; exact, since
            # G is a power of two
            first_cell = np.ceil(self.cdf * self.G).astype(np.int64)
            self.guide = np.cumsum(np.bincount(first_cell, minlength=self.G + 1)[:self.G + 1])

    def sample(self, u: np.ndarray) -> np.ndarray:
        if self.guide is None:
            r = np.searchsorted(self.cdf, u, side="right")
        else:
            cell = (u * self.G).astype(np.int64)
            lo, hi = self.guide[cell], self.guide[cell + 1]
            r = lo
            amb = np.flatnonzero(lo != hi)
            if amb.size:
                uu, a, b = u[amb], lo[amb], hi[amb]
                while True:
                    act = a < b
                    if not act.any():
                        break
                    mid = (a + b) >> 1
                    right = self.cdf[np.minimum(mid, self.n - 1)] <= uu
                    a = np.where(act & right, mid + 1, a)
                    b = np.where(act & ~right, mid, b)
                r[amb] = a
        return np.minimum(r, self.n - 1)          # guards u >= cdf[-1] rounding


def _ordered_map(fn, items, workers: int) -> Iterator[Any]:
    """``map(fn, items)`` computed by ``workers`` threads, yielded in order, bounded ahead."""
    items = list(items)
    if workers <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers) as ex:
        pending: list[Future] = []
        nxt = 0
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < workers:
                pending.append(ex.submit(fn, items[nxt]))
                nxt += 1
            yield pending.pop(0).result()


def _groups(fields: list[str], table: Mapping[str, tuple[float, str | None]]) -> tuple[np.ndarray, np.ndarray]:
    rates = np.array([table.get(f, (0.0, None))[0] for f in fields])
    names = sorted({g for f in fields for g in [table.get(f, (0.0, None))[1]] if g})
    gid = np.array([names.index(g) if (g := table.get(f, (0.0, None))[1]) else -1
                    for f in fields])
    return rates, gid


def _missing(rng: np.random.Generator, n: int, rates: np.ndarray,
             group: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``[(column, bool [n] missing)]`` for the columns with a missing rate; the columns of
    one group share one uniform draw, so their missing entries nest."""
    slots: dict[int, int] = {}
    cols = [j for j in range(len(rates)) if rates[j] > 0]
    for j in cols:
        slots.setdefault(int(group[j]) if group[j] >= 0 else -1 - j, len(slots))
    if not cols:
        return []
    u = rng.random((len(slots), n))
    return [(j, u[slots[int(group[j]) if group[j] >= 0 else -1 - j]] < rates[j]) for j in cols]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of two [n, k] arrays (float64; k is small)."""
    out = a[:, 0].astype(np.float64) * b[:, 0]
    for c in range(1, a.shape[1]):
        out += a[:, c].astype(np.float64) * b[:, c]
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _safe_std(x: np.ndarray) -> float:
    s = float(np.std(x))
    return s if s > 1e-12 else 1.0
