"""Raw click logs -> a processed dataset (:class:`~ctr.data.dataset.DatasetWriter` layout).

Two streaming passes over the inputs, never holding a raw file in memory::

    pass 1  blocks ─▶ rows, DenseStats (min/max/missing), per-field key counts, bad rows
            ─▶ vocabularies frozen into ids (descending count, ties by key), split plan
    pass 2  blocks ─▶ ids, transformed dense, label ─▶ split ─▶ DatasetWriter ─▶ commit

Parsing (pyarrow, its own threads) runs one block ahead in a background thread while the
main thread counts / encodes / writes, so both cores stay busy.

The split is decided before pass 2 from the row count of pass 1: ``random`` places exactly
``round(ratio * N)`` rows in each split with a seeded shuffle of a per-row split tag (rows
keep their file order inside a split); ``sequential`` takes the first rows for train, then
valid, then test; ``files`` cuts at input-file boundaries (``files:23,1``: the first 23
inputs train, the last one test, as TorchRec's DLRM example splits Criteo 1TB's days). With
two parts the splits are train / test (``valid`` is an alias of ``test``, the paper's
protocol); with three, train / valid / test.

Example::

    meta = preprocess(["day_0.gz", "day_1.gz"], "data/criteo", split="random:0.9,0.1")
    print(format_summary(meta))
"""

from __future__ import annotations

import math
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ctr.data.dataset import LABEL, ROW_GROUP_ROWS, DatasetWriter, read_meta
from ctr.data.encoding import CategoricalEncoder
from ctr.data.raw import (BAD_SHARE_MIN_ROWS, BLOCK_BYTES, RawInputError, RawReader,
                         check_bad_share, detect_format)
from ctr.data.transforms import DenseStats, apply_dense_transform, check_transform

SPLIT_KINDS = ("random", "sequential", "files")
DEFAULT_SPLIT = "random:0.9,0.1"
MAX_LISTED_BAD = 20
_DAY_NAME = re.compile(r"day_(\d+)(?:\.[A-Za-z0-9]+)*")   # Criteo 1TB's day_N, day_N.gz
SPLIT_NAMES = {1: ("train",), 2: ("train", "test"), 3: ("train", "valid", "test")}


@dataclass(frozen=True)
class SplitSpec:
    """How rows are cut into splits: ``random`` / ``sequential`` by ``ratios`` of all rows, or
    ``files`` by whole input files (``files``: how many consecutive inputs each split takes)."""

    kind: str                     # random | sequential | files
    names: tuple[str, ...]        # ("train", "test") or ("train", "valid", "test") or ("train",)
    ratios: tuple[float, ...]     # random, sequential: the share of each split; files: ()
    files: tuple[int, ...] = ()   # files: input files per split, in input order

    def text(self) -> str:
        """The ``--split`` value this spec is (for messages)."""
        parts = self.files if self.kind == "files" else self.ratios
        return f"{self.kind}:" + ",".join(f"{x:g}" for x in parts)

    def sizes(self, n: int, rows_per_input: Sequence[int] | None = None) -> list[int]:
        """Exact rows per split. By ratios: ``round(ratio * n)`` (half up), the last takes the
        rest. By files: the rows of each split's files (``rows_per_input``, one per input)."""
        if self.kind == "files":
            if rows_per_input is None or len(rows_per_input) != sum(self.files):
                raise ValueError(f"split {self.text()!r} needs the rows of its "
                                 f"{sum(self.files)} input files")
            edges = np.cumsum((0,) + self.files)
            return [int(sum(rows_per_input[edges[k]:edges[k + 1]])) for k in range(len(self.files))]
        sizes = [int(math.floor(r * n + 0.5)) for r in self.ratios[:-1]]
        sizes = [min(s, n - sum(sizes[:i])) for i, s in enumerate(sizes)]
        return sizes + [n - sum(sizes)]

    def check_inputs(self, inputs: Sequence[str]) -> None:
        """A ``files`` split must name every input exactly once, and Criteo-1TB-style
        ``day_N`` inputs must come in day order: ``ValueError`` otherwise. The second check
        is there because a shell glob sorts ``day_10`` before ``day_2``, and ``day_*`` with
        ``files:23,1`` would then quietly test on ``day_9``."""
        if self.kind != "files":
            return
        if sum(self.files) != len(inputs):
            raise ValueError(f"--split {self.text()}: the counts add up to {sum(self.files)} "
                             f"files, but {len(inputs)} input(s) were given "
                             f"(e.g. files:{max(1, len(inputs) - 1)},1 puts the last input in test)")
        days = [_DAY_NAME.fullmatch(os.path.basename(p)) for p in inputs]
        if all(days):
            numbers = [int(m.group(1)) for m in days if m]
            if numbers != sorted(numbers):
                shown = ", ".join(os.path.basename(p) for p in inputs[:4])
                raise ValueError(f"--split {self.text()}: the day files are not in day order "
                                 f"({shown}, ...; a shell glob such as day_* sorts day_10 before "
                                 "day_2): list them in order, e.g. day_{0..23}.gz")

    def meta(self, seed: int, n: int, inputs: Sequence[str] | None = None,
             rows_per_input: Sequence[int] | None = None) -> dict[str, Any]:
        sizes = dict(zip(self.names, self.sizes(n, rows_per_input)))
        if self.kind == "files":
            assert inputs is not None
            edges = np.cumsum((0,) + self.files)
            return {"kind": "files", "files": {name: [os.path.basename(p) for p in
                                                      inputs[edges[k]:edges[k + 1]]]
                                               for k, name in enumerate(self.names)},
                    "seed": seed, "sizes": sizes}
        return {"kind": self.kind, "ratios": dict(zip(self.names, self.ratios)), "seed": seed,
                "sizes": sizes}


def parse_split(spec: str) -> SplitSpec:
    """``random:0.9,0.1`` | ``random:0.8,0.1,0.1`` | ``sequential:...`` | ``random`` (90/10) |
    ``files:23,1`` (the first 23 inputs train, the last one test) | ``files:22,1,1``.

    ``files:`` cuts at input-file boundaries, for a log split by time into files such as Criteo
    1TB's ``day_0 .. day_23``: TorchRec's DLRM example trains on the first days and tests on the
    last, which ratios of the total rows cannot express exactly (a day's rows are not known
    before reading it). The counts are consecutive inputs in the order given and must add up to
    the number of inputs (checked by :meth:`SplitSpec.check_inputs`)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split {spec!r}: kind must be one of {SPLIT_KINDS}, e.g. random:0.9,0.1 "
                         "or files:23,1")
    if kind == "files":
        try:
            counts = tuple(int(x) for x in rest.split(",")) if rest.strip() else ()
        except ValueError:
            raise ValueError(f"split {spec!r}: files: takes whole numbers of input files, e.g. "
                             "files:23,1 (train = the first 23 inputs, test = the last)") from None
        if not 1 <= len(counts) <= 3 or any(c < 1 for c in counts):
            raise ValueError(f"split {spec!r}: give 1 (train), 2 (train,test) or 3 "
                             "(train,valid,test) file counts, each at least 1, e.g. files:23,1")
        return SplitSpec(kind, SPLIT_NAMES[len(counts)], (), counts)
    try:
        ratios = tuple(float(x) for x in rest.split(",") if x.strip()) if rest.strip() else (0.9, 0.1)
    except ValueError:
        raise ValueError(f"split {spec!r}: ratios must be numbers, e.g. random:0.8,0.1,0.1") from None
    if not 1 <= len(ratios) <= 3:
        raise ValueError(f"split {spec!r}: give 1 (train), 2 (train,test) or 3 (train,valid,test) ratios")
    if any(r < 0 or not math.isfinite(r) for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split {spec!r}: ratios must be >= 0 and sum to 1 (they sum to {sum(ratios):g})")
    return SplitSpec(kind, SPLIT_NAMES[len(ratios)], ratios)


def _prefetch(make: Callable[[], Iterable], depth: int = 2) -> Iterator:
    """Runs ``make()``'s iterator in a background thread, ``depth`` items ahead.

    Exceptions are re-raised in the consumer; closing the consumer stops the producer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(make())
        try:
            for item in it:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, name="ctr-preprocess-reader", daemon=True)
    t.start()
    try:
        while True:
            kind, val = q.get()
            if kind == "item":
                yield val
            elif kind == "done":
                return
            else:
                raise val
    finally:
        stop.set()
        t.join()


class _Progress:
    """A tqdm bar by raw bytes with rows/s, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        self.rows = 0
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.rows:,} rows, {self.rate:,.0f} rows/s", refresh=False)
            self.bar.update(nbytes)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _encoding_kind(encoding: str | None, min_count: int | None, hash_buckets: int | None) -> str:
    if min_count is not None and hash_buckets is not None:
        raise ValueError("--min-count and --hash-buckets are mutually exclusive")
    implied = "min_count" if min_count is not None else "hash" if hash_buckets is not None else None
    if encoding in (None, "auto"):
        return implied or "label"
    if implied and encoding != implied:
        raise ValueError(f"encoding {encoding!r} contradicts "
                         f"{'--min-count' if min_count is not None else '--hash-buckets'}")
    if encoding == "min_count" and min_count is None:
        raise ValueError("encoding 'min_count' needs --min-count K")
    if encoding == "hash" and hash_buckets is None:
        raise ValueError("encoding 'hash' needs --hash-buckets N")
    return encoding


def preprocess(inputs: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
               fmt: str = "auto", labels: Sequence[str | os.PathLike] | str | None = None,
               split: str | SplitSpec = DEFAULT_SPLIT, seed: int = 0, dense: str = "minmax",
               encoding: str | None = None, min_count: int | None = None,
               hash_buckets: int | None = None, skip_bad_rows: bool = False,
               overwrite: bool = False, progress: bool = True, block_bytes: int = BLOCK_BYTES,
               rows_per_file: int = 4_000_000, parse_threads: bool = True,
               avazu_hour: str = "raw", stats: dict[str, Any] | None = None,
               row_group_rows: int = ROW_GROUP_ROWS) -> dict[str, Any]:
    """Builds the processed dataset ``out`` from raw ``inputs``; returns its ``meta.json``.

    ``avazu_hour``: ``"raw"`` keeps Avazu's ``YYMMDDHH`` as one field (the reference's 22),
    ``"split"`` makes it hour of day plus ``weekday``; recorded per source in ``meta.json``.

    Raises :class:`RawInputError` for bad input (unless ``skip_bad_rows``),
    :class:`FileExistsError` if ``out`` exists and not ``overwrite``, :class:`ValueError`
    for bad options. Nothing is left at ``out`` unless the whole run succeeds.
    ``stats``, if given, receives per-pass timings (for the benchmark). ``row_group_rows``:
    rows per Parquet row group (:class:`~ctr.data.dataset.DatasetWriter`).
    """
    t_start = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    names: list[str] = [str(p) for p in inputs]
    inputs = names
    if not inputs:
        raise ValueError("no input files")
    if isinstance(labels, (str, os.PathLike)):
        labels = [labels]
    labels = [str(p) for p in labels] if labels else None
    if labels is not None and len(labels) != len(inputs):
        raise ValueError(f"{len(labels)} labels files for {len(inputs)} inputs; give one per input")
    spec = split if isinstance(split, SplitSpec) else parse_split(split)
    spec.check_inputs(names)
    check_transform(dense)
    kind = _encoding_kind(encoding, min_count, hash_buckets)
    if kind == "min_count" and (min_count is None or min_count < 1):
        raise ValueError("--min-count must be >= 1")
    if kind == "hash" and (hash_buckets is None or hash_buckets < 1):
        raise ValueError("--hash-buckets must be >= 1")

    fmts = [detect_format(p, fmt, labels[i] if labels else None, avazu_hour=avazu_hour)
            for i, p in enumerate(inputs)]
    first = fmts[0]
    for fm in fmts[1:]:
        if fm.layout() != first.layout():
            raise RawInputError(f"{fm.path}: its columns ({fm.name}, label "
                                f"{'yes' if fm.has_label else 'no'}, {len(fm.dense)} dense, "
                                f"{len(fm.sparse)} categorical) differ from {first.path}'s "
                                f"({first.name}, label {'yes' if first.has_label else 'no'}, "
                                f"{len(first.dense)} dense, {len(first.sparse)} categorical)")
    dense_fields, sparse_fields = list(first.dense), list(first.sparse)
    labelled = first.has_label
    total_bytes = sum(os.path.getsize(f.path) for f in fmts)

    with DatasetWriter(out, overwrite=overwrite, rows_per_file=rows_per_file,
                       protect=inputs + (labels or []), row_group_rows=row_group_rows) as writer:
        # ---------------------------------------------------------------- pass 1
        encoder = CategoricalEncoder(sparse_fields, kind=kind, min_count=min_count or 1,
                                     buckets=hash_buckets)
        dstats = DenseStats(dense_fields)
        rows_per_input: list[int] = []
        bad_count = 0
        bad_listed: list[dict[str, Any]] = []
        positives = 0.0
        bar = _Progress(progress, total_bytes, "pass 1/2 count")
        try:
            for fm in fmts:
                reader = RawReader(fm, skip_bad_rows, block_bytes, include_sparse=encoder.needs_counts,
                                   parse_threads=parse_threads)
                n_file, bad_file, first_bad, last_pos = 0, 0, None, 0
                for blk in _prefetch(reader.blocks):
                    n = blk.num_rows
                    n_file += n
                    bad_file += len(blk.bad)
                    first_bad = first_bad or (blk.bad[0] if blk.bad else None)
                    if n_file + bad_file >= BAD_SHARE_MIN_ROWS:
                        check_bad_share(fm, n_file, bad_file, first_bad)
                    if n and dense_fields:
                        dstats.update(blk.dense)
                    if n and encoder.needs_counts:
                        for f in sparse_fields:
                            encoder.count(f, blk.sparse[f])
                    if blk.label is not None:
                        positives += float(blk.label.sum(dtype=np.float64))
                    for line, problem in blk.bad:
                        bad_count += 1
                        if len(bad_listed) < MAX_LISTED_BAD:
                            bad_listed.append({"path": fm.path, "line": line, "problem": problem})
                    bar.update(blk.raw_pos - last_pos, n)
                    last_pos = blk.raw_pos
                check_bad_share(fm, n_file, bad_file, first_bad)
                rows_per_input.append(n_file)
        finally:
            bar.close()
        pass1 = {"seconds": bar.seconds, "rows_per_s": bar.rate}
        n_total = sum(rows_per_input)
        if n_total == 0:
            raise RawInputError(f"{first.path}: no usable rows (all {bad_count} rows are bad)")
        t = time.perf_counter()
        encoder.finalize()
        vocab_sizes = encoder.vocab_sizes()
        dense_params = dstats.params(dense)
        sizes = spec.sizes(n_total, rows_per_input)
        assign = None
        if spec.kind == "random" and len(sizes) > 1:
            assign = np.repeat(np.arange(len(sizes), dtype=np.uint8), sizes)
            np.random.default_rng(seed).shuffle(assign)
        finalize_s = time.perf_counter() - t

        # ---------------------------------------------------------------- pass 2
        bar = _Progress(progress, total_bytes, "pass 2/2 write")
        bounds = np.cumsum([0] + sizes)  # sequential, files: split k holds rows [bounds[k], bounds[k+1])
        row = 0
        try:
            for fm, n_expected in zip(fmts, rows_per_input):
                reader = RawReader(fm, skip_bad_rows, block_bytes, include_sparse=True,
                                   parse_threads=parse_threads)
                n_file, last_pos = 0, 0
                for blk in _prefetch(reader.blocks):
                    n = blk.num_rows
                    if n_file + n > n_expected:
                        raise RawInputError(f"{fm.path}: has more rows than in the first pass "
                                            "(did the file change during the run?)")
                    n_file += n
                    if n:
                        table = _encode_block(blk, encoder, dense, dense_params, dense_fields,
                                              sparse_fields, labelled)
                        _write_split(writer, spec, table, row, assign, bounds)
                    row += n
                    bar.update(blk.raw_pos - last_pos, n)
                    last_pos = blk.raw_pos
                if n_file != n_expected:
                    raise RawInputError(f"{fm.path}: {n_file} rows in the second pass, {n_expected} "
                                        "in the first (did the file change during the run?)")
        finally:
            bar.close()
        pass2 = {"seconds": bar.seconds, "rows_per_s": bar.rate}

        meta: dict[str, Any] = {
            "dataset": first.dataset,
            "label": LABEL if labelled else None,
            "dense_fields": dense_fields,
            "sparse_fields": sparse_fields,
            "vocab_sizes": vocab_sizes,
            "split": spec.meta(seed, n_total, names, rows_per_input),
            "dense_transform": {"kind": dense, "params": dense_params},
            "categorical_encoding": encoder.meta(),
            "sources": [dict({"path": os.path.abspath(fm.path), "bytes": os.path.getsize(fm.path),
                              "rows": r}, **fm.describe())
                        for fm, r in zip(fmts, rows_per_input)],
            "seed": seed,
            "bad_rows": {"count": bad_count, "first_lines": [b["line"] for b in bad_listed],
                         "first": bad_listed},
            "format": first.name if len({f.name for f in fmts}) == 1 else [f.name for f in fmts],
            "rows_total": n_total,
            "seconds": round(time.perf_counter() - t_start, 3),
        }
        if labels:
            for src, lp in zip(meta["sources"], labels):
                src["labels_bytes"] = os.path.getsize(lp)
        if not labelled:
            meta["positive_rate"] = None
        writer.commit(meta)
    if stats is not None:
        stats.update(pass1=pass1, pass2=pass2, finalize_seconds=finalize_s,
                     seconds=time.perf_counter() - t_start, rows=n_total, bytes=total_bytes,
                     positives=positives)
    return read_meta(out)


def _encode_block(blk, encoder: CategoricalEncoder, dense: str, dense_params: dict,
                  dense_fields: list[str], sparse_fields: list[str], labelled: bool) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    if labelled:
        cols[LABEL] = pa.array(blk.label.astype(np.float32, copy=False))
    if dense_fields:
        x = apply_dense_transform(blk.dense, dense, dense_params, dense_fields)
        xt = np.ascontiguousarray(x.T)
        for j, f in enumerate(dense_fields):
            cols[f] = pa.array(xt[j])
    for f in sparse_fields:
        cols[f] = pa.array(encoder.encode(f, blk.sparse[f]))
    return pa.table(cols)


def _write_split(writer: DatasetWriter, spec: SplitSpec, table: pa.Table, row: int,
                 assign: np.ndarray | None, bounds: np.ndarray) -> None:
    """Writes the block holding global rows ``[row, row + n)`` into its splits."""
    n = table.num_rows
    if len(spec.names) == 1:
        writer.write(spec.names[0], table)
        return
    if assign is None:  # sequential, files: consecutive row ranges
        for k, name in enumerate(spec.names):
            lo, hi = max(bounds[k], row), min(bounds[k + 1], row + n)
            if hi > lo:
                writer.write(name, table.slice(lo - row, hi - lo))
        return
    tags = assign[row:row + n]
    order = np.argsort(tags, kind="stable")  # file order kept inside each split
    counts = np.bincount(tags, minlength=len(spec.names))
    grouped = table.take(pa.array(order))
    start = 0
    for k, name in enumerate(spec.names):
        if counts[k]:
            writer.write(name, grouped.slice(start, int(counts[k])))
        start += int(counts[k])


def format_summary(meta: dict[str, Any], out: str | os.PathLike | None = None) -> str:
    """A few human lines: where, rows per split, positive rate, vocabularies, bad rows, time."""
    lines = []
    where = f" -> {out}" if out is not None else ""
    fmt = meta.get("format")
    lines.append(f"{meta.get('dataset')} ({fmt if isinstance(fmt, str) else '+'.join(fmt or [])}): "
                 f"{meta.get('rows_total', 0):,} rows from {len(meta.get('sources', []))} "
                 f"file(s){where} in {meta.get('seconds', 0):.1f} s")
    parts = []
    for name, s in meta.get("splits", {}).items():
        pr = f", positive rate {s['positive_rate']:.4f}" if "positive_rate" in s else ""
        parts.append(f"{name} {s['rows']:,}{pr}")
    for alias, target in meta.get("split_aliases", {}).items():
        parts.append(f"{alias} = {target}")
    lines.append("splits: " + "; ".join(parts))
    if meta.get("positive_rate") is not None:
        lines.append(f"positive rate: {meta['positive_rate']:.4f}")
    else:
        lines.append("no label column (unlabelled input)")
    vs = meta.get("vocab_sizes", {})
    enc = meta.get("categorical_encoding", {})
    kind = enc.get("kind", "?")
    enc_s = (f"min_count={enc.get('min_count')}" if kind == "min_count"
             else f"hash, {enc.get('buckets')} buckets" if kind == "hash" else "label encoding")
    lines.append(f"vocabularies ({enc_s}, total {sum(vs.values()):,}): "
                 + ", ".join(f"{k} {v:,}" for k, v in vs.items()))
    lines.append(f"dense: {len(meta.get('dense_fields', []))} fields, "
                 f"{meta.get('dense_transform', {}).get('kind')}")
    bad = meta.get("bad_rows", {})
    if bad.get("count"):
        first = bad.get("first") or [{"line": ln, "path": "", "problem": ""} for ln in bad.get("first_lines", [])]
        shown = "; ".join(f"{Path(b['path']).name}:{b['line']} {b['problem']}".strip() for b in first[:5])
        more = "" if bad["count"] <= 5 else f" (first {min(len(first), 5)} shown, lines listed in meta.json)"
        lines.append(f"skipped {bad['count']:,} bad rows: {shown}{more}")
    return "\n".join(lines)
