"""The format registry: which raw layouts exist, how a file is recognised, who reads it.

:func:`detect_format` sniffs a file into a :class:`RawFormat`: compression and Parquet by
magic bytes (:mod:`~ctr.data.raw.files`), then for text the delimiter (TAB or comma) and
whether the first line is a header. Column names come from the header, or for a headerless
file from its most common field count in the first lines. Every dataset-specific rule lives
in one module of :data:`RULES`; this file only asks them, in order:

==================  =======================================================================
hook                what a rules module answers
==================  =======================================================================
DATASET_NAMES       the ``RawFormat.dataset`` values it owns
FORMATS             ``--format`` names -> whether one accepts a detected (name, layout)
LABEL_NAMES ...     column names that are its label / an id to drop / mark a header line
headerless_names    (names, trailing empty field) from a field count, or None
layout              dense / sparse / dataset from the feature columns, or None
format_name         the format name of a layout it owns
derived_fields,     optional: output fields made from read ones, how (per block), and
derive, describe    extra ``meta.json`` source keys
==================  =======================================================================

Adding a format is one rules module plus its entry in :data:`RULES`. :class:`RawReader` hands
a format to its reader: Parquet to :class:`~ctr.data.raw.parquet.ParquetReader`, all text to
:class:`~ctr.data.raw.text.TextReader`.

Example::

    fmt = detect_format("train.txt.gz")              # RawFormat(name="criteo", ...)
    for block in RawReader(fmt).blocks():
        block.label, block.dense, block.sparse["C1"]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

from ctr.data.raw import avazu, criteo, parquet
from ctr.data.raw.files import (BLOCK_BYTES, check_file, head_lines, input_error,
                                sniff_compression)
from ctr.data.raw.labels import labels_file_options
from ctr.data.raw.parquet import ParquetReader
from ctr.data.raw.rows import BlockReader, RawBlock
from ctr.data.raw.text import TextReader

# the dataset rules, in the order they list their formats; FALLBACK takes any layout the
# others do not claim (Criteo's I<n>-dense rule: dataset "custom" when not Criteo's own)
RULES: tuple[ModuleType, ...] = (criteo, avazu)
FALLBACK = criteo
FORMATS = ("auto", *(name for rules in RULES for name in rules.FORMATS), "parquet")
_ACCEPTS: dict[str, Callable[[str, dict], bool]] = {
    name: accepts for rules in RULES for name, accepts in rules.FORMATS.items()}
_RULES_OF = {dataset: rules for rules in RULES for dataset in rules.DATASET_NAMES}

LABEL_NAMES = tuple(dict.fromkeys(("label", "clicked", "target", "y")
                                  + tuple(n for r in RULES for n in r.LABEL_NAMES)))
ID_NAMES = tuple(dict.fromkeys(n for r in RULES for n in r.ID_NAMES))
_HEADER_WORDS = frozenset({"label", "target", "y"}).union(*(r.HEADER_WORDS for r in RULES))
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NIB_LIKE = re.compile(r"^[0-9a-f]{6,}$")


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
    def rules(self) -> ModuleType:
        """The module of :data:`RULES` this input's dataset belongs to."""
        return _RULES_OF[self.dataset]

    @property
    def has_label(self) -> bool:
        return self.label is not None or self.labels_path is not None

    @property
    def sparse_raw(self) -> list[str]:
        """The categorical fields read from the file (``sparse`` less the derived ones)."""
        hook = getattr(self.rules, "derived_fields", None)
        derived = hook(self) if hook else []
        return [f for f in self.sparse if f not in derived]

    def derive(self, sparse: dict[str, Any]) -> None:
        """A block's categoricals as read -> as output, in place (the rules' ``derive``)."""
        hook = getattr(self.rules, "derive", None)
        if hook:
            hook(self, sparse)

    def layout(self) -> tuple:
        """What must agree between several inputs of one dataset."""
        return (self.dataset, self.has_label, tuple(self.dense), tuple(self.sparse))

    def describe(self) -> dict:
        out: dict[str, Any] = {"format": self.name, "compression": self.compression}
        if self.name != "parquet":
            out.update(delimiter=self.delimiter, header=self.header)
        if self.labels_path:
            out["labels"] = self.labels_path
        if self.trailing_empty:
            out["trailing_empty_field"] = True
        hook = getattr(self.rules, "describe", None)
        if hook:
            out.update(hook(self))
        return out


class RawReader:
    """Streams one input file as :class:`~ctr.data.raw.rows.RawBlock` s, by its format's
    reader.

    ``include_sparse=False`` skips the categorical columns (pass 1 of hash encoding).
    ``parse_threads`` is handed to ``pyarrow.csv`` (its own thread pool).
    """

    def __init__(self, fmt: RawFormat, skip_bad_rows: bool = False,
                 block_bytes: int = BLOCK_BYTES, include_sparse: bool = True,
                 parse_threads: bool = True):
        cls = ParquetReader if fmt.name == "parquet" else TextReader
        self.reader: BlockReader = cls(fmt, skip_bad_rows, block_bytes, include_sparse,
                                       parse_threads)
        self.fmt = fmt
        self.skip_bad_rows = skip_bad_rows
        self.block_bytes = block_bytes
        self.include_sparse = include_sparse
        self.parse_threads = parse_threads

    def blocks(self) -> Iterator[RawBlock]:
        return self.reader.blocks()


# --------------------------------------------------------------------------- detection


def detect_format(path: str | os.PathLike, fmt: str = "auto",
                  labels: str | os.PathLike | None = None, avazu_hour: str = "raw") -> RawFormat:
    """Sniffs ``path`` (compression by magic bytes, then the first lines) into a
    :class:`RawFormat`; ``fmt`` other than ``auto`` must agree with what is found.
    ``avazu_hour``: see :data:`~ctr.data.raw.avazu.AVAZU_HOUR` ("split" applies only to
    ``YYMMDDHH`` values)."""
    path = str(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    avazu.check_hour_option(avazu_hour)
    check_file(path)
    if os.path.getsize(path) == 0:
        raise input_error(path, 1, "empty file")
    comp = sniff_compression(path)
    if comp == "parquet" or fmt == "parquet":
        if comp != "parquet":
            raise input_error(path, None, "--format parquet, but the file is not Parquet "
                              "(no PAR1 magic)")
        fm = _detect_parquet(path)
        avazu.apply_hour_option(fm, avazu_hour, lambda col: parquet.sample_column(path, col))
    else:
        fm, sample = _detect_text(path, comp, fmt)
        avazu.apply_hour_option(fm, avazu_hour, sample)
    if labels is not None:
        if fm.label is not None:
            raise input_error(path, None, f"has its own label column {fm.label!r}; do not pass "
                              "--labels")
        fm.labels_path = str(labels)
        fm.labels_compression, fm.labels_header = labels_file_options(str(labels))
    return fm


def layout_from_names(names: list[str]) -> dict:
    """label / dense / sparse / drop columns and dataset kind from column names."""
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate column names {dup}")
    lower = [n.lower() for n in names]
    label = next((n for n, lo in zip(names, lower) if lo in LABEL_NAMES), None)
    drop = [n for n, lo in zip(names, lower) if lo in ID_NAMES]
    rest = [n for n in names if n != label and n not in drop]
    if not rest:
        raise ValueError("no feature columns")
    for rules in RULES:
        if rules is not FALLBACK:
            lay = rules.layout(rest)
            if lay is not None:
                return dict(label=label, drop=drop, **lay)
    return dict(label=label, drop=drop, **FALLBACK.layout(rest))


def looks_like_header(fields: list[str]) -> bool:
    fields = [f.strip().strip('"') for f in fields]
    if not all(_IDENT.match(f) for f in fields):
        return False
    return (any(f.lower() in _HEADER_WORDS for f in fields)
            or not any(_NIB_LIKE.match(f) for f in fields))


def _headerless_names(n: int, lines: list[str], delim: str) -> tuple[list[str], bool] | None:
    for rules in RULES:
        got = rules.headerless_names(n, lines, delim)
        if got is not None:
            return got
    return None


def _detect_parquet(path: str) -> RawFormat:
    names = parquet.column_names(path)
    try:
        lay = layout_from_names(names)
    except ValueError as e:
        raise input_error(path, None, str(e)) from None
    return RawFormat(path, "parquet", lay["dataset"], None, "", False, names, lay["label"],
                     lay["dense"], list(lay["sparse"]), lay["drop"])


def _detect_text(path: str, comp: str | None,
                 fmt: str) -> tuple[RawFormat, Callable[[str], list[str]]]:
    """The format of a text file and a sampler: column -> its first values, stripped."""
    lines = head_lines(path, comp)
    nonempty = [ln for ln in lines if ln.strip()]
    if not nonempty:
        raise input_error(path, 1, "empty file" if not lines else "no data in the first lines")
    first = lines[0]
    if not first.strip():
        raise input_error(path, 1, "first line is empty")
    if "\t" in first:
        delim = "\t"
    elif "," in first:
        delim = ","
    else:
        raise input_error(path, 1, "neither TAB- nor comma-separated; cannot detect the format")
    fields = first.rstrip("\r").split(delim)
    header = looks_like_header(fields)
    trailing = False
    if not header:  # the most common field count of the first lines, not a truncated first line
        counts = [len(ln.rstrip("\r").split(delim)) for ln in nonempty]
        common = max(sorted(set(counts)), key=counts.count)
        if counts.count(common) > counts.count(len(fields)):
            fields = nonempty[counts.index(common)].rstrip("\r").split(delim)
    if header:
        names = [f.strip().strip('"') for f in fields]
        if len(nonempty) < 2:
            raise input_error(path, 2, "header but no data rows")
    else:
        got = _headerless_names(len(fields), nonempty, delim)
        if got is None:
            known = ", ".join(rules.HEADERLESS for rules in RULES)
            raise input_error(path, 1, f"{len(fields)} {'TAB' if delim == chr(9) else 'comma'}-"
                              f"separated fields and no header: not a known layout ({known}); "
                              "add a header line naming the columns")
        names, trailing = got
    try:
        lay = layout_from_names(names[:-1] if trailing else names)
    except ValueError as e:
        raise input_error(path, 1, f"header: {e}") from None
    name = _RULES_OF[lay["dataset"]].format_name(lay, delim, names)
    if fmt != "auto" and not _ACCEPTS[fmt](name, lay):
        raise input_error(path, 1, f"looks like {name} ({len(fields)} fields, "
                          f"{'header' if header else 'no header'}, label "
                          f"{'yes' if lay['label'] else 'no'}), not --format {fmt}")
    if fmt != "auto":
        name = fmt
    data_lines = nonempty[1:] if header else nonempty

    def sample(column: str) -> list[str]:
        i = names.index(column)
        return [ln.split(delim)[i].strip() for ln in data_lines if len(ln.split(delim)) > i]

    fm = RawFormat(path, name, lay["dataset"], comp, delim, header, names, lay["label"],
                   lay["dense"], list(lay["sparse"]), lay["drop"], trailing_empty=trailing)
    return fm, sample
