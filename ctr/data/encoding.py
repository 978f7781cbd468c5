"""Categorical encoding: raw strings -> 64-bit keys -> per-field vocabularies -> int32 ids.

Raw categorical values (Criteo's 8-hex-digit hashes, Avazu's ids and small integers) are
turned into ``uint64`` keys without a Python loop per value:

- a string of at most 14 lowercase hex digits (``0-9a-f``; decimal integers are such strings
  too) becomes ``(len << 56) | int(s, 16)``; the length keeps ``"0a"`` and ``"a"`` apart and
  bit 63 stays clear;
- any other string (longer, upper case, ``-1``, free text) becomes a 64-bit hash of its
  bytes (``pandas.util.hash_array``, fixed key) with bit 63 set, so the two kinds never
  collide;
- the empty string and null become key ``0``: *missing*, always id ``0``.

Only the distinct values of a block are converted: a block's column is first
dictionary-encoded by Arrow (hash table in C++), so the per-value work is one gather.

A :class:`FieldVocab` counts keys over a stream of blocks (sorted unique keys + counts,
merged with numpy in amortised batches, fine for ~10M distinct keys in a field) and is then
frozen into ids: by descending count, ties by ascending key, so ids are deterministic and
contiguous ``1..V-1`` (``0`` = missing or rare). That rule is :func:`frequency_ids`, also used
by the synthetic generator (:mod:`ctr.data.synth.dataset`) on its own counts, so both
producers label-encode alike. :class:`CategoricalEncoder` holds one per field and implements
the three encodings:

- ``label``: every value seen gets an id (the paper's full label encoding);
- ``min_count``: values seen fewer than ``min_count`` times map to ``0`` (BARS protocol);
- ``hash``: ``1 + hash(key) % buckets`` (no counting pass needed); ``V = buckets + 1``.

Example::

    enc = CategoricalEncoder(["C1", "C2"], kind="label")
    for block in blocks: enc.count("C1", block["C1"])       # pass 1: pa.Array of strings
    enc.finalize()
    ids = enc.encode("C1", block["C1"])                     # pass 2: int32 numpy array
    enc.vocab_sizes()                                       # {"C1": V, ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ENCODINGS = ("label", "min_count", "hash")
HASHED_BIT = np.uint64(1 << 63)
MAX_HEX_LEN = 14  # 14 nibbles = 56 bits, the length goes in bits 56..59

_NIB = np.full(256, 255, dtype=np.uint8)
for _c in b"0123456789":
    _NIB[_c] = _c - ord("0")
for _c in b"abcdef":
    _NIB[_c] = _c - ord("a") + 10


def _as_binary(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any string-like or integer Arrow array -> one contiguous ``binary`` array."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_binary(t):
        return arr
    if pa.types.is_string(t):
        return arr.view(pa.binary())
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t) or pa.types.is_null(t):
        return arr.cast(pa.binary())
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return arr.cast(pa.string()).cast(pa.binary())
    if pa.types.is_floating(t):  # integers stored as floats: 260.0 -> "260"
        vals = arr.to_numpy(zero_copy_only=False)
        whole = np.isfinite(vals) & (np.floor(vals) == vals)
        if bool(np.all(whole | np.isnan(vals))):
            ints = pa.array(np.where(whole, vals, 0).astype(np.int64), mask=~whole)
            return ints.cast(pa.string()).cast(pa.binary())
        return arr.cast(pa.string()).cast(pa.binary())
    return arr.cast(pa.string()).cast(pa.binary())


def string_keys(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The ``uint64`` key of every value of a string/binary array (0 = empty or null)."""
    arr = _as_binary(arr)
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    if bufs[2] is not None and bufs[2].size > 0:
        data = np.frombuffer(bufs[2], dtype=np.uint8)
    else:
        data = np.zeros(1, dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lens = np.diff(offsets).astype(np.int64)
    if arr.null_count:
        lens[~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)] = 0
    short = lens <= MAX_HEX_LEN
    width = int(lens[short].max()) if short.any() else 0
    val = np.zeros(n, dtype=np.uint64)
    bad = ~short
    for j in range(width):  # one pass per character position, vectorised over values
        inside = short & (lens > j)
        nib = _NIB[data[np.where(inside, starts + j, 0)]]
        bad |= inside & (nib == 255)
        val = (val << np.uint64(4)) | np.where(inside, nib, 0).astype(np.uint64)
    val >>= (4 * (width - np.minimum(lens, width))).astype(np.uint64)  # right-align
    keys = (lens.astype(np.uint64) << np.uint64(56)) | val
    if bad.any():
        idx = np.flatnonzero(bad)
        objs = arr.take(pa.array(idx)).to_numpy(zero_copy_only=False).astype(object)
        import pandas as pd  # only for values that are not short hex (keeps imports light)
        keys[idx] = pd.util.hash_array(objs, categorize=False) | HASHED_BIT
    return keys


def dictionary_keys(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys of the distinct values, index of each value into them)``; the work per value
    is Arrow's hash table, the key conversion runs on the distinct values only."""
    arr = _as_binary(arr)
    enc = pc.dictionary_encode(arr, null_encoding="encode")
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    index = enc.indices.to_numpy(zero_copy_only=False)
    return string_keys(enc.dictionary), index


def hash_keys(keys: np.ndarray, buckets: int) -> np.ndarray:
    """``1 + splitmix64(key) % buckets`` as int32, key 0 (missing) -> 0."""
    x = keys.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    ids = (x % np.uint64(buckets)).astype(np.int64) + 1
    ids[keys == 0] = 0
    return ids.astype(np.int32)


def frequency_ids(counts: np.ndarray, min_count: int = 1) -> tuple[np.ndarray, int]:
    """Label encoding by frequency: ``(ids, V)`` for entries ``0..n-1`` with ``counts``.

    Entries seen at least ``max(min_count, 1)`` times get ids ``1..V-1`` by descending count,
    ties by ascending position; the others get ``0``. ``V`` = ids given + 1 (the embedding
    table's rows, id 0 included). Callers order the entries by key first (a
    :class:`FieldVocab`'s sorted keys, the synthetic generator's raw ids), so ties go by key::

        frequency_ids(np.array([5, 0, 7, 5]))      # (array([2, 0, 1, 3], dtype=int32), 4)
    """
    counts = np.asarray(counts)
    kept = np.flatnonzero(counts >= max(int(min_count), 1))
    if len(kept) >= 2**31 - 1:
        raise ValueError(f"vocabulary of {len(kept)} ids does not fit int32")
    order = kept[np.argsort(-counts[kept], kind="stable")]  # count desc; stable: position asc
    ids = np.zeros(len(counts), dtype=np.int32)
    ids[order] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return ids, len(kept) + 1


class FieldVocab:
    """Counts of the keys of one field over a stream, then a frozen key -> id table."""

    def __init__(self, merge_at: int = 1 << 22):
        self.keys = np.empty(0, dtype=np.uint64)    # sorted, unique, no 0
        self.counts = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._merge_at = merge_at
        self.ids: np.ndarray | None = None          # int32 id of each key once frozen
        self.size = 1                               # V, id 0 included

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Adds ``counts`` occurrences of ``keys`` (unique within one call; key 0 ignored)."""
        if self.ids is not None:
            raise RuntimeError("vocabulary is frozen")
        keep = keys != 0
        if not keep.all():
            keys, counts = keys[keep], counts[keep]
        if len(keys) == 0:
            return
        self._pending.append((keys.astype(np.uint64, copy=False), counts.astype(np.int64, copy=False)))
        self._pending_n += len(keys)
        if self._pending_n >= max(self._merge_at, len(self.keys)):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [k for k, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self._pending, self._pending_n = [], 0
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        del order
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        self.keys = keys[starts]
        self.counts = np.add.reduceat(counts, starts) if len(counts) else counts

    @property
    def distinct(self) -> int:
        self._merge()
        return len(self.keys)

    def freeze(self, min_count: int = 1) -> None:
        """Assigns ids ``1..`` by descending count, ties by ascending key; keys seen fewer
        than ``min_count`` times get ``0`` and no row in the embedding table."""
        self._merge()
        self.ids, self.size = frequency_ids(self.counts, min_count)  # keys are sorted ascending

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """int32 ids of ``keys``; missing (0), unseen and rare keys -> 0."""
        if self.ids is None:
            raise RuntimeError("vocabulary not frozen; call freeze() first")
        if len(self.keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=np.int32)
        order = np.argsort(keys)  # sorted queries walk the big table cache-friendly
        sk = keys[order]
        pos = np.searchsorted(self.keys, sk)
        np.minimum(pos, len(self.keys) - 1, out=pos)
        found = self.keys[pos] == sk
        out = np.empty(len(keys), dtype=np.int32)
        out[order] = np.where(found, self.ids[pos], 0)
        return out


class CategoricalEncoder:
    """Per-field vocabularies and the chosen encoding (``label``, ``min_count``, ``hash``)."""

    def __init__(self, fields: list[str], kind: str = "label", min_count: int = 1,
                 buckets: int | None = None):
        if kind not in ENCODINGS:
            raise ValueError(f"unknown categorical encoding {kind!r}; choose one of {ENCODINGS}")
        if kind == "hash" and (buckets is None or buckets < 1):
            raise ValueError("hash encoding needs buckets >= 1")
        if kind == "min_count" and min_count < 1:
            raise ValueError("min_count must be >= 1")
        self.fields = list(fields)
        self.kind = kind
        self.min_count = int(min_count) if kind == "min_count" else 1
        self.buckets = int(buckets) if kind == "hash" and buckets is not None else None
        self.vocabs = {f: FieldVocab() for f in self.fields} if kind != "hash" else {}
        self.frozen = kind == "hash"

    @property
    def needs_counts(self) -> bool:
        """Whether pass 1 must see the categorical columns (not for hashing)."""
        return self.kind != "hash"

    def count(self, field: str, values: pa.Array | pa.ChunkedArray) -> None:
        """Pass 1: counts the values of one block's column."""
        if not self.needs_counts:
            return
        keys, index = dictionary_keys(values)
        counts = np.bincount(index, minlength=len(keys))
        self.vocabs[field].add(keys, counts)

    def finalize(self) -> None:
        """Freezes every vocabulary into ids (call between the passes)."""
        for v in self.vocabs.values():
            v.freeze(self.min_count)
        self.frozen = True

    def encode_keys(self, field: str, keys: np.ndarray) -> np.ndarray:
        if self.buckets is not None:  # kind == "hash"
            return hash_keys(keys, self.buckets)
        return self.vocabs[field].lookup(keys)

    def encode(self, field: str, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Pass 2: the int32 ids of one block's column."""
        if not self.frozen:
            raise RuntimeError("encoder not finalized; call finalize() after the counting pass")
        keys, index = dictionary_keys(values)
        return self.encode_keys(field, keys)[index]

    def vocab_sizes(self) -> dict[str, int]:
        """``{field: V}``, id 0 included (the embedding table's row count)."""
        if self.buckets is not None:  # kind == "hash"
            return {f: self.buckets + 1 for f in self.fields}
        return {f: int(self.vocabs[f].size) for f in self.fields}

    def distinct_counts(self) -> dict[str, int]:
        """Distinct non-missing values seen per field (before any min-count cut)."""
        return {f: self.vocabs[f].distinct for f in self.vocabs}

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "min_count": self.min_count if self.kind == "min_count" else None,
                "buckets": self.buckets}
