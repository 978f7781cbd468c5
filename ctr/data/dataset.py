"""The processed dataset: its on-disk layout, its ``meta.json``, and its atomic writer.

Every producer (``ctr-preprocess`` from raw logs, the synthetic generator) writes through
:class:`DatasetWriter`, and every consumer (the loader, ``ctr-train``, ``ctr-eval``) reads
through :func:`read_schema` (the typed :class:`DatasetSchema`, read and checked once), so the
format lives in this one file::

    DIR/
      meta.json               schema version, fields, vocabularies, splits, transforms ...
      train/part-00000.parquet  label float32 | I1..I13 float32 | C1..C26 int32
      train/part-00001.parquet
      test/part-00000.parquet
      (valid/ only when it differs from test; else meta["split_aliases"]["valid"] == "test")

Categorical columns hold contiguous ids ``1..V-1`` per field with ``0`` reserved for
missing/rare, so ``vocab_sizes[field] == V`` is the embedding table's row count.

Row groups hold exactly ``row_group_rows`` rows (:data:`ROW_GROUP_ROWS`, 64Ki by default;
a file's last group may be shorter), whatever the sizes of the tables handed to
:meth:`DatasetWriter.write`; ``meta.json`` records it and each split's ``row_groups``. A row
group is the unit the streaming loader (:mod:`ctr.data.stream`) gives to a rank: 64Ki rows
(~10 MB in memory for Criteo's 40 columns) make 14 groups of a 1M-row demo split's 900K
training rows, ~630 of Criteo Kaggle's and ~67K of Criteo 1TB's, so 8+ ranks each get
several, while a group stays large enough to read efficiently.

The writer builds everything in a hidden temporary directory beside ``DIR``
(``.DIR.tmp-<pid>-<hex>``, :func:`ctr.fsutil.temp_path`) and renames it into place only when
:meth:`DatasetWriter.commit` is called, so a killed run never leaves anything that looks like a
dataset; the next writer of ``DIR`` removes such leftovers once their process is gone.
``overwrite`` replaces only what :func:`check_replaceable` recognises as a dataset (meta.json
with a schema version, split directories of ``part-*.parquet``), never other files, and no
writer touches a directory that holds one of its ``protect`` paths (its inputs).

Example::

    with DatasetWriter("data/mine", overwrite=False) as w:
        w.write("train", table)          # any number of pyarrow Tables per split
        w.commit(meta)                   # meta.json written, directory renamed into place
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctr.faults import fault_point
from ctr.fsutil import clean_stale_temps, temp_path, write_json_atomic  # write_json_atomic: re-exported

SCHEMA_VERSION = 1
META_FILE = "meta.json"
LABEL = "label"
SPLITS = ("train", "valid", "test")
ROW_GROUP_ROWS = 1 << 16   # rows per Parquet row group (see the module docstring)

# Criteo's field names, defined here once (ctr.data.raw.criteo and ctr.data.synth import them)
CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
_PART_FILE = re.compile(r"^part-\d+\.parquet$")


class DatasetError(Exception):
    """A processed dataset is missing, malformed, or of an unknown schema version."""


class UnsafeOutputError(FileExistsError):
    """The output path exists and is not ours to replace (not a dataset, or holds an input)."""


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks ``DIR/meta.json``; raises :class:`DatasetError` naming the problem."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{data_dir}: not a processed dataset (no {META_FILE}); "
                           "make one with `ctr-preprocess`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: must hold a JSON object, not {type(meta).__name__}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version!r}, this ctr reads {SCHEMA_VERSION}")
    problem = _meta_problem(meta)
    if problem:
        raise DatasetError(f"{path}: {problem}; the dataset is damaged, rebuild it with "
                           "`ctr-preprocess`")
    return meta


@dataclass(frozen=True)
class SplitInfo:
    """One stored split: its row count and Parquet files (relative to the dataset directory);
    its positives when the writer counted them (every labelled dataset ctr writes)."""

    rows: int
    files: tuple[str, ...]
    positives: int | None = None


@dataclass(frozen=True)
class DatasetSchema:
    """A processed dataset's ``meta.json``, checked and typed: what every consumer reads.

    The fields a consumer needs are typed attributes; the whole record (sources, transforms,
    the synthetic generator's parameters, ...) stays in :attr:`meta` for provenance.

    Example::

        ds = read_schema("data/criteo")
        ds.sparse_fields, ds.vocab_sizes["C1"], ds.rows("train")
        files = ds.split_files("valid")     # valid -> test under the paper's 90/10 protocol
    """

    path: Path
    family: str                      # "criteo", "avazu", "synthetic": selects configs/<family>
    label: str | None                # None for a dataset made from unlabelled input
    dense_fields: tuple[str, ...]
    sparse_fields: tuple[str, ...]
    vocab_sizes: Mapping[str, int]   # field -> rows of its table (id 0 = missing / rare)
    splits: Mapping[str, SplitInfo]
    split_aliases: Mapping[str, str]
    oracle_test_auc: float | None    # the synthetic data's true-probability AUC on test
    meta: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_meta(cls, data_dir: str | os.PathLike, meta: dict[str, Any]) -> "DatasetSchema":
        """The schema of an already checked ``meta`` (:func:`read_meta`'s result)."""
        oracle = meta.get("oracle")
        auc = oracle.get("test_auc") if isinstance(oracle, dict) else None
        return cls(path=Path(data_dir), family=str(meta.get("dataset") or "criteo"),
                   label=meta.get("label") or None,
                   dense_fields=tuple(meta["dense_fields"]), sparse_fields=tuple(meta["sparse_fields"]),
                   vocab_sizes=MappingProxyType({f: int(meta["vocab_sizes"][f])
                                                 for f in meta["sparse_fields"]}),
                   splits=MappingProxyType({name: SplitInfo(int(s["rows"]), tuple(s["files"]),
                                                            _count_or_none(s.get("positives")))
                                            for name, s in meta["splits"].items()}),
                   split_aliases=MappingProxyType(dict(meta.get("split_aliases", {}))),
                   oracle_test_auc=float(auc) if isinstance(auc, (int, float)) else None,
                   meta=MappingProxyType(meta))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row held in memory: float32 label and dense values, int32 ids."""
        return 4 * (1 + len(self.dense_fields) + len(self.sparse_fields))

    @property
    def table_rows(self) -> int:
        """Rows of all embedding tables together (one table per sparse field)."""
        return sum(self.vocab_sizes.values())

    def resolve_split(self, split: str) -> str:
        """Maps an alias (``valid`` -> ``test`` under the paper's 90/10 protocol) to a stored split."""
        name = self.split_aliases.get(split, split)
        if name not in self.splits:
            raise DatasetError(f"{self.path}: split {name!r} not in dataset (has {sorted(self.splits)})")
        return name

    def same_split(self, a: str, b: str) -> bool:
        """Whether two split names (aliases resolved) are stored as one split."""
        return self.resolve_split(a) == self.resolve_split(b)

    def rows(self, split: str) -> int:
        return self.splits[self.resolve_split(split)].rows

    def split_files(self, split: str) -> list[Path]:
        """The Parquet files of one split, in order; a missing one is a :class:`DatasetError`."""
        name = self.resolve_split(split)
        files = [self.path / f for f in self.splits[name].files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"{self.path}: split {name!r} lists missing files {missing}")
        return files

    def positive_rate(self, split: str) -> float:
        """The split's share of positive labels: from ``meta.json`` when the writer counted it,
        else by one pass over the label column only (a dataset written by another tool)."""
        info = self.splits[self.resolve_split(split)]
        if info.positives is not None and info.rows:
            return info.positives / info.rows
        total, rows = 0.0, 0
        for path in self.split_files(split):
            try:
                col = pq.read_table(path, columns=[LABEL]).column(LABEL)
            except (OSError, pa.ArrowException, KeyError) as e:
                raise DatasetError(f"{path}: cannot read its label column ({e})") from e
            total += float(pc.sum(col).as_py() or 0.0)
            rows += len(col)
        return total / rows if rows else 0.0

    def require_label(self) -> None:
        """Raises unless the dataset has labels (one made from unlabelled input cannot be trained)."""
        if not self.label:
            raise DatasetError(f"{self.path}: dataset has no label column (made from unlabelled "
                               "input); it cannot be trained or evaluated on")


def _count_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None


def read_schema(data_dir: str | os.PathLike) -> DatasetSchema:
    """Reads and checks ``DIR/meta.json`` once; raises :class:`DatasetError` naming the problem."""
    return DatasetSchema.from_meta(data_dir, read_meta(data_dir))


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """The first structural fault of a meta.json that consumers would trip over later."""
    for key in ("dense_fields", "sparse_fields", "vocab_sizes", "splits"):
        if key not in meta:
            return f"field {key!r} is missing"
    for key in ("dense_fields", "sparse_fields"):
        v = meta[key]
        if not isinstance(v, list) or not all(isinstance(f, str) for f in v):
            return f"{key!r} must be a list of field names, not {v!r:.80}"
        if len(set(v)) != len(v):
            return f"{key!r} names a field twice"
    vocab, sparse = meta["vocab_sizes"], meta["sparse_fields"]
    if not isinstance(vocab, dict):
        return f"'vocab_sizes' must be an object (field -> size), not {vocab!r:.80}"
    missing = [f for f in sparse if f not in vocab]
    if missing:
        return f"'vocab_sizes' has no entry for sparse field(s) {missing}"
    extra = [f for f in vocab if f not in sparse]
    if extra:
        return f"'vocab_sizes' names {extra}, which are not in 'sparse_fields'"
    for f in sparse:
        v = vocab[f]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            return f"'vocab_sizes'[{f!r}] must be a positive integer, not {v!r}"
    splits = meta["splits"]
    if not isinstance(splits, dict) or not splits:
        return f"'splits' must be a non-empty object (split -> rows, files), not {splits!r:.80}"
    for name, s in splits.items():
        if not isinstance(s, dict):
            return f"'splits'[{name!r}] must be an object with 'rows' and 'files'"
        rows, files = s.get("rows"), s.get("files")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            return f"'splits'[{name!r}]['rows'] must be a non-negative integer, not {rows!r}"
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return f"'splits'[{name!r}]['files'] must be a list of file names, not {files!r:.80}"
    aliases = meta.get("split_aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(t, str) and t in splits
                                                for t in aliases.values()):
        return f"'split_aliases' must map names to stored splits, not {aliases!r:.80}"
    return None


def check_replaceable(path: str | os.PathLike) -> None:
    """Raises :class:`UnsafeOutputError` unless ``path`` is a ctr dataset (or an empty directory).

    A dataset is a directory holding nothing but ``meta.json`` (a JSON object with a
    ``schema_version``) and split directories of ``part-*.parquet`` files: exactly what
    :class:`DatasetWriter` writes. Anything else may be the user's, so it is never replaced.
    """
    path = Path(path)

    def refuse(why: str) -> UnsafeOutputError:
        return UnsafeOutputError(f"{path}: {why}; --overwrite replaces only a dataset made by ctr "
                                 "(meta.json and split directories of part-*.parquet), so move it "
                                 "away or choose another output")

    if path.is_symlink():
        raise refuse("is a symbolic link")
    if not path.is_dir():
        raise refuse("exists and is not a directory")
    entries = sorted(path.iterdir())
    if not entries:
        return
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or "schema_version" not in meta:
        shown = ", ".join(e.name for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise refuse(f"is not a ctr dataset (no readable {META_FILE} with a schema_version; "
                     f"it holds {shown})")
    splits = set(SPLITS) | set(meta["splits"] if isinstance(meta.get("splits"), dict) else ())
    for e in entries:
        if e.name == META_FILE and e.is_file() and not e.is_symlink():
            continue
        if e.name in splits and e.is_dir() and not e.is_symlink():
            for f in sorted(e.iterdir()):
                if not (_PART_FILE.match(f.name) and f.is_file() and not f.is_symlink()):
                    raise refuse(f"holds {f}, which is not part of a dataset")
            continue
        raise refuse(f"holds {e}, which is not part of a dataset")


def check_no_overlap(out_dir: str | os.PathLike, protect: Iterable[str | os.PathLike]) -> None:
    """Raises :class:`UnsafeOutputError` if ``out_dir`` is, or holds, one of ``protect``
    (symbolic links resolved): writing or replacing it would destroy that file."""
    out = Path(os.path.realpath(out_dir))
    out_stat = os.stat(out) if out.exists() else None
    for p in protect:
        real = Path(os.path.realpath(p))
        for a in (real, *real.parents):
            same = a == out or (out_stat is not None and a.exists()
                                and os.path.samestat(os.stat(a), out_stat))
            if same:
                what = "is" if a == real else "holds"
                raise UnsafeOutputError(f"{out_dir}: the output directory {what} the input {p}; "
                                        "writing the dataset there would destroy it, so choose "
                                        "another output directory")


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The Parquet files of one split, in order (``read_schema(data_dir).split_files(split)``)."""
    return read_schema(data_dir).split_files(split)


def remove_stale_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Deletes the ``.NAME.tmp-*`` / ``.NAME.old-*`` that dead writers of ``out_dir`` left
    beside it (only ctr's pid-tagged ones whose process is gone); returns what it deleted."""
    out_dir = Path(out_dir)
    return clean_stale_temps(out_dir.parent, out_dir.name)


class DatasetWriter:
    """Builds a dataset directory in a temporary place and renames it in when complete.

    ``out_dir`` must not exist unless ``overwrite`` is true, and then it must pass
    :func:`check_replaceable`; it must never hold one of ``protect`` (the inputs). Rows are
    appended per split with :meth:`write`; files roll over every ``rows_per_file`` rows and
    rows are buffered (at most ``row_group_rows`` per split) so that every row group but a
    file's last holds exactly ``row_group_rows``.
    Leaving the ``with`` block without :meth:`commit` (an exception, Ctrl-C) deletes the
    temporary directory; one a killed writer left is deleted by the next writer of ``out_dir``.
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False,
                 rows_per_file: int = 4_000_000, protect: Iterable[str | os.PathLike] = (),
                 row_group_rows: int = ROW_GROUP_ROWS):
        if rows_per_file < 1 or row_group_rows < 1:
            raise ValueError(f"rows_per_file ({rows_per_file}) and row_group_rows ({row_group_rows}) "
                             "must be positive")
        self.out_dir = Path(out_dir)
        self.protect = [str(p) for p in protect]
        check_no_overlap(self.out_dir, self.protect)
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{self.out_dir} exists; pass --overwrite to replace it")
            check_replaceable(self.out_dir)
        self.overwrite = overwrite
        self.rows_per_file = rows_per_file
        self.row_group_rows = row_group_rows
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.removed_stale = remove_stale_temps(self.out_dir)
        self.tmp_dir = temp_path(self.out_dir)
        self.tmp_dir.mkdir()
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._rows_in_file: dict[str, int] = {}
        self._pending: dict[str, list[pa.Table]] = {}   # rows not yet in a row group
        self._pending_rows: dict[str, int] = {}
        self._row_groups: dict[str, int] = {}
        self._files: dict[str, list[str]] = {}
        self._rows: dict[str, int] = {}
        self._positives: dict[str, float] = {}
        self._schema: pa.Schema | None = None
        self._done = False

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def write(self, split: str, table: pa.Table) -> None:
        """Appends ``table`` to ``split``; all splits must share one schema."""
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema):
            table = table.select(self._schema.names).cast(self._schema)
        if table.num_rows == 0:
            return
        self._pending.setdefault(split, []).append(table)
        self._pending_rows[split] = self._pending_rows.get(split, 0) + table.num_rows
        self._flush(split, final=False)
        self._rows[split] = self._rows.get(split, 0) + table.num_rows
        if LABEL in table.column_names:
            s = pc.sum(table[LABEL]).as_py() or 0.0
            self._positives[split] = self._positives.get(split, 0.0) + float(s)
        fault_point("dataset.after_write")

    def _flush(self, split: str, final: bool) -> None:
        """Writes the buffered rows of ``split`` as row groups of ``row_group_rows`` (fewer only
        where a file ends, or at the end with ``final``); keeps a remainder for the next write."""
        while self._pending_rows.get(split, 0):
            writer = self._writers.get(split)
            if writer is None or self._rows_in_file[split] >= self.rows_per_file:
                writer = self._open(split)
            take = min(self.row_group_rows, self.rows_per_file - self._rows_in_file[split])
            if self._pending_rows[split] < take and not final:
                return
            take = min(take, self._pending_rows[split])
            writer.write_table(self._take(split, take), row_group_size=take)
            self._rows_in_file[split] += take
            self._row_groups[split] = self._row_groups.get(split, 0) + 1

    def _take(self, split: str, n: int) -> pa.Table:
        """The first ``n`` buffered rows of ``split``, removed from the buffer."""
        parts, pending, got = [], self._pending[split], 0
        while got < n:
            t = pending[0]
            k = min(n - got, t.num_rows)
            parts.append(t.slice(0, k))
            if k == t.num_rows:
                pending.pop(0)
            else:
                pending[0] = t.slice(k)
            got += k
        self._pending_rows[split] -= n
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _open(self, split: str) -> pq.ParquetWriter:
        if split in self._writers:
            self._writers[split].close()
        names = self._files.setdefault(split, [])
        rel = f"{split}/part-{len(names):05d}.parquet"
        (self.tmp_dir / split).mkdir(exist_ok=True)
        writer = pq.ParquetWriter(self.tmp_dir / rel, self._schema, compression="zstd")
        self._writers[split] = writer
        self._rows_in_file[split] = 0
        names.append(rel)
        return writer

    def split_stats(self) -> dict[str, dict[str, Any]]:
        """Rows, positives and files written so far, per split (goes into meta["splits"])."""
        out = {}
        for split, files in self._files.items():
            rows = self._rows.get(split, 0)
            entry: dict[str, Any] = {"rows": rows, "files": list(files),
                                     "row_groups": self._row_groups.get(split, 0)}
            if split in self._positives:
                entry["positives"] = int(round(self._positives[split]))
                entry["positive_rate"] = self._positives[split] / rows if rows else 0.0
            out[split] = entry
        return out

    def commit(self, meta: dict[str, Any]) -> Path:
        """Closes the files, writes ``meta.json`` (with split stats filled in), renames into place."""
        for split in list(self._pending):
            self._flush(split, final=True)
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        meta = dict(meta)
        meta["schema_version"] = SCHEMA_VERSION
        meta["row_group_rows"] = self.row_group_rows
        meta["splits"] = self.split_stats()
        rows = sum(s["rows"] for s in meta["splits"].values())
        pos = sum(self._positives.values())
        if self._positives:
            meta["positive_rate"] = pos / rows if rows else 0.0
        aliases = meta.setdefault("split_aliases", {})
        if "valid" not in meta["splits"] and "test" in meta["splits"]:
            aliases.setdefault("valid", "test")
        write_json_atomic(self.tmp_dir / META_FILE, meta)
        if self.out_dir.exists() or self.out_dir.is_symlink():
            # overwrite: check again (the run may have taken hours), move the old one aside,
            # rename the new one in, then delete the old one
            if not self.overwrite:
                raise FileExistsError(f"{self.out_dir} appeared during the run; pass --overwrite "
                                      "to replace it")
            check_no_overlap(self.out_dir, self.protect)
            check_replaceable(self.out_dir)
            trash = temp_path(self.out_dir, "old")
            os.replace(self.out_dir, trash)
            fault_point("dataset.after_move_aside")
            os.replace(self.tmp_dir, self.out_dir)
            fault_point("dataset.before_delete_old")
            shutil.rmtree(trash, ignore_errors=True)  # what is left goes with the next writer
        else:
            os.replace(self.tmp_dir, self.out_dir)
        self._done = True
        return self.out_dir

    def abort(self) -> None:
        """Drops everything written so far."""
        for w in self._writers.values():
            try:
                w.close()
            except (OSError, pa.ArrowException):
                pass  # the file is deleted with the directory below; its write error already surfaced
        self._writers.clear()
        self._pending.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._done = True
