"""Labels from a separate one-column file, handed out in step with the feature rows.

Avazu's 21-column variant (``avazu-x``) keeps its labels apart from its features
(``--labels y.csv``); any input without a label column may take one. The file is text, plain
or gzip, one 0/1 per line with an optional header; the k-th non-empty label line belongs to
the k-th non-empty feature line. A value that is not 0/1 is a bad row of the feature file
(its message names the labels file and line); too few or too many labels is an error.

Example::

    comp, header = labels_file_options("y.csv")            # (None, True)
    stream = LabelStream("y.csv", comp, header, BLOCK_BYTES, skip_bad_rows=False)
    y, lines = stream.take(1000, "X.csv")                   # the next 1000 labels
    stream.finish("X.csv")                                  # none may be left over
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ctr.data.raw.files import (ByteBlock, check_file, has_empty_lines, head_lines,
                                input_error, iter_byte_blocks, nonempty_lines,
                                sniff_compression)
from ctr.data.raw.rows import is_number


def labels_file_options(path: str) -> tuple[str | None, bool]:
    """(compression, header) of a one-column labels file."""
    check_file(path, "labels")
    comp = sniff_compression(path)
    if comp == "parquet":
        raise input_error(path, None, "labels file must be text (one 0/1 per line), not Parquet")
    lines = [ln for ln in head_lines(path, comp, 5) if ln.strip()]
    if not lines:
        raise input_error(path, 1, "empty labels file")
    first = lines[0].strip().strip('"')
    header = not is_number(first)
    if header and len(lines) == 1:
        raise input_error(path, 2, "labels file has a header but no labels")
    return comp, header


class LabelStream:
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
            if has_empty_lines(data):
                lines = nonempty_lines(data, blk.first_line)[1]
            else:
                lines = blk.first_line + np.arange(len(vals), dtype=np.int64)
            if len(lines) == len(vals):
                return vals, lines
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        raw, lines = nonempty_lines(data, blk.first_line)
        parsed = []
        for s in raw:
            s = s.strip().strip(b'"')
            if not s:
                continue
            try:
                parsed.append(float(s))
            except ValueError:
                parsed.append(np.nan)  # reported as a bad label by the reader
        return np.asarray(parsed, dtype=np.float64), lines

    def take(self, n: int, xpath: str) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` labels and their line numbers in the labels file."""
        while len(self._buf) < n:
            if not self._more():
                raise input_error(self.path, None, f"has {self.taken + len(self._buf)} labels, "
                                  f"fewer than the rows of {xpath}")
        out, lines = self._buf[:n], self._lines[:n]
        self._buf, self._lines = self._buf[n:], self._lines[n:]
        self.taken += n
        return out, lines

    def finish(self, xpath: str) -> None:
        if len(self._buf) or self._more():
            raise input_error(self.path, int(self._lines[0]), f"more labels than {xpath} has "
                              f"rows ({self.taken} rows)")
