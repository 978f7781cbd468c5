"""The raw Criteo TSV writer: synthetic rows as ``ctr-preprocess`` reads real ones.

The TSV exists to exercise the real pipeline end to end (and to benchmark it): it is laid out
like Criteo Kaggle's ``train.txt`` (``label \\t I1..I13 \\t C1..C26``, no header, empty =
missing) with each categorical id, a Zipf rank, turned into 8 hex digits by a per-field
bijective scramble, so ids look hashed but the vocabulary is unchanged. For the same
``(rows, seed)`` it holds the same rows in the same order as the processed dataset of
:func:`ctr.data.synth.generate_dataset` (one row generator, :class:`PlantedModel`). Lines are
built column-wise in Arrow (C++), not per row in Python.

:func:`write_raw_criteo_days` cuts the same row stream into Criteo-1TB-style ``day_N`` files
(one planted model for all days; the days concatenated are the single file byte for byte).

Example::

    write_raw_criteo_tsv("data/synth.tsv.gz", 1_000_000, seed=0)   # gzip by the suffix
    # then: ctr-preprocess data/synth.tsv.gz --out data/synth-pp
    write_raw_criteo_days("data/days", 3_000_000, days=3)          # data/days/day_0 .. day_2
    # then: ctr-preprocess data/days/day_* --out data/c1tb --split files:2,1 --min-count 10
"""

from __future__ import annotations

import contextlib
import gzip as gzip_format
import os
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

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


def day_sizes(rows: int, days: int) -> list[int]:
    """Rows of each of ``days`` day files of ``rows`` rows in all: day ``d`` holds the rows
    ``[d*rows//days, (d+1)*rows//days)`` of the one generated stream, so days differ by at most
    one row (cut inside generator chunks where needed). ``ValueError`` unless
    ``1 <= days <= rows``."""
    if int(days) != days or days < 1:
        raise ValueError(f"days must be a positive whole number, got {days!r}")
    if days > rows:
        raise ValueError(f"{days} days of {rows:,} rows: every day needs at least one row")
    return [(d + 1) * rows // days - d * rows // days for d in range(days)]


def day_file_names(days: int, gzip: bool = False) -> list[str]:
    """``day_0 .. day_{days-1}`` (``.gz`` appended with ``gzip``), as the Criteo 1TB log names them."""
    return [f"day_{d}" + (".gz" if gzip else "") for d in range(days)]


def _slice(ch: Chunk, lo: int, hi: int) -> Chunk:
    return Chunk(ch.label[lo:hi], ch.dense[lo:hi], ch.ids[lo:hi], ch.p[lo:hi])


class _AtomicFile:
    """One output file written to a temporary name beside it (gzip when its name ends with
    ``.gz``) and renamed into place by :meth:`commit`, so a file at ``path`` is always whole;
    :meth:`abort` removes the temporary."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._raw = open(self.tmp, "wb")
        self.sink: Any = (gzip_format.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1)
                          if path.name.endswith(".gz") else self._raw)

    def commit(self) -> None:
        if self.sink is not self._raw:
            self.sink.close()
        self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            if self.sink is not self._raw:
                self.sink.close()
            self._raw.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _write_tsv_files(files: Sequence[tuple[Path, int]], seed: int, progress: bool,
                     keep_oracle_of_last: bool = False, **model_kwargs) -> dict[str, Any]:
    """The one chunk -> lines -> file loop of both writers: the rows of ONE
    :class:`PlantedModel` of ``sum(rows)`` rows, in generation order, the first ``files[0][1]``
    into ``files[0][0]``, the next into ``files[1][0]``, ... (chunks cut where a file ends), so
    the files' concatenation is the single-file output byte for byte. Each file is atomic
    (:class:`_AtomicFile`) and committed when its last row is written; an error or Ctrl-C
    removes the file in progress and leaves the finished ones. ``keep_oracle_of_last``: also
    score the true probability on the last file's rows (its oracle AUC), which holds that
    file's labels and probabilities in memory (9 B a row)."""
    rows = check_rows(sum(n for _, n in files))
    if any(n < 1 for _, n in files):
        raise ValueError("every file needs at least one row")
    t0 = time.perf_counter()
    model = PlantedModel(seed, rows, make_config(**model_kwargs))
    keys = _scramble_keys(seed, len(model.sparse_fields))
    last = len(files) - 1

    def pieces():                      # runs one chunk ahead of the writes, in a thread
        f, left = 0, files[0][1]
        for ch in model.chunks():
            lo, n = 0, ch.label.shape[0]
            while lo < n:
                take = min(left, n - lo)
                part = ch if take == n else _slice(ch, lo, lo + take)
                oracle = (part.label, part.p.astype(np.float32)) \
                    if keep_oracle_of_last and f == last else None
                yield f, take, int(part.label.sum()), tsv_parts(part, keys), oracle
                lo, left = lo + take, left - take
                if left == 0 and f < last:
                    f += 1
                    left = files[f][1]

    written: list[dict[str, Any]] = [{"path": str(p), "rows": n, "positives": 0, "bytes": 0}
                                     for p, n in files]
    oracle_y: list[np.ndarray] = []
    oracle_p: list[np.ndarray] = []
    current: tuple[int, _AtomicFile] | None = None
    desc = f"synth tsv {files[0][0].name}" + (f" .. {files[-1][0].name}" if len(files) > 1 else "")
    try:
        with progress_bar(total=rows, desc=desc, unit="row", unit_scale=True,
                          dynamic_ncols=True, disable=not progress) as bar:
            for f, n, pos, parts, oracle in _prefetch(pieces, depth=1):
                if current is None or current[0] != f:
                    if current is not None:
                        current[1].commit()
                    current = (f, _AtomicFile(files[f][0]))
                for part in parts:
                    current[1].sink.write(part)
                written[f]["positives"] += pos
                if oracle is not None:
                    oracle_y.append(oracle[0])
                    oracle_p.append(oracle[1])
                bar.update(n)
            assert current is not None and current[0] == last
            current[1].commit()
            current = None
    except BaseException:
        if current is not None:
            current[1].abort()
        raise
    secs = time.perf_counter() - t0
    for w, (p, _) in zip(written, files):
        w["bytes"] = p.stat().st_size
        w["positive_rate"] = w["positives"] / w["rows"]
    positives = sum(w["positives"] for w in written)
    out: dict[str, Any] = {
        "rows": rows, "seed": seed, "positives": positives, "positive_rate": positives / rows,
        "bytes": sum(w["bytes"] for w in written), "seconds": secs,
        "rows_per_second": rows / secs if secs > 0 else float("inf"), "files": written}
    if keep_oracle_of_last:
        from ctr.data.synth.dataset import oracle_metrics
        out["oracle_last"] = oracle_metrics(np.concatenate(oracle_y), np.concatenate(oracle_p))
    return out


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
    info = _write_tsv_files([(path, rows)], seed, progress, **model_kwargs)
    del info["files"]
    return {"path": str(path), **info}


def write_raw_criteo_days(out_dir: str | os.PathLike, rows: int, days: int, seed: int = 0,
                          gzip: bool = False, progress: bool = True, oracle_last: bool = False,
                          **model_kwargs) -> dict[str, Any]:
    """Writes ``rows`` synthetic rows as Criteo-1TB-style day files ``out_dir/day_0 ..
    day_{days-1}`` (``day_N.gz`` with ``gzip``): TAB, 40 fields, as the 1TB log's ``day_N``.

    All days come from ONE :class:`PlantedModel` of ``rows`` rows (one id support, one label
    model), its rows cut into consecutive days by :func:`day_sizes` (equal to one row), so every
    day has the same distribution and a model trained on the first days is tested on the last
    one as on the real log (which has no drift to speak of either). For the same ``(rows,
    seed)`` the days concatenated are byte for byte :func:`write_raw_criteo_tsv`'s file. Each
    file is written to a temporary name and renamed into place (existing day files of those
    names are replaced). ``oracle_last``: also return the last day's oracle AUC (the true
    probability scored on its labels; holds that day's labels and probabilities, 9 B a row).
    Returns a summary with per-file rows, positives and bytes.
    """
    rows = check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / name, n) for name, n in zip(day_file_names(days, gzip), day_sizes(rows, days))]
    info = _write_tsv_files(files, seed, progress, keep_oracle_of_last=oracle_last, **model_kwargs)
    return {"dir": str(out), "days": days, **info}
