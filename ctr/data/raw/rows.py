"""What every raw reader hands out and how it judges a row, whatever the file format.

A reader yields :class:`RawBlock` s: a label vector, a float64 dense matrix (NaN = missing)
and one Arrow binary array per categorical field, bad rows already removed and listed. The
rules for a bad value are the same for text and Parquet, so they live here: missing is an
empty field or one of :data:`MISSING_TOKENS`; a dense value that is not a finite float32
(``inf``, ``nan``, ``1e400``) is bad, as min-max scaling and the float32 dataset cannot hold
it. A bad row raises :class:`~ctr.data.raw.files.RawInputError` (the first one, by line)
unless ``skip_bad_rows``; :func:`check_bad_share` stops a run whose rows are mostly bad even
then, as that is a misread layout, not a few damaged lines.

Example::

    reader = TextReader(fmt, skip_bad_rows=True)           # a BlockReader
    for block in reader.blocks():
        block.num_rows, block.bad[:3]                       # [(line, problem), ...]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.data.raw.files import BLOCK_BYTES, RawInputError, input_error
from ctr.data.transforms import FLOAT32_MAX

if TYPE_CHECKING:
    from ctr.data.raw.formats import RawFormat

# missing in a numeric column: pyarrow's default null tokens less its NaN spellings (NaN,
# nan, -nan, 1.#IND, ...): a NaN, like inf or 1e400, in a dense field is a bad row
MISSING_TOKENS = {"", "#N/A", "#N/A N/A", "#NA", "N/A", "NA", "NULL", "n/a", "null"}
# --skip-bad-rows is for a few damaged rows: once more than this share of a file's rows is bad
# (checked after each block once BAD_SHARE_MIN_ROWS rows are seen, and at the file's end),
# the layout was misread and the run stops
BAD_SHARE_LIMIT = 0.5
BAD_SHARE_MIN_ROWS = 200


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


class BlockReader:
    """The part of a reader that does not depend on the file format: its options, the
    columns it reads (label, dense, and the raw categoricals unless ``include_sparse`` is
    false), and how a block's bad rows end (raise the first, or keep them listed)."""

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

    def blocks(self) -> Iterator[RawBlock]:
        raise NotImplementedError

    def _raise_first(self, bad: list[tuple[int, str]]) -> None:
        if bad and not self.skip_bad_rows:
            line, problem = min(bad)
            raise input_error(self.fmt.path, line, problem, skippable=True,
                              unit="row" if self.fmt.name == "parquet" else "line")


def is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def unfit_dense(col: pa.ChunkedArray | pa.Array, nan_is_missing: bool = False) -> np.ndarray:
    """Rows whose dense value is present but not a finite float32 (inf, NaN, 1e400, 1e39):
    min-max scaling would be ruined and the float32 dataset cannot hold them."""
    x = col.to_numpy(zero_copy_only=False)
    ok = np.abs(x) <= FLOAT32_MAX
    if nan_is_missing:
        ok |= np.isnan(x)
    elif col.null_count:
        ok |= pc.is_null(col).to_numpy(zero_copy_only=False)
    return ~ok


def unfit_problem(name: str, text: str) -> str:
    try:
        finite = math.isfinite(float(text))
    except ValueError:
        finite = False
    why = "is too large for float32" if finite else "is not a finite number"
    return f"integer field {name} {why}: {text!r}"


def check_bad_share(fm: RawFormat, good: int, bad: int,
                    example: tuple[int, str] | None) -> None:
    """Stops a run whose rows are mostly bad: a wrong layout, not a few damaged lines."""
    if bad <= BAD_SHARE_LIMIT * (good + bad):
        return
    unit = "row" if fm.name == "parquet" else "line"
    eg = f" (first: {unit} {example[0]}: {example[1]})" if example else ""
    raise RawInputError(f"{fm.path}: {bad:,} of the {good + bad:,} rows read are bad{eg}; with "
                        f"more than {BAD_SHARE_LIMIT:.0%} bad the layout looks wrong (read as "
                        f"{fm.name}, {len(fm.columns)} fields), so this stops even with "
                        "--skip-bad-rows: check the file or pass the right --format")
