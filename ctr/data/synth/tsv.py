"""The raw Criteo TSV writer: synthetic rows as ``ctr-preprocess`` reads real ones.

The TSV exists to exercise the real pipeline end to end (and to benchmark it): it is laid out
like Criteo Kaggle's ``train.txt`` (``label \\t I1..I13 \\t C1..C26``, no header, empty =
missing) with each categorical id, a Zipf rank, turned into 8 hex digits by a per-field
bijective scramble, so ids look hashed but the vocabulary is unchanged. For the same
``(rows, seed)`` it holds the same rows in the same order as the processed dataset of
:func:`ctr.data.synth.generate_dataset` (one row generator, :class:`PlantedModel`). Lines are
built column-wise in Arrow (C++), not per row in Python.

Example::

    write_raw_criteo_tsv("data/synth.tsv.gz", 1_000_000, seed=0)   # gzip by the suffix
    # then: ctr-preprocess data/synth.tsv.gz --out data/synth-pp
"""

from __future__ import annotations

import contextlib
import gzip
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ctr.data.preprocess import _prefetch
from ctr.data.synth.model import (STREAM_SCRAMBLE, Chunk, PlantedModel, check_rows, make_config,
                                  seeded_rng)
from ctr.progress import progress_bar

_HEX4 = np.frombuffer(b"".join(b"%04x" % v for v in range(65536)), dtype=np.uint32)


def _scramble_keys(seed: int, nf: int) -> np.ndarray:
    """uint32 [nf, 4]: per-field keys of the id scramble (odd multipliers in columns 1, 2)."""
    keys = np.empty((nf, 4), dtype=np.uint32)
    for f in range(nf):
        keys[f] = seeded_rng(seed, STREAM_SCRAMBLE, f).integers(0, 1 << 32, 4, dtype=np.uint64)
    keys[:, 1:3] |= np.uint32(1)
    return keys


def scramble_ids(ids: np.ndarray, key: np.ndarray) -> np.ndarray:
    """A bijection of uint32 (xor, odd multiply, xor-shift rounds), so ids look hashed."""
    x = ids.astype(np.uint32) ^ key[0]
    x *= key[1]
    x ^= x >> np.uint32(15)
    x *= key[2]
    x ^= x >> np.uint32(13)
    x += key[3]
    x ^= x >> np.uint32(16)
    return x


def _hex_column(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """uint32 [n] -> Arrow string array of 8 lower-case hex digits, null where not valid."""
    n = values.shape[0]
    out = np.empty((n, 2), dtype=np.uint32)
    out[:, 0] = _HEX4[values >> np.uint32(16)]
    out[:, 1] = _HEX4[values & np.uint32(0xFFFF)]
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    bitmap = np.packbits(valid, bitorder="little")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out),
                                       pa.py_buffer(bitmap), int(n - valid.sum()))


def _label_column(label: np.ndarray) -> pa.Array:
    r"""Labels as strings ``"0"``, ``"\n1"``, ``"\n0"``, ...: each row after the first starts
    with the previous row's line end, so joining a chunk's columns gives its TSV lines."""
    n = label.shape[0]
    data = np.empty((n, 2), dtype=np.uint8)
    data[:, 0] = ord("\n")
    data[:, 1] = label.astype(np.uint8) + ord("0")
    offsets = np.arange(-1, 2 * n, 2, dtype=np.int32)
    offsets[0] = 0
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data.reshape(-1)[1:]))


def tsv_parts(ch: Chunk, keys: np.ndarray) -> list[memoryview]:
    r"""A chunk's raw Criteo TSV lines (``label \t I1..I13 \t C1..C26 \n`` each), as buffers
    to write one after the other. The columns become Arrow strings (ints cast, ids as hex
    built from numpy buffers) joined row-wise in C++ by ``binary_join_element_wise``."""
    import pyarrow.compute as pc
    cols: list[pa.Array] = [_label_column(ch.label)]
    miss = np.isnan(ch.dense)
    dense = np.where(miss, 0.0, ch.dense).astype(np.int64)
    for j in range(dense.shape[1]):
        cols.append(pc.cast(pa.array(dense[:, j], mask=miss[:, j]), pa.string()))
    for j in range(ch.ids.shape[1]):
        col = ch.ids[:, j]
        cols.append(_hex_column(scramble_ids(col, keys[j]), col != 0))
    joined = pc.binary_join_element_wise(*cols, "\t", null_handling="replace",
                                         null_replacement="")
    offsets, data = joined.buffers()[1:3]
    off = np.frombuffer(offsets, dtype=np.int32, count=len(joined) + 1, offset=4 * joined.offset)
    return [memoryview(data)[int(off[0]):int(off[-1])], memoryview(b"\n")]


def write_raw_criteo_tsv(path: str | os.PathLike, rows: int, seed: int = 0, progress: bool = True,
                         **model_kwargs) -> dict[str, Any]:
    """Writes ``rows`` synthetic rows as a raw Criteo TSV (gzip if ``path`` ends with ``.gz``).

    Layout: ``label \\t I1..I13 \\t C1..C26``, no header, empty = missing, ids as 8 lower-case
    hex digits (a per-field bijective scramble of the Zipf rank). Written to a temporary name
    beside ``path`` and renamed into place (an existing file is replaced). Returns a summary.
    """
    rows = check_rows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = PlantedModel(seed, rows, make_config(**model_kwargs))
    keys = _scramble_keys(seed, len(model.sparse_fields))
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    positives = 0

    def lines():                       # runs one chunk ahead of the writes, in a thread
        nonlocal positives
        for ch in model.chunks():
            positives += int(ch.label.sum())
            yield ch.label.shape[0], tsv_parts(ch, keys)

    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(tmp, "wb"))
            sink = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)) \
                if path.name.endswith(".gz") else raw
            bar = stack.enter_context(progress_bar(
                total=rows, desc=f"synth tsv {path.name}", unit="row", unit_scale=True,
                dynamic_ncols=True, disable=not progress))
            for n, parts in _prefetch(lines, depth=1):
                for part in parts:
                    sink.write(part)
                bar.update(n)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    secs = time.perf_counter() - t0
    return {"path": str(path), "rows": rows, "seed": seed, "positives": positives,
            "positive_rate": positives / rows, "bytes": path.stat().st_size, "seconds": secs,
            "rows_per_second": rows / secs if secs > 0 else float("inf")}
