"""The synthetic dataset builder: planted-model rows straight into a processed dataset.

It writes what ``ctr-preprocess`` would make of the same rows in raw form, without the text
round trip, and adds what only a generator knows: the true click probability of every row
(column :data:`ORACLE_COLUMN`) and the test split's oracle AUC / logloss in ``meta.json``
(the best any model can score). It reuses the preprocessing rules rather than copies of
them: the dense transform (:mod:`ctr.data.transforms`, minmax over all rows), the label
encoding by frequency (:func:`ctr.data.encoding.frequency_ids`), the split sizes
(:class:`ctr.data.preprocess.SplitSpec`), the writer (:class:`ctr.data.dataset.DatasetWriter`)
and the metrics (:func:`ctr.metrics.click_metrics`). Two passes over deterministic chunks
keep memory bounded: dense statistics and id counts, then the rows.

Example::

    meta = generate_dataset("data/synth-10m", 10_000_000, seed=1, split=(0.8, 0.1, 0.1))
    meta["oracle"]["test_auc"], meta["vocab_sizes"]["C3"], meta["splits"]["valid"]["rows"]
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ctr.data.dataset import LABEL, ROW_GROUP_ROWS, DatasetWriter, read_meta
from ctr.data.encoding import frequency_ids
from ctr.data.preprocess import SplitSpec, _prefetch, parse_split
from ctr.data.synth.model import STREAM_SPLIT, PlantedModel, check_rows, make_config, seeded_rng
from ctr.data.transforms import DenseStats, apply_dense_transform
from ctr.metrics import click_metrics
from ctr.progress import progress_bar

ORACLE_COLUMN = "oracle_p"
DEFAULT_SPLIT = (0.9, 0.1)


def split_spec(split: Sequence[float] | str | SplitSpec) -> SplitSpec:
    """The split of a synthetic dataset: ``(train, test)`` or ``(train, valid, test)``
    fractions, or ``ctr-preprocess``'s ``"random:0.9,0.1"`` / ``"0.9,0.1"``. Its sizes are
    :meth:`SplitSpec.sizes`, ``ctr-preprocess``'s rounding (so 10,005 rows at 0.8,0.1,0.1 are
    8,004 / 1,001 / 1,000); only random splits (the rows are exchangeable)."""
    if isinstance(split, SplitSpec):
        spec = split
    elif isinstance(split, str):
        spec = parse_split(split if ":" in split else f"random:{split}")
    else:
        spec = parse_split("random:" + ",".join(repr(float(s)) for s in split))
    if spec.kind != "random" or len(spec.names) == 1:
        raise ValueError(f"a synthetic split is random with 2 (train,test) or 3 "
                         f"(train,valid,test) fractions, got {spec.text()}")
    return spec


def generate_dataset(out_dir: str | os.PathLike, rows: int, seed: int = 0,
                     split: Sequence[float] | str | SplitSpec = DEFAULT_SPLIT,
                     overwrite: bool = False, progress: bool = True,
                     rows_per_file: int = 4_000_000, row_group_rows: int = ROW_GROUP_ROWS,
                     **model_kwargs) -> dict[str, Any]:
    """Generates ``rows`` synthetic rows straight into a processed dataset at ``out_dir``.

    Columns: ``label`` float32, ``I1..I13`` float32 (minmax over all rows, via
    :mod:`ctr.data.transforms`), ``C1..C26`` int32 (label-encoded: contiguous ids ``1..V-1``
    by descending frequency over all rows, ties by Zipf rank, 0 = missing), ``oracle_p``
    float32 (the true click probability). ``split``: see :func:`split_spec`; the rows of each
    split are an exact random draw by ``seed``. Memory is bounded: two passes over
    deterministic chunks (dense statistics and id counts, then rows); the id lookups are the
    size of each field's support. ``rows_per_file`` / ``row_group_rows``: the Parquet layout
    (:class:`~ctr.data.dataset.DatasetWriter`); the rows do not depend on it. ``model_kwargs``
    are :class:`SynthConfig` knobs. Returns the meta written.
    """
    rows = check_rows(rows)
    spec = split_spec(split)
    names, split_rows = list(spec.names), spec.sizes(rows)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    model = PlantedModel(seed, rows, make_config(**model_kwargs))
    dense_f, sparse_f = model.dense_fields, model.sparse_fields
    stats = DenseStats(dense_f)
    # counts[j][r]: occurrences of raw id r (Zipf rank + 1; 0 = missing) of field j
    counts = [np.zeros(model.support[f] + 1, dtype=np.int64) for f in sparse_f]
    lock = threading.Lock()

    def pass1(i: int) -> np.ndarray:
        ids = model.ids_chunk(i)
        for j in range(len(sparse_f)):      # in the worker: one field's bincount alive at once
            c = np.bincount(ids[:, j])
            with lock:
                counts[j][:len(c)] += c
        return model.dense_chunk(i)

    with _row_bar(rows, "synth pass 1/2 (dense stats, id counts)", progress) as bar:
        for d in model.map_chunks(pass1):
            stats.update(d)
            bar.update(d.shape[0])
    params = stats.params("minmax")
    lookups, vocab_sizes = [], {}
    for j, f in enumerate(sparse_f):
        # raw id 0 (missing) stays id 0; the others by descending count, ties by rank
        tail, vocab_sizes[f] = frequency_ids(counts[j][1:])
        lookups.append(np.concatenate([np.zeros(1, dtype=np.int32), tail]))
    counts.clear()  # free the per-field histograms before pass 2

    split_rng = seeded_rng(seed, STREAM_SPLIT)
    remaining = np.array(split_rows, dtype=np.int64)
    test_p: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    test_idx = names.index("test")

    def tables():                          # runs one chunk ahead of the writes, in a thread
        nonlocal remaining
        for ch in model.chunks():
            n = ch.label.shape[0]
            take = split_rng.multivariate_hypergeometric(remaining, n)
            remaining = remaining - take
            where = np.repeat(np.arange(len(names), dtype=np.int8), take)
            split_rng.shuffle(where)
            enc = np.empty((len(sparse_f), n), dtype=np.int32)   # field-major encoded ids
            for j in range(len(sparse_f)):
                np.take(lookups[j], ch.ids[:, j], out=enc[j])
            dense = apply_dense_transform(ch.dense, "minmax", params, dense_f)
            p32 = ch.p.astype(np.float32)
            lab = ch.label.astype(np.float32)
            out = []
            for s, name in enumerate(names):
                sel = np.flatnonzero(where == s)
                if s == test_idx:
                    test_p.append(p32[sel])
                    test_y.append(lab[sel])
                cols = {LABEL: lab[sel]}
                cols.update({f: dense[sel, j] for j, f in enumerate(dense_f)})
                cols.update({f: enc[j][sel] for j, f in enumerate(sparse_f)})
                cols[ORACLE_COLUMN] = p32[sel]
                out.append((name, pa.table(cols)))
            yield out

    with DatasetWriter(out_dir, overwrite=overwrite, rows_per_file=rows_per_file,
                       row_group_rows=row_group_rows) as writer, \
            _row_bar(rows, "synth pass 2/2 (rows)", progress) as bar:
        for parts in _prefetch(tables, depth=1):
            for name, table in parts:
                writer.write(name, table)
            bar.update(sum(t.num_rows for _, t in parts))
        assert int(remaining.sum()) == 0
        y = np.concatenate(test_y) if test_y else np.zeros(0, np.float32)
        p = np.concatenate(test_p) if test_p else np.zeros(0, np.float32)
        meta = {
            "dataset": "synthetic",
            "label": LABEL,
            "dense_fields": dense_f,
            "sparse_fields": sparse_f,
            "vocab_sizes": {f: int(vocab_sizes[f]) for f in sparse_f},
            "split": spec.meta(int(seed), rows),
            "dense_transform": {"kind": "minmax", "params": params},
            "categorical_encoding": {"kind": "label", "order": "frequency"},
            "extra_columns": {ORACLE_COLUMN: "true click probability of the planted model"},
            "seed": int(seed),
            "synthetic": model.describe(),
            "oracle": oracle_metrics(y, p),
        }
        writer.commit(meta)
    return read_meta(out_dir)


def oracle_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """AUC and log loss of the true probability ``p`` (float32, as stored) on labels ``y``,
    scored by :func:`ctr.metrics.click_metrics` like any model; ``None`` without both
    classes."""
    m = click_metrics(y, p)
    both = not math.isnan(m.get("auc", math.nan))
    return {"test_auc": m["auc"] if both else None,
            "test_logloss": m["logloss"] if both else None,
            "test_rows": m["rows"]}


def _row_bar(total: int, desc: str, enabled: bool):
    return progress_bar(total=total, desc=desc, unit="row", unit_scale=True, dynamic_ncols=True,
                        disable=not enabled)
