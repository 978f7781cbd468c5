"""Raw input files as bytes: plain or gzip, read in blocks of whole lines.

Everything below the parsers works on bytes, so it knows nothing of any format: the magic
bytes (gzip, Parquet; bzip2 and zstd refused with a readable message), decompression through
``zlib`` (multi-member gzip works; a truncated or corrupt stream is an error naming the line
reached), and ~:data:`BLOCK_BYTES` blocks cut at line ends, so the line number of each block's
first line is exact and a bad row can be named. :class:`RawInputError` is the one error every
problem with a raw input raises; :func:`input_error` writes its ``path: line N: problem``.

Example::

    comp = sniff_compression("day_0.gz")                  # "gzip"
    for bb in iter_byte_blocks("day_0.gz", comp, skip_header=False):
        bb.first_line, bb.data[:80]
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

BLOCK_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 30   # a longer "line" is not a click log (pyarrow's limit is 2 GiB)


class RawInputError(ValueError):
    """A raw input is malformed; the message names the file, the line and the problem.

    ``skippable`` is true for a bad row that ``skip_bad_rows`` would have skipped."""

    def __init__(self, message: str, skippable: bool = False):
        super().__init__(message)
        self.skippable = skippable


def input_error(path: str | os.PathLike, line: int | None, problem: str,
                skippable: bool = False, unit: str = "line") -> RawInputError:
    """``path: line N: problem`` (or ``path: problem``) as a :class:`RawInputError`."""
    where = f"{path}: {unit} {line}: " if line is not None else f"{path}: "
    return RawInputError(where + problem, skippable)


def check_file(path: str, what: str = "input") -> None:
    """A readable error for an input that is missing, a directory, or not a regular file."""
    if os.path.isdir(path):
        raise input_error(path, None, f"is a directory; give the {what} file(s) inside it")
    if not os.path.exists(path):
        raise input_error(path, None, "no such file")
    if not os.path.isfile(path):
        raise input_error(path, None, f"is not a regular file; the {what} must be a file")


def sniff_compression(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"parquet"`` or ``None`` (plain text), from the magic bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"PAR1":
        return "parquet"
    if head[:3] == b"BZh":
        raise input_error(path, None, "bzip2-compressed input is not supported; decompress it "
                          "or use gzip")
    if head == b"\x28\xb5\x2f\xfd":
        raise input_error(path, None, "zstd-compressed input is not supported; decompress it "
                          "or use gzip")
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
                    raise input_error(path, line, f"longer than {MAX_LINE_BYTES >> 20} MiB without "
                                      "a line break; this is not a line-based text file")
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
        raise input_error(path, line + pending.count(b"\n"),
                          f"truncated gzip file ({e}); the file is incomplete") from None
    except zlib.error as e:
        raise input_error(path, line, f"corrupt gzip data ({e})") from None
    except OSError as e:
        raise input_error(path, line, f"cannot read: {e}") from None
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
            raise input_error(path, None, f"starts like gzip but is not valid gzip data "
                              f"({e})") from None
        # else reported with a line number by the block reader
    text = b"".join(got)
    if size >= max_bytes or text.count(b"\n") > max_lines:
        text = text[: text.rfind(b"\n") + 1] if b"\n" in text else text
    lines = text.decode("utf-8", "replace").splitlines()
    return lines[:max_lines]


def nonempty_lines(data: bytes, first_line: int) -> tuple[list[bytes], np.ndarray]:
    """The block's lines and the line numbers of the non-empty ones."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    nums = np.fromiter((first_line + i for i, ln in enumerate(lines) if ln not in (b"", b"\r")),
                       dtype=np.int64)
    return lines, nums


def has_empty_lines(data: bytes) -> bool:
    """Whether a block holds an empty line (so row k is not line ``first_line + k``)."""
    return (data.startswith(b"\n") or data.startswith(b"\r\n") or b"\n\n" in data
            or b"\n\r\n" in data)
