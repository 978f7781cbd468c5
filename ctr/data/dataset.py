"""The processed dataset: its on-disk layout, its ``meta.json``, and its atomic writer.

Every producer (``ctr-preprocess`` from raw logs, the synthetic generator) writes through
:class:`DatasetWriter`, and every consumer (the loader, ``ctr-train``, ``ctr-eval``) reads
through :func:`read_meta` / :func:`split_files`, so the format lives in this one file::

    DIR/
      meta.json               schema version, fields, vocabularies, splits, transforms ...
      train/part-00000.parquet  label float32 | I1..I13 float32 | C1..C26 int32
      train/part-00001.parquet
      test/part-00000.parquet
      (valid/ only when it differs from test; else meta["split_aliases"]["valid"] == "test")

Categorical columns hold contiguous ids ``1..V-1`` per field with ``0`` reserved for
missing/rare, so ``vocab_sizes[field] == V`` is the embedding table's row count.

The writer builds everything in a hidden temporary directory beside ``DIR`` and renames it
into place only when :meth:`DatasetWriter.commit` is called, so a killed run never leaves
anything that looks like a dataset.

Example::

    with DatasetWriter("data/mine", overwrite=False) as w:
        w.write("train", table)          # any number of pyarrow Tables per split
        w.commit(meta)                   # meta.json written, directory renamed into place
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
META_FILE = "meta.json"
LABEL = "label"
SPLITS = ("train", "valid", "test")

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]


class DatasetError(Exception):
    """A processed dataset is missing, malformed, or of an unknown schema version."""


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
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version!r}, this ctr reads {SCHEMA_VERSION}")
    for key in ("dense_fields", "sparse_fields", "vocab_sizes", "splits"):
        if key not in meta:
            raise DatasetError(f"{path}: field {key!r} is missing")
    return meta


def resolve_split(meta: dict[str, Any], split: str) -> str:
    """Maps an alias (``valid`` -> ``test`` under the paper's 90/10 protocol) to a stored split."""
    split = meta.get("split_aliases", {}).get(split, split)
    if split not in meta["splits"]:
        raise DatasetError(f"split {split!r} not in dataset (has {sorted(meta['splits'])})")
    return split


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The Parquet files of one split, in order."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    split = resolve_split(meta, split)
    files = [data_dir / f for f in meta["splits"][split]["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"{data_dir}: split {split!r} lists missing files {missing}")
    return files


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to a temporary name beside ``path``, then renames it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class DatasetWriter:
    """Builds a dataset directory in a temporary place and renames it in when complete.

    ``out_dir`` must not exist unless ``overwrite`` is true. Rows are appended per split with
    :meth:`write`; files roll over every ``rows_per_file`` rows. Leaving the ``with`` block
    without :meth:`commit` (an exception, Ctrl-C) deletes the temporary directory.
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False,
                 rows_per_file: int = 4_000_000):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} exists; pass --overwrite to replace it")
        self.overwrite = overwrite
        self.rows_per_file = rows_per_file
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp_dir.mkdir()
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._rows_in_file: dict[str, int] = {}
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
        start = 0
        while start < table.num_rows:  # fill the current file, then roll over to the next
            writer = self._writers.get(split)
            if writer is None or self._rows_in_file[split] >= self.rows_per_file:
                writer = self._open(split)
            take = min(table.num_rows - start, self.rows_per_file - self._rows_in_file[split])
            writer.write_table(table.slice(start, take), row_group_size=1 << 20)
            self._rows_in_file[split] += take
            start += take
        self._rows[split] = self._rows.get(split, 0) + table.num_rows
        if LABEL in table.column_names:
            s = pc.sum(table[LABEL]).as_py() or 0.0
            self._positives[split] = self._positives.get(split, 0.0) + float(s)

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
            entry: dict[str, Any] = {"rows": rows, "files": list(files)}
            if split in self._positives:
                entry["positives"] = int(round(self._positives[split]))
                entry["positive_rate"] = self._positives[split] / rows if rows else 0.0
            out[split] = entry
        return out

    def commit(self, meta: dict[str, Any]) -> Path:
        """Closes the files, writes ``meta.json`` (with split stats filled in), renames into place."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        meta = dict(meta)
        meta["schema_version"] = SCHEMA_VERSION
        meta["splits"] = self.split_stats()
        rows = sum(s["rows"] for s in meta["splits"].values())
        pos = sum(self._positives.values())
        if self._positives:
            meta["positive_rate"] = pos / rows if rows else 0.0
        aliases = meta.setdefault("split_aliases", {})
        if "valid" not in meta["splits"] and "test" in meta["splits"]:
            aliases.setdefault("valid", "test")
        write_json_atomic(self.tmp_dir / META_FILE, meta)
        if self.out_dir.exists():  # overwrite: move the old one aside first, then delete it
            trash = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out_dir, trash)
            os.replace(self.tmp_dir, self.out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp_dir, self.out_dir)
        self._done = True
        return self.out_dir

    def abort(self) -> None:
        """Drops everything written so far."""
        for w in self._writers.values():
            try:
                w.close()
            except Exception:
                pass
        self._writers.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._done = True
