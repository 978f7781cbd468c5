"""Delimited text (TSV / CSV, plain or gzip) parsed into Arrow, bad rows found and named.

A block of whole lines (:func:`~ctr.data.raw.files.iter_byte_blocks`) is parsed by
``pyarrow.csv`` in its own threads: numeric columns as float64, categoricals as binary, so
the fast path does no per-line Python work. Only a block that fails to parse is taken apart:
bisection re-parses halves until each rejected line is found, and :meth:`TextReader._diagnose`
says what is wrong with it (field count, a non-numeric integer or label). Labels other than
0/1 and dense values a float32 cannot hold are found on the parsed columns. A line longer
than pyarrow's 1 MB parse block is re-parsed as one block. A layout whose lines end with one
more, empty field (``RawFormat.trailing_empty``, Criteo's trailing TAB) reads that last column
too, and a value there is a bad row.

Example::

    for block in TextReader(detect_format("train.txt"), skip_bad_rows=True).blocks():
        block.label, block.dense, block.sparse["C1"], block.bad
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ctr.data.raw.files import (BLOCK_BYTES, ByteBlock, has_empty_lines, input_error,
                                iter_byte_blocks, nonempty_lines)
from ctr.data.raw.labels import LabelStream
from ctr.data.raw.rows import (MISSING_TOKENS, BlockReader, RawBlock, is_number, unfit_dense,
                               unfit_problem)

if TYPE_CHECKING:
    from ctr.data.raw.formats import RawFormat


class TextReader(BlockReader):
    """Streams one delimited text file as :class:`~ctr.data.raw.rows.RawBlock` s."""

    def __init__(self, fmt: RawFormat, skip_bad_rows: bool = False, block_bytes: int = BLOCK_BYTES,
                 include_sparse: bool = True, parse_threads: bool = True):
        super().__init__(fmt, skip_bad_rows, block_bytes, include_sparse, parse_threads)
        f = fmt
        self._trailing = f.columns[-1] if f.trailing_empty else None
        self._text_cols = self._read_cols + ([self._trailing] if self._trailing else [])
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

    def blocks(self) -> Iterator[RawBlock]:
        f = self.fmt
        labels = None
        if f.labels_path:
            labels = LabelStream(f.labels_path, f.labels_compression, f.labels_header,
                                 self.block_bytes, self.skip_bad_rows)
        any_rows = False
        for bb in iter_byte_blocks(f.path, f.compression, f.header, self.block_bytes):
            blk = self._text_block(bb, labels)
            any_rows = any_rows or blk.num_rows > 0 or bool(blk.bad)
            yield blk
        if not any_rows:
            raise input_error(f.path, 2 if f.header else 1, "no data rows")
        if labels is not None:
            labels.finish(f.path)

    # ---------------------------------------------------------------- parsing

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

    # ---------------------------------------------------------------- bad rows

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
                if v not in MISSING_TOKENS and not is_number(v):
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

    def _text_block(self, bb: ByteBlock, labels: LabelStream | None) -> RawBlock:
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
                lines, nonempty = nonempty_lines(data, bb.first_line)
                found: list[tuple[int, str]] = []
                self._locate_bad(lines, 0, len(lines), found)
                if not found:
                    raise input_error(f.path, bb.first_line, "block fails to parse but no line "
                                      "does (quoted newlines are not supported)")
                bad.extend((bb.first_line + i, problem) for i, problem in found)
                self._raise_first(bad)
                drop = {i for i, _ in found}
                badnums = np.array([bb.first_line + i for i in sorted(drop)], dtype=np.int64)
                row_lines = nonempty[~np.isin(nonempty, badnums)]
                body = b"\n".join(ln for i, ln in enumerate(lines) if i not in drop)
                table = self._parse(body + b"\n") if body.strip(b"\r\n") else None
                got = table.num_rows if table is not None else 0
                if got != len(row_lines):
                    raise input_error(f.path, bb.first_line, f"internal: {got} rows parsed from "
                                      f"{len(row_lines)} lines")
        n = table.num_rows if table is not None else 0
        assert n == 0 or table is not None  # n > 0 only with a parsed table

        def lines_of_rows() -> np.ndarray:
            nonlocal row_lines
            if row_lines is None:
                if has_empty_lines(data):
                    row_lines = nonempty_lines(data, bb.first_line)[1]
                else:
                    row_lines = bb.first_line + np.arange(n, dtype=np.int64)
            return row_lines

        keep_mask = None
        label = None
        if f.label is not None and table is not None and n:
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
            if row_lines is None and not has_empty_lines(data):
                ylab, ylines = labels.take(n, f.path)
            else:
                nonempty = nonempty_lines(data, bb.first_line)[1]
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
        if table is not None and keep_mask is not None and not keep_mask.all():
            table = table.filter(pa.array(keep_mask))
            label = label[keep_mask] if label is not None else None
            n = table.num_rows
        return self._to_block(table, n, label, bad, bb.first_line, bb.raw_pos, n_lines)

    def _check_values(self, table: pa.Table, data: bytes, first_line: int,
                      lines_of_rows: Callable[[], np.ndarray], keep_mask: np.ndarray | None,
                      bad: list[tuple[int, str]]) -> np.ndarray | None:
        """Marks rows with a dense value that is not a finite float32, or with something in
        the trailing field that must be empty; returns the updated keep mask."""
        f = self.fmt
        checks = [(c, unfit_dense(table.column(c))) for c in f.dense]
        if self._trailing:
            checks.append((self._trailing,
                           pc.greater(pc.binary_length(table.column(self._trailing)), 0)
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
                       "with an empty field" if c == self._trailing else unfit_problem(c, text))
            bad.append((int(rl[i]), problem))
        return ~unfit if keep_mask is None else keep_mask & ~unfit

    def _to_block(self, table: pa.Table | None, n: int, label: np.ndarray | None,
                  bad: list[tuple[int, str]], first_line: int, raw_pos: int,
                  n_lines: int) -> RawBlock:
        f = self.fmt
        dense = np.empty((n, len(f.dense)), dtype=np.float64)
        sparse: dict[str, pa.Array] = {}
        if table is not None and n:
            for j, c in enumerate(f.dense):
                dense[:, j] = table.column(c).to_numpy()
            if self.include_sparse:
                for c in f.sparse_raw:
                    col = table.column(c)
                    sparse[c] = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
                f.derive(sparse)
        elif self.include_sparse:
            for c in f.sparse:
                sparse[c] = pa.array([], pa.binary())
        if label is None and f.has_label:
            label = np.empty(0, dtype=np.float32)
        return RawBlock(f.path, first_line, label, dense, sparse, bad, raw_pos, n_lines)
