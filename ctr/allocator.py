"""The memory allocator of every ctr process: tcmalloc where it is installed, else glibc tuned.

Why: glibc's malloc serves every block above its mmap threshold (128 KiB, adapting up to
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A training step's activations and
gradients are far larger, so every step gets new pages that the kernel zero-fills on first
touch: about 25,000 minor page faults per 100 MB tensor, every step. tcmalloc keeps freed
memory for reuse; so does glibc once its mmap threshold is above the step's tensors and heap
trimming is off. Issue 11 measured steps 1.5-2x faster with tcmalloc, and the 8K step nearly
as fast with the glibc settings.

``CTR_ALLOCATOR`` chooses (default ``auto``):

=========  ==========================================================================
auto       ``tcmalloc`` where ``libtcmalloc_minimal.so.4`` is found, else ``glibc``
           (on glibc), else ``system``
tcmalloc   ``LD_PRELOAD`` += the library, ``TCMALLOC_RELEASE_RATE=0`` (freed pages are
           kept: the default rate hands back ~10% of them, which fault again); an error
           where the library is not found
glibc      ``GLIBC_TUNABLES`` += ``glibc.malloc.mmap_threshold=2147483648`` (blocks up to
           2 GiB come from the heap) and ``glibc.malloc.trim_threshold=68719476736`` (the
           heap is not given back); a tcmalloc inherited in ``LD_PRELOAD`` is dropped
system     the environment as it is (inherited settings included)
=========  ==========================================================================

``tcmalloc`` and ``glibc`` also set ``THP_MEM_ALLOC_ENABLE=1``: torch then puts every tensor of
2 MB or more on 2 MB-aligned memory advised for transparent huge pages (where the kernel's
``transparent_hugepage/enabled`` is ``madvise`` or ``always``). A training step's lookups read
rows of multi-GB tables at random, and with 4 KB pages most of them miss the TLB: a gather of
26K random rows of a 6.4M x 10 table took 0.28 ms with 4 KB pages and 0.21 ms with 2 MB ones
here (one thread), 1.7M rows 54 and 49 ms (the RSS moved by under 1%); a whole step, less than
the machine's noise.

Existing ``LD_PRELOAD`` entries stay first (they keep precedence), and values already in
``GLIBC_TUNABLES`` or ``TCMALLOC_RELEASE_RATE`` win over these.

ld.so and glibc read these variables when a process starts, never later, so every entry
point (``ctr-train``, ``ctr-eval``, ``ctr-sweep``, ``ctr-preprocess``, the tools) calls
:func:`ensure` first in ``main``: it re-executes the process once, same pid, same argv, with
the variables set (about half a second: the imports run twice). Child processes (torchrun
workers, sweep cells) inherit them and need no restart. ``make setup`` installs tcmalloc where
it can (``python -m ctr.allocator install``); ``make test`` runs pytest under the same set-up
(``python -m ctr.allocator run -- CMD``).

:func:`active_allocator` says what this process really runs with, not what was asked: the
library that ``malloc`` resolves to, and for glibc whether a block above glibc's largest
dynamic threshold comes from the heap. ``python -m ctr.allocator`` shows the choice.

Example::

    def main(argv=None):
        allocator.ensure(main, argv)      # first: may restart the process once
        ...
        print("allocator:", allocator.describe_active())
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ctr.exitcodes import EXIT_USAGE

ENV = "CTR_ALLOCATOR"
# "this pid was re-executed already": exec keeps the pid, a child has another one
MARKER = "CTR_ALLOCATOR_EXEC"
AUTO, TCMALLOC, GLIBC, SYSTEM = "auto", "tcmalloc", "glibc", "system"
CHOICES = (AUTO, TCMALLOC, GLIBC, SYSTEM)

TCMALLOC_LIBRARY = "libtcmalloc_minimal.so.4"
APT_PACKAGE = "libtcmalloc-minimal4"
# torch's switch for 2 MB pages under its tensors (see the module docstring), with either malloc
TORCH_SETTINGS = {"THP_MEM_ALLOC_ENABLE": "1"}
# tcmalloc's default (1.0) returns ~10% of a freed 100 MB block's pages, which fault again
TCMALLOC_SETTINGS = {"TCMALLOC_RELEASE_RATE": "0", **TORCH_SETTINGS}
GLIBC_SETTINGS = {"glibc.malloc.mmap_threshold": str(2 << 30),     # 2 GiB
                  "glibc.malloc.trim_threshold": str(64 << 30)}    # 64 GiB


class AllocatorError(ValueError):
    """A ``CTR_ALLOCATOR`` that cannot be honoured (unknown value, library missing)."""


def tcmalloc_paths() -> list[str]:
    """Where :func:`find_tcmalloc` looks: Debian/Ubuntu's multiarch directory, the other
    distributions' library directories, then this Python's prefixes (conda)."""
    arch = f"{platform.machine()}-linux-gnu"
    dirs = [f"/usr/lib/{arch}", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    return list(dict.fromkeys(os.path.join(d, TCMALLOC_LIBRARY) for d in dirs))


def find_tcmalloc() -> str | None:
    """The first tcmalloc library of :func:`tcmalloc_paths` that exists, or None."""
    return next((p for p in tcmalloc_paths() if os.path.isfile(p)), None)


def glibc_version() -> str | None:
    """``"2.36"`` where this process runs on glibc, else None (musl, macOS)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    return text.split()[-1] if text and text.startswith("glibc") else None


def _split_preload(value: str) -> list[str]:
    # ld.so separates LD_PRELOAD entries by spaces or colons
    return value.replace(":", " ").split()


def _is_tcmalloc(path: str) -> bool:
    return os.path.basename(path).startswith("libtcmalloc")


def _parse_tunables(value: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in value.split(":") if item)
    return {k: v for k, _, v in pairs}


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided: the allocator, and the variables to set for it (only those
    that differ from the environment; none: the environment already provides it)."""

    mode: str
    changes: dict[str, str] = field(default_factory=dict)
    library: str | None = None


def plan(env: Mapping[str, str] | None = None, find: Callable[[], str | None] = find_tcmalloc,
         glibc: bool | None = None) -> Plan:
    """The allocator for a process started with ``env`` (default ``os.environ``) and the
    variables that select it, merged with those ``env`` already holds. ``find`` locates
    tcmalloc (None: not installed), ``glibc`` says whether the C library is glibc (default:
    this process's). Raises :class:`AllocatorError` for an unknown ``CTR_ALLOCATOR`` or a
    forced ``tcmalloc`` / ``glibc`` that is not there."""
    env = os.environ if env is None else env
    choice = env.get(ENV, "").strip().lower() or AUTO
    if choice not in CHOICES:
        raise AllocatorError(f"{ENV}={env[ENV]!r}: choose one of {', '.join(CHOICES)}")
    lib = find()
    on_glibc = glibc_version() is not None if glibc is None else glibc
    if choice == AUTO:
        choice = TCMALLOC if lib else GLIBC if on_glibc else SYSTEM
    preload = _split_preload(env.get("LD_PRELOAD", ""))
    if choice == TCMALLOC:
        if not lib:
            raise AllocatorError(f"{ENV}=tcmalloc, but {TCMALLOC_LIBRARY} is in none of "
                                 f"{', '.join(tcmalloc_paths())}; install it (apt-get install "
                                 f"{APT_PACKAGE}, or `make setup` as root) or set {ENV}=glibc")
        changes = {k: v for k, v in TCMALLOC_SETTINGS.items() if k not in env}
        if not any(map(_is_tcmalloc, preload)):
            changes["LD_PRELOAD"] = " ".join([*preload, lib])
        return Plan(TCMALLOC, changes, lib)
    if choice == GLIBC:
        if not on_glibc:
            raise AllocatorError(f"{ENV}=glibc, but this C library is not glibc; set {ENV}=system")
        changes = {k: v for k, v in TORCH_SETTINGS.items() if k not in env}
        if any(map(_is_tcmalloc, preload)):   # inherited from a tcmalloc parent: glibc was asked for
            changes["LD_PRELOAD"] = " ".join(p for p in preload if not _is_tcmalloc(p))
        old = env.get("GLIBC_TUNABLES", "")
        missing = [f"{k}={v}" for k, v in GLIBC_SETTINGS.items() if k not in _parse_tunables(old)]
        if missing:
            changes["GLIBC_TUNABLES"] = ":".join(filter(None, [old, *missing]))
        return Plan(GLIBC, changes)
    return Plan(SYSTEM)


def _is_program(entry: Callable) -> bool:
    """Whether ``entry`` is this process's program: the ``__main__`` module's own function of
    that name, and ``__main__`` is the file the command line ran (a console script, ``python
    -m``, a tool, runpy), not an interactive session or ``-c`` that may have done anything."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, getattr(entry, "__name__", ""), None) is not entry or not path or not sys.argv:
        return False
    return os.path.realpath(path) == os.path.realpath(sys.argv[0])


def ensure(entry: Callable, argv: Sequence[str] | None = None) -> None:
    """Re-executes this process once (``os.execve``: same pid, so signals and exit codes are
    the program's own) with :func:`plan`'s variables, when they are not set yet. ``entry`` is
    the calling ``main``, ``argv`` its argument: nothing happens for an in-process call
    (``argv`` given, or ``entry`` not the program), nor a second time in the same pid. An
    invalid ``CTR_ALLOCATOR`` ends the process with exit code 2 and the reason."""
    if argv is not None or not _is_program(entry) or os.environ.get(MARKER) == str(os.getpid()):
        return
    prog = os.path.basename(sys.argv[0]) or "ctr"
    try:
        changes = plan().changes
    except AllocatorError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if not changes:
        return
    env = {**os.environ, **changes, MARKER: str(os.getpid())}
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as e:   # runs on, with the allocator it has
        print(f"{prog}: cannot restart with the {ENV} set-up ({e.strerror}); "
              f"running with {describe_active()}", file=sys.stderr)


def malloc_library() -> str | None:
    """The file of the shared library whose ``malloc`` this process calls (the mapping that
    holds the address ``malloc`` resolves to), or None where that cannot be told."""
    try:
        addr = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, _, hi = parts[0].partition("-")
                if addr is not None and int(lo, 16) <= addr < int(hi, 16):
                    return parts[5].strip() if len(parts) > 5 else None
    except (OSError, AttributeError, ValueError):
        return None
    return None


# above glibc's largest dynamic mmap threshold (32 MiB): from the heap only once it was raised
PROBE_BYTES = 64 << 20


def glibc_heap_serves(nbytes: int) -> bool:
    """Whether glibc's malloc gives an ``nbytes`` block from its heap rather than a fresh mmap:
    it allocates one and reads the chunk's IS_MMAPPED bit (bit 1 of the size word before the
    pointer), then frees it. What glibc really does, whatever set it (tunables, mallopt)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    ptr = libc.malloc(nbytes)
    if not ptr:
        return False
    try:
        size_word = ctypes.c_size_t.from_address(ptr - ctypes.sizeof(ctypes.c_size_t)).value
    finally:
        libc.free(ptr)
    return not size_word & 2


def _active() -> tuple[str, str]:
    lib = malloc_library()
    name = os.path.basename(lib) if lib else ""
    if _is_tcmalloc(name):
        return TCMALLOC, f"tcmalloc ({lib})"
    if not lib:   # no /proc/self/maps (not Linux): the platform's own malloc, untouched
        return SYSTEM, f"system malloc ({platform.system()})"
    version = glibc_version()
    if not name.startswith("libc.") or version is None:   # a user's LD_PRELOAD, or not glibc
        preloaded = lib in {os.path.realpath(p) for p in _split_preload(os.environ.get("LD_PRELOAD", ""))}
        return (name if preloaded else SYSTEM), f"{'' if preloaded else 'system malloc, '}{name} ({lib})"
    tunables = os.environ.get("GLIBC_TUNABLES")
    if glibc_heap_serves(PROBE_BYTES):
        return GLIBC, f"glibc {version} malloc, mmap threshold raised" + (
            f" (GLIBC_TUNABLES={tunables})" if tunables else "")
    return SYSTEM, f"glibc {version} malloc, mmap threshold not raised" + (
        f" (GLIBC_TUNABLES={tunables})" if tunables else "")


def active_allocator() -> str:
    """The allocator this process runs with: ``tcmalloc``, ``glibc`` (glibc's malloc serving
    blocks above its 32 MiB dynamic mmap threshold from the heap: the tunables took effect),
    ``system`` (the C library's malloc as it comes), or the file name of another library that
    provides ``malloc`` (an ``LD_PRELOAD`` of the user's, a non-glibc C library)."""
    return _active()[0]


def describe_active() -> str:
    """:func:`active_allocator` with its details, e.g. ``tcmalloc (/usr/lib/.../libtcmalloc_minimal.so.4)``."""
    return _active()[1]


def install_tcmalloc(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """Installs tcmalloc (``apt-get install libtcmalloc-minimal4``) when it is missing and this
    process may (root, apt-get present); returns a line saying what happened. Never raises on a
    failed install: without tcmalloc ctr falls back to the glibc settings."""
    found = find_tcmalloc()
    if found:
        return f"tcmalloc: {found}"
    fallback = "ctr falls back to glibc's malloc with GLIBC_TUNABLES"
    apt = shutil.which("apt-get")
    if not apt or not hasattr(os, "geteuid"):
        return f"tcmalloc: not found and no apt-get to install it; {fallback}"
    if os.geteuid() != 0:
        return f"tcmalloc: not found and not root; {fallback} (as root: apt-get install {APT_PACKAGE})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", APT_PACKAGE]
    try:
        if run(install, env=env, timeout=600).returncode != 0:   # a fresh image: no package lists yet
            run([apt, "update", "-q"], env=env, timeout=600)
            run(install, env=env, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        return f"tcmalloc: apt-get failed ({e}); {fallback}"
    found = find_tcmalloc()
    return f"tcmalloc: installed {found}" if found else f"tcmalloc: apt-get install {APT_PACKAGE} failed; {fallback}"


USAGE = """usage: python -m ctr.allocator [show | env | install | run -- CMD [ARG...]]
  show     the allocator ctr chooses here, and the one this process runs with (default)
  env      the variables to set, one KEY=VALUE a line (nothing when the environment has them)
  install  install tcmalloc with apt-get where missing and root (make setup); never fails
  run      run CMD with the variables set (make test)"""


def _main(args: list[str]) -> int:
    cmd = args[0] if args else "show"
    try:
        if cmd == "run":
            rest = args[2:] if args[1:2] == ["--"] else args[1:]
            if not rest:
                print(USAGE, file=sys.stderr)
                return 2
            env = {**os.environ, **plan().changes}
            try:
                os.execvpe(rest[0], rest, env)
            except OSError as e:
                print(f"ctr.allocator run: cannot run {rest[0]}: {e.strerror}", file=sys.stderr)
                return 127
        if cmd in ("show", "env") and len(args) <= 1:
            p = plan()
            if cmd == "env":
                print("\n".join(f"{k}={v}" for k, v in p.changes.items()))
            else:
                print(f"chosen: {p.mode}" + (f" ({p.library})" if p.library else "")
                      + (f"; sets {' '.join(f'{k}={v}' for k, v in p.changes.items())}" if p.changes else ""))
                print(f"this process: {describe_active()}")
            return 0
    except AllocatorError as e:
        print(f"ctr.allocator: {e}", file=sys.stderr)
        return 2
    if cmd == "install" and len(args) == 1:
        print(install_tcmalloc())
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
