"""Raw click logs: format detection and a streaming block reader.

Supported inputs (each possibly gzip-compressed, detected by its magic bytes):

============  =====================================================================
format        layout
============  =====================================================================
criteo        Criteo Kaggle ``train.txt`` / 1TB ``day_N``: TAB, 40 fields
              (label, I1..I13, C1..C26), no header
criteo-test   Criteo Kaggle ``test.txt``: 39 fields, no label
csv           Criteo layout as CSV: comma, header or not, optional leading ``Id``
              column (41 fields), integers possibly written as floats (``260.0``);
              any other header: ``I<n>`` columns dense, the rest categorical
avazu         Avazu ``train.csv``: 24 columns ``id,click,hour,...`` with or without
              header (23 without ``click``: unlabelled); ``id`` dropped, ``hour``
              ``YYMMDDHH`` one categorical field as the reference keeps it (22 fields;
              ``avazu_hour="split"``: hour of day plus a derived ``weekday`` field)
avazu-x       Avazu 21-column variant (no ``id``, no ``device_ip``, ``hour`` already
              ``HH``); labels from a separate one-column file (``labels=``)
parquet       Parquet with raw columns (label, I1..I13, C1..C26; strings or integers)
============  =====================================================================

:func:`detect_format` sniffs the first lines; :class:`RawReader` then yields
:class:`RawBlock` s: ~64 MB of input cut at line boundaries (so each block's first line
number is known exactly), parsed by ``pyarrow.csv`` into a label vector, a float64 dense
matrix (NaN = missing) and one Arrow binary array per categorical field.

Bad rows (wrong field count, non-numeric integer field, label not 0/1, a dense value that
is not a finite float32: ``inf``, ``nan``, ``1e400``) raise :class:`RawInputError` naming the
file, the 1-based line number and the problem, or with ``skip_bad_rows=True`` are dropped and
reported in :attr:`RawBlock.bad`. Missing is an empty field (or another of pyarrow's null
tokens such as ``NA``, ``NULL``; in Parquet also a float NaN). A block that fails to parse is
re-parsed by bisection to find its bad lines, so the fast path has no per-line Python work.
Lines of any length up to :data:`MAX_LINE_BYTES` work. Criteo lines ending with one extra,
empty field (a trailing TAB: 41 fields, the first a 0/1 label on every sampled line, the last
empty on most) are read as Criteo; a line with something in that last field is a bad row.

Example::

    fmt = detect_format("train.txt.gz")              # RawFormat(name="criteo", ...)
    for block in RawReader(fmt).blocks():
        block.label, block.dense, block.sparse["C1"]
"""

from __future__ import annotations

import datetime
import io
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ctr.data.transforms import FLOAT32_MAX

FORMATS = ("auto", "criteo", "criteo-test", "csv", "avazu", "avazu-x", "parquet")
# Avazu's YYMMDDHH hour: "raw" keeps the value as one field (LargeBatchCTR's data_utils.py
# label-encodes it as is); "split" makes it hour of day plus a weekday field.
AVAZU_HOUR = ("raw", "split")
BLOCK_BYTES = 64 << 20

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
AVAZU_COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain",
                 "site_category", "app_id", "app_domain", "app_category", "device_id",
                 "device_ip", "device_model", "device_type", "device_conn_type",
                 "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
AVAZU_X_COLUMNS = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "device_ip")]
LABEL_NAMES = ("label", "click", "clicked", "target", "y")
ID_NAMES = ("id",)
WEEKDAY = "weekday"
MAX_LINE_BYTES = 1 << 30   # a longer "line" is not a click log (pyarrow's limit is 2 GiB)
TRAILING = "_trailing_empty_field"
# missing in a numeric column: pyarrow's default null tokens less its NaN spellings (NaN,
# nan, -nan, 1.#IND, ...): a NaN, like inf or 1e400, in a dense field is a bad row
MISSING_TOKENS = {"", "#N/A", "#N/A N/A", "#NA", "N/A", "NA", "NULL", "n/a", "null"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DENSE_NAME = re.compile(r"^I\d+$")


class RawInputError(ValueError):
    """A raw input is malformed; the message names the file, the line and the problem.

    ``skippable`` is true for a bad row that ``skip_bad_rows`` would have skipped."""

    def __init__(self, message: str, skippable: bool = False):
        super().__init__(message)
        self.skippable = skippable


def _err(path: str | os.PathLike, line: int | None, problem: str,
         skippable: bool = False, unit: str = "line") -> RawInputError:
    where = f"{path}: {unit} {line}: " if line is not None else f"{path}: "
    return RawInputError(where + problem, skippable)


# --------------------------------------------------------------------------- bytes


def sniff_compression(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"parquet"`` or ``None`` (plain text), from the magic bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"PAR1":
        return "parquet"
    if head[:3] == b"BZh":
        raise _err(path, None, "bzip2-compressed input is not supported; decompress it or use gzip")
    if head == b"\x28\xb5\x2f\xfd":
        raise _err(path, None, "zstd-compressed input is not supported; decompress it or use gzip")
    return None


def iter_chunks(path: str | os.PathLike, compression: str | None,
                chunk_bytes: int = 4 << 20) -> Iterator[tuple[bytes, int]]:
    """Decompressed chunks of a file and the raw file offset reached after each.

    gzip goes through ``zlib`` directly (multi-member files work); a stream that ends before
    its end-of-stream marker raises :class:`EOFError` after every decompressed byte has
    been yielded, a corrupt one raises :class:`zlib.error`.
    """
    with open(path, "rb") as f:
        if compression != "gzip":
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    return
                yield chunk, f.tell()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        started = False
        while True:
            raw = f.read(chunk_bytes)
            if not raw:
                break
            started = True
            out = [d.decompress(raw)]
            while d.eof and d.unused_data:  # concatenated gzip members
                rest = d.unused_data.lstrip(b"\x00")
                if not rest:
                    break
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out.append(d.decompress(rest))
            data = b"".join(out)
            if data:
                yield data, f.tell()
        if started and not d.eof:
            tail = d.flush()
            if tail:
                yield tail, f.tell()
            raise EOFError("compressed data ends before the end-of-stream marker")


@dataclass
class ByteBlock:
    data: bytes        # whole lines, the last one possibly without "\n"
    first_line: int    # 1-based line number of data's first line in the file
    raw_pos: int       # raw (compressed) bytes of the file consumed so far


def iter_byte_blocks(path: str | os.PathLike, compression: str | None, skip_header: bool,
                     block_bytes: int = BLOCK_BYTES) -> Iterator[ByteBlock]:
    """~``block_bytes`` of whole lines at a time, with exact line numbers."""
    parts: list[bytes] = []
    size = 0
    line = 1
    header_pending = skip_header
    long_line = False  # the pending bytes are one line longer than a block, still unfinished
    raw_pos = 0
    chunks = iter_chunks(path, compression, min(block_bytes, 4 << 20))
    try:
        for chunk, raw_pos in chunks:
            parts.append(chunk)
            size += len(chunk)
            if header_pending:
                buf = b"".join(parts)
                nl = buf.find(b"\n")
                if nl < 0:
                    parts, size = [buf], len(buf)
                    continue
                buf = buf[nl + 1:]
                parts, size, line, header_pending = [buf], len(buf), 2, False
            if size < block_bytes or (long_line and b"\n" not in chunk):
                if long_line and size > MAX_LINE_BYTES:
                    raise _err(path, line, f"longer than {MAX_LINE_BYTES >> 20} MiB without a line "
                               "break; this is not a line-based text file")
                continue
            buf = b"".join(parts)
            cut = buf.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: keep reading to its end
                parts, long_line = [buf], True
                continue
            long_line = False
            rest = buf[cut:]
            # plain files: exactly the bytes of this block; gzip: compressed bytes read so far
            yield ByteBlock(buf[:cut], line, raw_pos - (len(rest) if compression is None else 0))
            line += buf.count(b"\n", 0, cut)
            parts, size = ([rest] if rest else []), len(rest)
    except EOFError as e:
        pending = b"".join(parts)
        raise _err(path, line + pending.count(b"\n"),
                   f"truncated gzip file ({e}); the file is incomplete") from None
    except zlib.error as e:
        raise _err(path, line, f"corrupt gzip data ({e})") from None
    except OSError as e:
        raise _err(path, line, f"cannot read: {e}") from None
    buf = b"".join(parts)
    if buf and not header_pending:
        yield ByteBlock(buf, line, raw_pos)


def head_lines(path: str | os.PathLike, compression: str | None, max_lines: int = 20,
               max_bytes: int = 1 << 20) -> list[str]:
    """The first complete lines of a text file (decompressed), for sniffing."""
    got: list[bytes] = []
    size = 0
    try:
        for chunk, _ in iter_chunks(path, compression, 1 << 16):
            got.append(chunk)
            size += len(chunk)
            if size >= max_bytes or b"".join(got).count(b"\n") > max_lines:
                break
    except (EOFError, zlib.error) as e:
        if not got:  # nothing decompresses: garbage (or a cut) right after the gzip magic
            raise _err(path, None, f"starts like gzip but is not valid gzip data ({e})") from None
        # else reported with a line number by the block reader
    text = b"".join(got)
    if size >= max_bytes or text.count(b"\n") > max_lines:
        text = text[: text.rfind(b"\n") + 1] if b"\n" in text else text
    lines = text.decode("utf-8", "replace").splitlines()
    return lines[:max_lines]


# --------------------------------------------------------------------------- formats


@dataclass
class RawFormat:
    """What one input file looks like and how it maps onto output fields."""

    path: str
    name: str                      # criteo | criteo-test | csv | avazu | avazu-x | parquet
    dataset: str                   # criteo | avazu | custom
    compression: str | None        # gzip | None
    delimiter: str
    header: bool
    columns: list[str]             # raw column names in file order
    label: str | None              # raw label column (None: unlabelled or from labels_path)
    dense: list[str]               # dense fields (raw names = output names)
    sparse: list[str]              # output categorical fields (may include derived weekday)
    drop: list[str] = field(default_factory=list)
    avazu_hour: bool = False       # split YYMMDDHH hours: cut to HH, derive weekday
    labels_path: str | None = None
    labels_compression: str | None = None
    labels_header: bool = False
    trailing_empty: bool = False   # every line ends with one more, empty field (trailing TAB)

    @property
    def has_label(self) -> bool:
        return self.label is not None or self.labels_path is not None

    @property
    def sparse_raw(self) -> list[str]:
        return [f for f in self.sparse if not (self.avazu_hour and f == WEEKDAY)]

    def layout(self) -> tuple:
        """What must agree between several inputs of one dataset."""
        return (self.dataset, self.has_label, tuple(self.dense), tuple(self.sparse))

    def describe(self) -> dict:
        out = {"format": self.name, "compression": self.compression}
        if self.name != "parquet":
            out.update(delimiter=self.delimiter, header=self.header)
        if self.labels_path:
            out["labels"] = self.labels_path
        if self.trailing_empty:
            out["trailing_empty_field"] = True
        if self.dataset == "avazu":
            out["avazu_hour"] = "split" if self.avazu_hour else "raw"
        return out


def _layout_from_names(names: list[str]) -> dict:
    """label / dense / sparse / drop columns and dataset kind from column names."""
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate column names {dup}")
    lower = [n.lower() for n in names]
    label = next((n for n, lo in zip(names, lower) if lo in LABEL_NAMES), None)
    drop = [n for n, lo in zip(names, lower) if lo in ID_NAMES]
    rest = [n for n in names if n != label and n not in drop]
    if "hour" in rest and "site_id" in rest and "app_id" in rest:
        sparse = list(rest)
        return dict(label=label, dense=[], sparse=sparse, drop=drop, dataset="avazu")
    dense = [n for n in rest if _DENSE_NAME.match(n)]
    sparse = [n for n in rest if n not in dense]
    if not rest:
        raise ValueError("no feature columns")
    dataset = "criteo" if (dense == CRITEO_DENSE and sparse == CRITEO_SPARSE) else "custom"
    return dict(label=label, dense=dense, sparse=sparse, drop=drop, dataset=dataset)


def _names_by_count(n: int) -> list[str] | None:
    """Column names of a headerless file from its field count."""
    return {
        40: ["label"] + CRITEO_DENSE + CRITEO_SPARSE,
        39: CRITEO_DENSE + CRITEO_SPARSE,
        41: ["Id", "label"] + CRITEO_DENSE + CRITEO_SPARSE,
        24: AVAZU_COLUMNS,
        23: [c for c in AVAZU_COLUMNS if c != "click"],
        21: AVAZU_X_COLUMNS,
    }.get(n)


def _looks_like_header(fields: list[str]) -> bool:
    fields = [f.strip().strip('"') for f in fields]
    if not all(_IDENT.match(f) for f in fields):
        return False
    known = {"label", "click", "id", "i1", "c1", "hour", "target", "y"}
    return any(f.lower() in known for f in fields) or not any(_NIB_LIKE.match(f) for f in fields)


_NIB_LIKE = re.compile(r"^[0-9a-f]{6,}$")

_FORMAT_ACCEPTS = {
    "criteo": lambda name, lay: lay["dataset"] in ("criteo", "custom") and lay["label"] is not None,
    "criteo-test": lambda name, lay: lay["dataset"] in ("criteo", "custom") and lay["label"] is None,
    "csv": lambda name, lay: lay["dataset"] in ("criteo", "custom"),
    "avazu": lambda name, lay: name == "avazu",
    "avazu-x": lambda name, lay: name == "avazu-x",
}


def _format_name(dataset: str, delimiter: str, has_label: bool, names: list[str]) -> str:
    if dataset == "avazu":
        return "avazu-x" if ("id" not in names and "device_ip" not in names) else "avazu"
    if dataset == "criteo" and delimiter == "\t":
        return "criteo" if has_label else "criteo-test"
    return "csv"


def _check_file(path: str, what: str = "input") -> None:
    """A readable error for an input that is missing, a directory, or not a regular file."""
    if os.path.isdir(path):
        raise _err(path, None, f"is a directory; give the {what} file(s) inside it")
    if not os.path.exists(path):
        raise _err(path, None, "no such file")
    if not os.path.isfile(path):
        raise _err(path, None, f"is not a regular file; the {what} must be a file")


def _labels_file(path: str) -> tuple[str | None, bool]:
    """(compression, header) of a one-column labels file."""
    _check_file(path, "labels")
    comp = sniff_compression(path)
    if comp == "parquet":
        raise _err(path, None, "labels file must be text (one 0/1 per line), not Parquet")
    lines = [ln for ln in head_lines(path, comp, 5) if ln.strip()]
    if not lines:
        raise _err(path, 1, "empty labels file")
    first = lines[0].strip().strip('"')
    header = not _is_number(first)
    if header and len(lines) == 1:
        raise _err(path, 2, "labels file has a header but no labels")
    return comp, header


def _unfit_dense(col: pa.ChunkedArray | pa.Array, nan_is_missing: bool = False) -> np.ndarray:
    """Rows whose dense value is present but not a finite float32 (inf, NaN, 1e400, 1e39):
    min-max scaling would be ruined and the float32 dataset cannot hold them."""
    x = col.to_numpy(zero_copy_only=False)
    ok = np.abs(x) <= FLOAT32_MAX
    if nan_is_missing:
        ok |= np.isnan(x)
    elif col.null_count:
        ok |= pc.is_null(col).to_numpy(zero_copy_only=False)
    return ~ok


def _unfit_problem(name: str, text: str) -> str:
    try:
        finite = math.isfinite(float(text))
    except ValueError:
        finite = False
    why = "is too large for float32" if finite else "is not a finite number"
    return f"integer field {name} {why}: {text!r}"


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def detect_format(path: str | os.PathLike, fmt: str = "auto",
                  labels: str | os.PathLike | None = None, avazu_hour: str = "raw") -> RawFormat:
    """Sniffs ``path`` (compression by magic bytes, then the first lines) into a
    :class:`RawFormat`; ``fmt`` other than ``auto`` must agree with what is found.
    ``avazu_hour``: see :data:`AVAZU_HOUR` ("split" applies only to ``YYMMDDHH`` values)."""
    path = str(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if avazu_hour not in AVAZU_HOUR:
        raise ValueError(f"unknown avazu_hour {avazu_hour!r}; choose one of {AVAZU_HOUR}")
    _check_file(path)
    if os.path.getsize(path) == 0:
        raise _err(path, 1, "empty file")
    comp = sniff_compression(path)
    if comp == "parquet" or fmt == "parquet":
        if comp != "parquet":
            raise _err(path, None, "--format parquet, but the file is not Parquet (no PAR1 magic)")
        fm = _detect_parquet(path, avazu_hour == "split")
    else:
        fm = _detect_text(path, comp, fmt, avazu_hour == "split")
    if labels is not None:
        if fm.label is not None:
            raise _err(path, None, f"has its own label column {fm.label!r}; do not pass --labels")
        fm.labels_path = str(labels)
        fm.labels_compression, fm.labels_header = _labels_file(str(labels))
    return fm


def _detect_parquet(path: str, split_hour: bool) -> RawFormat:
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise _err(path, None, f"cannot read Parquet: {e}") from None
    names = list(schema.names)
    try:
        lay = _layout_from_names(names)
    except ValueError as e:
        raise _err(path, None, str(e)) from None
    avazu_hour = False
    if lay["dataset"] == "avazu" and split_hour:
        try:
            first = next(pq.ParquetFile(path).iter_batches(batch_size=20, columns=["hour"]))
            sample = [str(v).strip() for v in first.column(0).to_pylist() if v is not None]
            avazu_hour = bool(sample) and all(len(v) == 8 and v.isdigit() for v in sample)
        except StopIteration:
            pass
    sparse = lay["sparse"] + ([WEEKDAY] if avazu_hour else [])
    return RawFormat(path, "parquet", lay["dataset"], None, "", False, names, lay["label"],
                     lay["dense"], sparse, lay["drop"], avazu_hour=avazu_hour)


def _detect_text(path: str, comp: str | None, fmt: str, split_hour: bool) -> RawFormat:
    lines = head_lines(path, comp)
    nonempty = [ln for ln in lines if ln.strip()]
    if not nonempty:
        raise _err(path, 1, "empty file" if not lines else "no data in the first lines")
    first = lines[0]
    if not first.strip():
        raise _err(path, 1, "first line is empty")
    if "\t" in first:
        delim = "\t"
    elif "," in first:
        delim = ","
    else:
        raise _err(path, 1, "neither TAB- nor comma-separated; cannot detect the format")
    fields = first.rstrip("\r").split(delim)
    header = _looks_like_header(fields)
    trailing = False
    if not header:  # the most common field count of the first lines, not a truncated first line
        counts = [len(ln.rstrip("\r").split(delim)) for ln in nonempty]
        common = max(sorted(set(counts)), key=counts.count)
        if counts.count(common) > counts.count(len(fields)):
            fields = nonempty[counts.index(common)].rstrip("\r").split(delim)
    if header:
        names = [f.strip().strip('"') for f in fields]
        if len(nonempty) < 2:
            raise _err(path, 2, "header but no data rows")
    else:
        names = _names_by_count(len(fields))
        if len(fields) == 41 and _ends_with_empty_field(nonempty, delim):
            trailing = True
            names = _names_by_count(40) + [TRAILING]
        if names is None:
            raise _err(path, 1, f"{len(fields)} {'TAB' if delim == chr(9) else 'comma'}-separated "
                       "fields and no header: not a known layout (Criteo 39/40/41, Avazu 21/23/24); "
                       "add a header line naming the columns")
    try:
        lay = _layout_from_names(names[:-1] if trailing else names)
    except ValueError as e:
        raise _err(path, 1, f"header: {e}") from None
    name = _format_name(lay["dataset"], delim, lay["label"] is not None, names)
    if fmt != "auto" and not _FORMAT_ACCEPTS[fmt](name, lay):
        raise _err(path, 1, f"looks like {name} ({len(fields)} fields, "
                   f"{'header' if header else 'no header'}, label {'yes' if lay['label'] else 'no'}), "
                   f"not --format {fmt}")
    if fmt != "auto":
        name = fmt
    # Avazu hour: YYMMDDHH in the original files (split: derive weekday), HH in the cut variant
    avazu_hour = False
    sparse = list(lay["sparse"])
    if lay["dataset"] == "avazu" and split_hour:
        hi = names.index("hour")
        data_lines = nonempty[1:] if header else nonempty
        sample = [ln.split(delim)[hi].strip() for ln in data_lines if len(ln.split(delim)) > hi]
        avazu_hour = bool(sample) and all(len(s) == 8 and s.isdigit() for s in sample)
        if avazu_hour:
            sparse.append(WEEKDAY)
    return RawFormat(path, name, lay["dataset"], comp, delim, header, names, lay["label"],
                     lay["dense"], sparse, lay["drop"], avazu_hour=avazu_hour,
                     trailing_empty=trailing)


def _ends_with_empty_field(lines: list[str], delim: str) -> bool:
    """41 fields that are Criteo's 40 plus a trailing delimiter, not the ``Id, label, ...``
    layout: on every sampled line the first field is a 0/1 label (an ``Id`` column holds
    distinct ids), and on most the last field is empty (the rest become bad rows)."""
    rows = [p for p in (ln.rstrip("\r").split(delim) for ln in lines) if len(p) == 41]
    return (bool(rows) and all(p[0] in ("0", "1") for p in rows)
            and sum(p[-1] == "" for p in rows) > len(rows) / 2)


# --------------------------------------------------------------------------- blocks


@dataclass
class RawBlock:
    """One parsed block of rows (bad rows already removed)."""

    path: str
    first_line: int                    # 1-based line (Parquet: row) of the block's first row
    label: np.ndarray | None           # float32 [n], 0/1
    dense: np.ndarray                  # float64 [n, D], NaN = missing
    sparse: dict[str, pa.Array]        # field -> binary array [n] ("" / null = missing)
    bad: list[tuple[int, str]]         # (line, problem) of the rows dropped
    raw_pos: int                       # raw bytes of the file consumed after this block
    lines: int = 0                     # physical lines (rows for Parquet) the block spans

    @property
    def num_rows(self) -> int:
        return len(self.dense)


def _derive_avazu_hour(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``YYMMDDHH`` -> (``HH``, weekday ``0``..``6`` Monday=0), on the distinct values only."""
    from ctr.data.encoding import _as_binary
    enc = pc.dictionary_encode(_as_binary(arr), null_encoding="encode")
    hours, days = [], []
    for v in enc.dictionary.to_pylist():
        s = (v or b"").strip()
        if len(s) == 8 and s.isdigit():
            hours.append(s[6:8])
            try:
                wd = datetime.date(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6])).weekday()
                days.append(str(wd).encode())
            except ValueError:
                days.append(b"")
        else:
            hours.append(s)
            days.append(b"")
    idx = enc.indices
    return (pa.array(hours, pa.binary()).take(idx), pa.array(days, pa.binary()).take(idx))


class _LabelStream:
    """Labels from a separate one-column file, handed out in step with the feature rows."""

    def __init__(self, path: str, compression: str | None, header: bool, block_bytes: int,
                 skip_bad_rows: bool):
        self.path = path
        self.skip_bad_rows = skip_bad_rows
        self._blocks = iter_byte_blocks(path, compression, header, block_bytes)
        self._buf = np.empty(0, dtype=np.float64)
        self._lines = np.empty(0, dtype=np.int64)
        self._start_line = 2 if header else 1
        self.taken = 0

    def _more(self) -> bool:
        for blk in self._blocks:
            vals, lines = self._parse(blk)
            if len(vals):
                self._buf = np.concatenate([self._buf, vals])
                self._lines = np.concatenate([self._lines, lines])
                return True
        return False

    def _parse(self, blk: ByteBlock) -> tuple[np.ndarray, np.ndarray]:
        data = blk.data
        if not data.strip(b"\r\n"):
            return np.empty(0), np.empty(0, dtype=np.int64)
        try:  # fast path: one numeric column
            t = pacsv.read_csv(io.BytesIO(data),
                               read_options=pacsv.ReadOptions(column_names=["y"]),
                               convert_options=pacsv.ConvertOptions(column_types={"y": pa.float64()}))
            vals = t.column("y").to_numpy()
            if _has_empty_lines(data):
                lines = _nonempty_lines(data, blk.first_line)[1]
            else:
                lines = blk.first_line + np.arange(len(vals), dtype=np.int64)
            if len(lines) == len(vals):
                return vals, lines
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        raw, lines = _nonempty_lines(data, blk.first_line)
        vals = []
        for s in raw:
            s = s.strip().strip(b'"')
            if not s:
                continue
            try:
                vals.append(float(s))
            except ValueError:
                vals.append(np.nan)  # reported as a bad label by the reader
        return np.asarray(vals, dtype=np.float64), lines

    def take(self, n: int, xpath: str) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` labels and their line numbers in the labels file."""
        while len(self._buf) < n:
            if not self._more():
                raise _err(self.path, None, f"has {self.taken + len(self._buf)} labels, fewer than "
                           f"the rows of {xpath}")
        out, lines = self._buf[:n], self._lines[:n]
        self._buf, self._lines = self._buf[n:], self._lines[n:]
        self.taken += n
        return out, lines

    def finish(self, xpath: str) -> None:
        if len(self._buf) or self._more():
            raise _err(self.path, int(self._lines[0]), f"more labels than {xpath} has rows "
                       f"({self.taken} rows)")


def _nonempty_lines(data: bytes, first_line: int) -> tuple[list[bytes], np.ndarray]:
    """The block's lines and the line numbers of the non-empty ones."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    nums = np.fromiter((first_line + i for i, ln in enumerate(lines) if ln not in (b"", b"\r")),
                       dtype=np.int64)
    return lines, nums


def _has_empty_lines(data: bytes) -> bool:
    return (data.startswith(b"\n") or data.startswith(b"\r\n") or b"\n\n" in data
            or b"\n\r\n" in data)


class RawReader:
    """Streams one input file as :class:`RawBlock` s.

    ``include_sparse=False`` skips the categorical columns (pass 1 of hash encoding).
    ``parse_threads`` is handed to ``pyarrow.csv`` (its own thread pool).
    """

    def __init__(self, fmt: RawFormat, skip_bad_rows: bool = False,
                 block_bytes: int = BLOCK_BYTES, include_sparse: bool = True,
                 parse_threads: bool = True):
        self.fmt = fmt
        self.skip_bad_rows = skip_bad_rows
        self.block_bytes = block_bytes
        self.include_sparse = include_sparse
        self.parse_threads = parse_threads
        f = fmt
        self._numeric = ([f.label] if f.label else []) + list(f.dense)
        self._read_cols = self._numeric + (f.sparse_raw if include_sparse else [])
        if f.name != "parquet":
            self._text_cols = self._read_cols + ([TRAILING] if f.trailing_empty else [])
            types = {c: pa.float64() for c in self._numeric}
            types.update({c: pa.binary() for c in self._text_cols if c not in types})
            self._read_opts = pacsv.ReadOptions(column_names=f.columns, use_threads=parse_threads,
                                                block_size=1 << 20)
            quoting = f.delimiter == ","
            self._parse_opts = pacsv.ParseOptions(delimiter=f.delimiter,
                                                  quote_char='"' if quoting else False,
                                                  double_quote=quoting, escape_char=False)
            self._conv_opts = pacsv.ConvertOptions(column_types=types,
                                                   include_columns=self._text_cols or f.columns[:1],
                                                   null_values=sorted(MISSING_TOKENS),
                                                   strings_can_be_null=False,
                                                   quoted_strings_can_be_null=False)

    # ---------------------------------------------------------------- public

    def blocks(self) -> Iterator[RawBlock]:
        f = self.fmt
        if f.name == "parquet":
            yield from self._parquet_blocks()
            return
        labels = None
        if f.labels_path:
            labels = _LabelStream(f.labels_path, f.labels_compression, f.labels_header,
                                  self.block_bytes, self.skip_bad_rows)
        any_rows = False
        for bb in iter_byte_blocks(f.path, f.compression, f.header, self.block_bytes):
            blk = self._text_block(bb, labels)
            any_rows = any_rows or blk.num_rows > 0 or bool(blk.bad)
            yield blk
        if not any_rows:
            raise _err(f.path, 2 if f.header else 1, "no data rows")
        if labels is not None:
            labels.finish(f.path)

    # ---------------------------------------------------------------- text

    def _parse(self, data: bytes) -> pa.Table:
        try:
            return pacsv.read_csv(io.BytesIO(data), read_options=self._read_opts,
                                  parse_options=self._parse_opts, convert_options=self._conv_opts)
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e):
                raise
        # a line longer than pyarrow's 1 MB parse block: parse this data as one block
        opts = pacsv.ReadOptions(column_names=self.fmt.columns, use_threads=self.parse_threads,
                                 block_size=len(data) + 1)
        return pacsv.read_csv(io.BytesIO(data), read_options=opts,
                              parse_options=self._parse_opts, convert_options=self._conv_opts)

    def _fields(self, line: bytes) -> list[str]:
        """One line's fields as text (CSV quotes stripped), for messages about it."""
        parts = line.rstrip(b"\r").decode("utf-8", "replace").split(self.fmt.delimiter)
        return [v.strip().strip('"') for v in parts] if self.fmt.delimiter == "," else parts

    def _diagnose(self, line: bytes, error: str) -> str:
        """A readable problem for one line pyarrow rejected."""
        f = self.fmt
        parts = self._fields(line)
        if len(parts) != len(f.columns):
            if f.trailing_empty:
                return (f"has {len(parts)} fields, expected {len(f.columns)} (the file's lines "
                        "end with an empty field)")
            return f"has {len(parts)} fields, expected {len(f.columns)}"
        for name, v in zip(f.columns, parts):
            if name in self._numeric:
                if v not in MISSING_TOKENS and not _is_number(v):
                    what = "label" if name == f.label else f"integer field {name}"
                    return f"{what} is not a number: {v[:40]!r}"
        msg = error.splitlines()[0] if error else "cannot be parsed"
        return f"cannot be parsed: {msg[:200]}"

    def _locate_bad(self, lines: list[bytes], lo: int, hi: int, out: list[tuple[int, str]]) -> None:
        """Bisection: appends (index, problem) of every line in [lo, hi) pyarrow rejects."""
        chunk = b"\n".join(lines[lo:hi])
        if not chunk.strip(b"\r\n"):
            return
        try:
            self._parse(chunk + b"\n")
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            if hi - lo == 1:
                out.append((lo, self._diagnose(lines[lo], str(e))))
                return
        mid = (lo + hi) // 2
        self._locate_bad(lines, lo, mid, out)
        self._locate_bad(lines, mid, hi, out)

    def _raise_first(self, bad: list[tuple[int, str]]) -> None:
        if bad and not self.skip_bad_rows:
            line, problem = min(bad)
            raise _err(self.fmt.path, line, problem, skippable=True,
                       unit="row" if self.fmt.name == "parquet" else "line")

    def _text_block(self, bb: ByteBlock, labels: _LabelStream | None) -> RawBlock:
        f = self.fmt
        data = bb.data
        bad: list[tuple[int, str]] = []
        row_lines: np.ndarray | None = None   # line number of each row, when not consecutive
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        table = None
        if not data.strip(b"\r\n"):
            row_lines = np.empty(0, dtype=np.int64)
        else:
            try:
                table = self._parse(data)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                table = None
            if table is None:  # slow path: find the offending lines by bisection
                lines, nonempty = _nonempty_lines(data, bb.first_line)
                found: list[tuple[int, str]] = []
                self._locate_bad(lines, 0, len(lines), found)
                if not found:
                    raise _err(f.path, bb.first_line, "block fails to parse but no line does "
                               "(quoted newlines are not supported)")
                bad.extend((bb.first_line + i, problem) for i, problem in found)
                self._raise_first(bad)
                drop = {i for i, _ in found}
                badnums = np.array([bb.first_line + i for i in sorted(drop)], dtype=np.int64)
                row_lines = nonempty[~np.isin(nonempty, badnums)]
                body = b"\n".join(ln for i, ln in enumerate(lines) if i not in drop)
                table = self._parse(body + b"\n") if body.strip(b"\r\n") else None
                got = table.num_rows if table is not None else 0
                if got != len(row_lines):
                    raise _err(f.path, bb.first_line, f"internal: {got} rows parsed from "
                               f"{len(row_lines)} lines")
        n = table.num_rows if table is not None else 0

        def lines_of_rows() -> np.ndarray:
            nonlocal row_lines
            if row_lines is None:
                if _has_empty_lines(data):
                    row_lines = _nonempty_lines(data, bb.first_line)[1]
                else:
                    row_lines = bb.first_line + np.arange(n, dtype=np.int64)
            return row_lines

        keep_mask = None
        label = None
        if f.label is not None and n:
            col = table.column(f.label)
            lab = col.to_numpy()
            ok = (lab == 0) | (lab == 1)
            if not ok.all():
                rl = lines_of_rows()
                null = pc.is_null(col).to_numpy(zero_copy_only=False)
                for i in np.flatnonzero(~ok):
                    problem = "label is empty" if null[i] else f"label {lab[i]:g} is not 0 or 1"
                    bad.append((int(rl[i]), problem))
                keep_mask = ok
            label = lab.astype(np.float32)
        if labels is not None:
            # the k-th non-empty data line pairs with the k-th label
            if row_lines is None and not _has_empty_lines(data):
                ylab, ylines = labels.take(n, f.path)
            else:
                nonempty = _nonempty_lines(data, bb.first_line)[1]
                yall, yl_all = labels.take(len(nonempty), f.path)
                pos = np.searchsorted(nonempty, lines_of_rows())
                ylab, ylines = yall[pos], yl_all[pos]
            ok = (ylab == 0) | (ylab == 1)
            if not ok.all():
                rl = lines_of_rows()
                for i in np.flatnonzero(~ok):
                    problem = ("is not a number" if np.isnan(ylab[i])
                               else f"is {ylab[i]:g}, not 0 or 1")
                    bad.append((int(rl[i]), f"its label ({labels.path} line {int(ylines[i])}) "
                                + problem))
                keep_mask = ok if keep_mask is None else keep_mask & ok
            label = ylab.astype(np.float32)
        if n:
            keep_mask = self._check_values(table, data, bb.first_line, lines_of_rows, keep_mask, bad)
        bad.sort()
        self._raise_first(bad)
        if n and keep_mask is not None and not keep_mask.all():
            table = table.filter(pa.array(keep_mask))
            label = label[keep_mask] if label is not None else None
            n = table.num_rows
        return self._to_block(table, n, label, bad, bb.first_line, bb.raw_pos, n_lines)

    def _check_values(self, table: pa.Table, data: bytes, first_line: int, lines_of_rows,
                      keep_mask: np.ndarray | None, bad: list[tuple[int, str]]) -> np.ndarray | None:
        """Marks rows with a dense value that is not a finite float32, or with something in
        the trailing field that must be empty; returns the updated keep mask."""
        f = self.fmt
        checks = [(c, _unfit_dense(table.column(c))) for c in f.dense]
        if f.trailing_empty:
            checks.append((TRAILING, pc.greater(pc.binary_length(table.column(TRAILING)), 0)
                           .to_numpy(zero_copy_only=False)))
        unfit = np.zeros(table.num_rows, dtype=bool)
        for _, b in checks:
            unfit |= b
        if not unfit.any():
            return keep_mask
        rl = lines_of_rows()
        lines = data.split(b"\n")
        new = unfit if keep_mask is None else unfit & keep_mask  # one problem per row
        for i in np.flatnonzero(new):
            c = next(c for c, b in checks if b[i])
            text = self._fields(lines[rl[i] - first_line])[f.columns.index(c)][:40]
            problem = (f"has a value after the last field ({text!r}); the file's lines end "
                       "with an empty field" if c == TRAILING else _unfit_problem(c, text))
            bad.append((int(rl[i]), problem))
        return ~unfit if keep_mask is None else keep_mask & ~unfit

    def _to_block(self, table: pa.Table | None, n: int, label: np.ndarray | None,
                  bad: list[tuple[int, str]], first_line: int, raw_pos: int,
                  n_lines: int) -> RawBlock:
        f = self.fmt
        dense = np.empty((n, len(f.dense)), dtype=np.float64)
        sparse: dict[str, pa.Array] = {}
        if n:
            for j, c in enumerate(f.dense):
                dense[:, j] = table.column(c).to_numpy()
            if self.include_sparse:
                for c in f.sparse_raw:
                    col = table.column(c)
                    sparse[c] = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
                if f.avazu_hour:
                    sparse["hour"], sparse[WEEKDAY] = _derive_avazu_hour(sparse["hour"])
        elif self.include_sparse:
            for c in f.sparse:
                sparse[c] = pa.array([], pa.binary())
        if label is None and f.has_label:
            label = np.empty(0, dtype=np.float32)
        return RawBlock(f.path, first_line, label, dense, sparse, bad, raw_pos, n_lines)

    # ---------------------------------------------------------------- parquet

    def _parquet_blocks(self) -> Iterator[RawBlock]:
        f = self.fmt
        try:
            pf = pq.ParquetFile(f.path)
        except Exception as e:  # noqa: BLE001
            raise _err(f.path, None, f"cannot read Parquet: {e}") from None
        total = pf.metadata.num_rows
        if total == 0:
            raise _err(f.path, None, "Parquet file has no rows")
        size = os.path.getsize(f.path)
        cols = list(dict.fromkeys(self._read_cols + (["hour"] if f.avazu_hour and self.include_sparse else [])))
        cols = cols or f.columns[:1]  # row counting only: read one column
        row = 1
        batch_rows = max(1 << 16, self.block_bytes // 256)
        try:
            batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
            for batch in batches:
                n = batch.num_rows
                yield self._parquet_block(pa.Table.from_batches([batch]), row,
                                          int(size * (row - 1 + n) / total))
                row += n
        except RawInputError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise _err(f.path, None, f"cannot read Parquet (near row {row}): {e}") from None

    def _parquet_numeric(self, col: pa.ChunkedArray, name: str, first_row: int,
                         bad: dict[int, str]) -> np.ndarray:
        """float64 values (NaN = missing); non-numbers, and dense values that are not finite
        float32 (a float NaN is missing, a "nan" string is not), go into ``bad``."""
        t = col.type
        dense = name != self.fmt.label
        arr = None
        numeric = (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                   or pa.types.is_null(t) or pa.types.is_decimal(t))
        if numeric:
            arr = col.cast(pa.float64())
        else:
            try:
                arr = col.cast(pa.string()).cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        if arr is not None:
            out = arr.to_numpy()
            if dense:
                for i in np.flatnonzero(_unfit_dense(arr, nan_is_missing=numeric)):
                    v = out[i] if numeric else col[int(i)].as_py()
                    text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    bad.setdefault(first_row + int(i), _unfit_problem(name, text.strip()[:40]))
            return out
        vals = col.to_pylist()
        out = np.full(len(vals), np.nan)
        for i, v in enumerate(vals):
            if v is None:
                continue
            s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            s = s.strip()
            if s in MISSING_TOKENS:
                continue
            try:
                out[i] = float(s)
            except ValueError:
                what = "label" if name == self.fmt.label else f"integer field {name}"
                bad.setdefault(first_row + i, f"{what} is not a number: {s[:40]!r}")
                continue
            if dense and not abs(out[i]) <= FLOAT32_MAX:
                bad.setdefault(first_row + i, _unfit_problem(name, s[:40]))
        return out

    def _parquet_block(self, table: pa.Table, first_row: int, raw_pos: int) -> RawBlock:
        f = self.fmt
        n = table.num_rows
        bad: dict[int, str] = {}
        numeric = {c: self._parquet_numeric(table.column(c), c, first_row, bad) for c in self._numeric}
        label = None
        if f.label is not None:
            lab = numeric[f.label]
            for i in np.flatnonzero(~((lab == 0) | (lab == 1))):
                if first_row + i not in bad:
                    bad[first_row + int(i)] = ("label is empty" if np.isnan(lab[i])
                                               else f"label {lab[i]:g} is not 0 or 1")
            label = lab.astype(np.float32)
        self._raise_first([(r, bad[r]) for r in bad])
        if bad:
            keep = np.ones(n, dtype=bool)
            keep[np.array(sorted(bad)) - first_row] = False
            table = table.filter(pa.array(keep))
            numeric = {c: v[keep] for c, v in numeric.items()}
            label = label[keep] if label is not None else None
            n = table.num_rows
        dense = np.empty((n, len(f.dense)), dtype=np.float64)
        for j, c in enumerate(f.dense):
            dense[:, j] = numeric[c]
        sparse: dict[str, pa.Array] = {}
        if self.include_sparse:
            from ctr.data.encoding import _as_binary
            for c in f.sparse_raw:
                sparse[c] = _as_binary(table.column(c))
            if f.avazu_hour:
                sparse["hour"], sparse[WEEKDAY] = _derive_avazu_hour(sparse["hour"])
        return RawBlock(f.path, first_row, label, dense, sparse, sorted(bad.items()), raw_pos,
                        table.num_rows + len(bad))
