"""Ctrl-C and SIGTERM stop a run at the next step boundary, never inside a step.

A step updates the dense weights, their Adam state and the tables one after the other; a
checkpoint taken between two of them would be a state no uninterrupted run passes through.
So the first SIGINT or SIGTERM only raises a flag; the trainer finishes the step, all ranks
agree on the step to stop after (the flag travels with the step's loss all-reduce), saves a
checkpoint and exits with status ``interrupted``. A second Ctrl-C aborts at once (the
checkpoint being written is abandoned; the previous one stays valid).

Example::

    with StopSignals() as stop:
        for batch in batches:
            step(batch)
            if stop.requested: ...
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class StopSignals:
    """Installs the handlers (main thread only; elsewhere it is inert) for the ``with`` block."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        if not self.requested:
            print(f"\n{name}: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
        self.requested = self.requested or name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()
