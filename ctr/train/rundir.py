"""One process at a time per run directory, and what a run directory holds.

``runs/NAME/`` is owned by one ``ctr-train`` for as long as it runs: an exclusive lock
(:class:`ctr.fsutil.DirLock` on ``runs/NAME/.lock``), taken before anything is written and
held until the process ends. Under ``ctr-train --nproc N`` the launcher takes it, passes its
descriptor to torchrun (so it outlives a killed launcher until torchrun has ended its workers)
and tells the workers through the environment (:data:`LOCK_ENV`); under a bare ``torchrun``
rank 0 takes it. While the lock is held, temporaries of dead writers in the run
directory are safe to remove.

Example::

    hold_run_lock("runs/a")          # DirLockError when another live process holds it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ctr.fsutil import DirLock, clean_stale_temps

# The resolved run directory whose lock a parent process (the --nproc launcher) holds.
LOCK_ENV = "CTR_RUN_LOCK_HELD"
_held: dict[str, DirLock] = {}


def hold_run_lock(run_dir: str | Path) -> bool:
    """Makes sure this process (or its launcher) holds ``run_dir``'s lock, until the process
    ends or :func:`release_run_lock`. Returns True if this call took it. Idempotent."""
    key = str(Path(run_dir).resolve())
    if key in _held or os.environ.get(LOCK_ENV) == key:
        return False
    _held[key] = DirLock(run_dir, what="run directory").acquire()
    os.environ[LOCK_ENV] = key  # children (torchrun workers) know their parent holds it
    clean_stale_temps(run_dir)
    return True


def run_lock_fd(run_dir: str | Path) -> int | None:
    """The descriptor of the lock this process holds on ``run_dir``: a child it is passed to
    (``pass_fds``) keeps the directory locked for as long as the child lives."""
    lock = _held.get(str(Path(run_dir).resolve()))
    return lock.fileno() if lock is not None else None


def release_run_lock(run_dir: str | Path) -> None:
    key = str(Path(run_dir).resolve())
    lock = _held.pop(key, None)
    if lock is not None:
        lock.release()
        if os.environ.get(LOCK_ENV) == key:
            del os.environ[LOCK_ENV]


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None if it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
