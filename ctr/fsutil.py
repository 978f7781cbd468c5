"""Files that are never half-written, temporaries that a dead run leaves are cleaned, and one
process at a time per directory.

Every temporary ctr makes sits beside its target and carries the creating process's pid::

    .NAME.tmp-<pid>-<hex>     being written (a file or a directory), renamed onto NAME when whole
    .NAME.old-<pid>-<hex>     the previous NAME, moved aside by an overwrite, deleted right after

so :func:`clean_stale_temps` can remove the ones whose process is gone (a ``kill -9``, a
power cut) without touching a live writer's, nor anything that is not ctr's.
:class:`DirLock` is an exclusive ``flock`` on ``DIR/.lock``: the kernel drops it when its
process dies, so a crashed run never leaves a stale lock behind.

Example::

    with DirLock("runs/a", what="run directory"):        # DirLockError if another process has it
        clean_stale_temps("runs/a")
        write_json_atomic("runs/a/config.json", cfg)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
LOCK_FILE = ".lock"


def temp_path(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` tagged with this process's pid (``kind``: tmp | old)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """ctr's temporaries in ``directory`` (only those of target ``name``, if given) whose
    creating process no longer runs."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _TEMP_RE.match(p.name)
        if (m and (name is None or m["name"] == name) and int(m["pid"]) != os.getpid()
                and not pid_alive(int(m["pid"]))):
            out.append(p)
    return sorted(out)


def clean_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Removes :func:`stale_temps` of ``directory`` (files or trees); returns what it removed."""
    removed = []
    for p in stale_temps(directory, name):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary beside ``path``, fsyncs it, then renames it into place."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """JSON (indented, one trailing newline) written with :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes renames inside ``directory`` durable (best effort where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DirLockError(Exception):
    """Another live process holds the directory's lock."""


class DirLock:
    """Exclusive, non-blocking lock on ``directory`` (``directory/.lock``), held until
    :meth:`release` or the process ends. ``what`` names the directory in the error."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise DirLockError(f"{self.directory}: {self.what} is in use by another process{who}; "
                                   "wait for it to finish or pick another directory") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the descriptor drops the flock

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.directory}: lock not held")
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
