"""Progress bars that suit where they are written: a live bar on a terminal, a plain line
now and then elsewhere.

Written to a file or a pipe (CI logs, ``nohup``, a sweep cell's ``train.log``), a tqdm bar
redraws itself with ``\\r`` on every refresh, so a 30-second run leaves ~90 copies of the bar
in the log. :func:`progress_bar` returns a normal tqdm bar when its stream is a terminal and
otherwise one that prints a complete line at most every :data:`LOG_INTERVAL_S` seconds
(and at the end).

Example::

    with progress_bar(total=n, desc="epoch 1/10", unit="step") as bar:
        bar.update(1)
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _NoBareNewline:
    """A stream wrapper that drops the lone newline tqdm writes after its final line."""

    def __init__(self, fp: Any):
        self.fp = fp

    def write(self, s: str) -> None:
        if s != "\n":
            self.fp.write(s)

    def flush(self) -> None:
        self.fp.flush()


class _LineBar(tqdm):
    """tqdm that writes each refresh as its own line (for streams that are not terminals)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or (self.n == 0 and msg is None and self.last_print_n == 0
                         and not getattr(self, "_ctr_started", False)):
            self._ctr_started = True  # a clear, or the empty bar at start: nothing to say
            return True
        fp: Any = getattr(self, "fp")
        fp.write((msg if msg is not None else self.__str__()) + "\n")
        fp.flush()
        return True

    def close(self) -> None:
        if not hasattr(self, "fp"):  # a disabled bar has no stream
            return super().close()
        fp: Any = getattr(self, "fp")
        self.fp = _NoBareNewline(fp)
        try:
            super().close()
        finally:
            self.fp = fp


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on ``file`` (default stderr): live on a terminal, a line every
    :data:`LOG_INTERVAL_S` seconds elsewhere. Takes tqdm's keyword arguments."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs["maxinterval"] = max(kwargs.get("maxinterval", 0), kwargs["mininterval"])
    return _LineBar(file=stream, ncols=100, **kwargs)
