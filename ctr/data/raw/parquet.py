"""Raw Parquet input: columns named like a text header (label, I1..I13, C1..C26; Avazu's).

Detection reads only the schema (its column names go through the same name rules as a text
header) and, for a rule that needs values, the first rows of one column. Blocks are record
batches of ``block_bytes / 256`` rows (at least 64K); numeric columns may be integers,
floats, decimals or strings, categoricals strings or integers. The row checks are text's
(:mod:`ctr.data.raw.rows`), with one difference: a float NaN in a dense column is missing,
while the text ``"nan"`` is a bad value. Rows are counted from 1 and errors say ``row N``.

Example::

    column_names("x.parquet")                          # ["label", "I1", ..., "C26"]
    for block in ParquetReader(detect_format("x.parquet")).blocks():
        block.first_line, block.num_rows                # first_line counts rows here
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctr.data.encoding import _as_binary
from ctr.data.raw.files import RawInputError, input_error
from ctr.data.raw.rows import MISSING_TOKENS, BlockReader, RawBlock, unfit_dense, unfit_problem
from ctr.data.transforms import FLOAT32_MAX


def column_names(path: str) -> list[str]:
    """The column names of a Parquet file, from its schema."""
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise input_error(path, None, f"cannot read Parquet: {e}") from None
    return list(schema.names)


def sample_column(path: str, column: str, rows: int = 20) -> list[str]:
    """The non-null values of ``column`` in the first ``rows`` rows, as stripped text."""
    try:
        first = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=[column]))
    except StopIteration:
        return []
    return [str(v).strip() for v in first.column(0).to_pylist() if v is not None]


class ParquetReader(BlockReader):
    """Streams one raw Parquet file as :class:`~ctr.data.raw.rows.RawBlock` s."""

    def blocks(self) -> Iterator[RawBlock]:
        f = self.fmt
        try:
            pf = pq.ParquetFile(f.path)
        except Exception as e:  # noqa: BLE001
            raise input_error(f.path, None, f"cannot read Parquet: {e}") from None
        total = pf.metadata.num_rows
        if total == 0:
            raise input_error(f.path, None, "Parquet file has no rows")
        size = os.path.getsize(f.path)
        cols = list(dict.fromkeys(self._read_cols))
        cols = cols or f.columns[:1]  # row counting only: read one column
        row = 1
        batch_rows = max(1 << 16, self.block_bytes // 256)
        try:
            batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
            for batch in batches:
                n = batch.num_rows
                yield self._block(pa.Table.from_batches([batch]), row,
                                  int(size * (row - 1 + n) / total))
                row += n
        except RawInputError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise input_error(f.path, None, f"cannot read Parquet (near row {row}): {e}") from None

    def _numeric_column(self, col: pa.ChunkedArray, name: str, first_row: int,
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
                for i in np.flatnonzero(unfit_dense(arr, nan_is_missing=numeric)):
                    v = out[i] if numeric else col[int(i)].as_py()
                    text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    bad.setdefault(first_row + int(i), unfit_problem(name, text.strip()[:40]))
            return out
        vals = col.to_pylist()
        out = np.full(len(vals), np.nan)
        for k, v in enumerate(vals):
            if v is None:
                continue
            s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            s = s.strip()
            if s in MISSING_TOKENS:
                continue
            try:
                out[k] = float(s)
            except ValueError:
                what = "label" if name == self.fmt.label else f"integer field {name}"
                bad.setdefault(first_row + k, f"{what} is not a number: {s[:40]!r}")
                continue
            if dense and not abs(out[k]) <= FLOAT32_MAX:
                bad.setdefault(first_row + k, unfit_problem(name, s[:40]))
        return out

    def _block(self, table: pa.Table, first_row: int, raw_pos: int) -> RawBlock:
        f = self.fmt
        n = table.num_rows
        bad: dict[int, str] = {}
        numeric = {c: self._numeric_column(table.column(c), c, first_row, bad)
                   for c in self._numeric}
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
            for c in f.sparse_raw:
                sparse[c] = _as_binary(table.column(c))
            f.derive(sparse)
        return RawBlock(f.path, first_row, label, dense, sparse, sorted(bad.items()), raw_pos,
                        table.num_rows + len(bad))
