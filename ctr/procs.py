"""Child processes that end when their parent ends, and a parent that waits for them on Ctrl-C.

::

    parent ──Popen──▶ python -m ctr.procs PARENT_PID CMD...   a fresh single-threaded process:
                        prctl(PR_SET_PDEATHSIG, SIGTERM)        SIGTERM when the parent dies,
                        parent already gone? SIGTERM now         even by SIGKILL
                        └──exec──▶ CMD                          (the death signal survives exec)

Why a wrapper: ``preexec_fn`` would run Python between fork and exec, which can deadlock when
other threads hold locks (the sweep starts its cells from a thread pool). A new session plus a
parent-side handler would not do either: no handler runs on SIGKILL, and a child outside the
terminal's foreground group would miss its Ctrl-C. Children therefore stay in the parent's
process group. The kernel sends the death signal when the *thread* that started the child ends,
so :func:`run_child` waits for the child in the thread that started it.

Signals, while :func:`forward_signals` is active in the main thread:

- SIGINT (Ctrl-C) is recorded, not raised: the terminal sent it to the whole foreground group,
  children included, which checkpoint at a step boundary and exit 130. Forwarding it would hit
  them a second time mid-checkpoint, and dying would orphan them, so the parent just waits and
  returns their code.
- SIGTERM is sent to the parent alone, so it is passed on to every live child; then it waits.

A SIGINT sent to the parent alone (``kill -INT``) is therefore not passed on: the parent waits
for its children to finish (the sweep starts no new cell); SIGTERM is the way to stop them.

torchrun's own workers run in sessions of their own: torchrun passes SIGINT/SIGTERM on to them,
and a worker calls :func:`die_with_parent` at start to cover torchrun being killed.

Example::

    code = run_child([sys.executable, "-m", "ctr.cli.train", ...], stdout=log)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

PR_SET_PDEATHSIG = 1
_live: set[subprocess.Popen] = set()     # children started by run_child and not yet reaped
_received: list[int] = []                # signals seen by the active forward_signals block
_active = [False]


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Has the kernel send this process ``sig`` when its parent ends; returns False where that
    is not available (not Linux). ``parent`` is the pid the parent should have: if it is gone
    already (it died before this call), ``sig`` is sent at once. Without it, a parent that died
    before this call goes unnoticed."""
    if not sys.platform.startswith("linux"):
        return False
    expected = os.getppid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)
    return True


def guarded(cmd: Sequence[str]) -> list[str]:
    """``cmd`` run through this module's wrapper, so it gets SIGTERM when this process dies."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-m", "ctr.procs", str(os.getpid()), *map(str, cmd)]


def _signal_child(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)  # a no-op once the child is reaped: never a recycled pid
    except ProcessLookupError:
        pass


@contextmanager
def forward_signals() -> Iterator[list[int]]:
    """Within the block SIGINT and SIGTERM are recorded (SIGTERM also sent to every live
    child) instead of ending this process; yields the list of signals received. Acts in the
    main thread only (the only one Python delivers signals to); nested, or in another thread
    while the main thread has a block, it shares that block's list."""
    if _active[0]:
        yield _received
        return
    if threading.current_thread() is not threading.main_thread():
        yield []
        return

    def on_signal(signum: int, frame: object) -> None:
        _received.append(signum)
        if signum == signal.SIGTERM:
            for proc in list(_live):
                _signal_child(proc, signum)

    _received.clear()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _active[0] = True
    try:
        yield _received
    finally:
        _active[0] = False
        for s, handler in old.items():
            signal.signal(s, handler)


def exit_status(returncode: int) -> int:
    """Popen's ``-N`` (killed by signal N) as the shell's ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


def run_child(cmd: Sequence[str], **popen_kwargs) -> int:
    """Runs ``cmd`` (:func:`guarded`) and waits for it under :func:`forward_signals`; returns
    its exit status (:func:`exit_status`)."""
    with forward_signals() as received:
        proc = subprocess.Popen(guarded(cmd), **popen_kwargs)
        _live.add(proc)
        try:
            if signal.SIGTERM in received:  # arrived while it was being started
                _signal_child(proc, signal.SIGTERM)
            code = proc.wait()
        finally:
            _live.discard(proc)
    return exit_status(code)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m ctr.procs PARENT_PID CMD [ARG...]", file=sys.stderr)
        return 2
    die_with_parent(signal.SIGTERM, parent=int(argv[0]))
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as e:
        print(f"ctr.procs: cannot run {argv[1]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
