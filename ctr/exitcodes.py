"""Exit codes of the ctr commands, and the one table from a run's status to its code.

``summary.json``'s ``status`` decides how a run ends: ``ctr-train`` returns
:func:`exit_code_for_status` of it, and :func:`ctr.distributed.env.launch_workers` does the same
for a run under torchrun, which itself only says 0 or 1.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1           # a crash: no summary, or a status not in EXIT_CODES
EXIT_USAGE = 2            # bad input (flags, files, rows, a directory in use): nothing kept
EXIT_DIVERGED = 3         # training finished with a non-finite loss
EXIT_INTERRUPTED = 130    # Ctrl-C: a checkpoint was saved, --resume continues (128 + SIGINT)
EXIT_TERMINATED = 143     # SIGTERM to a command that keeps nothing of its run (ctr-preprocess)

EXIT_CODES = {"ok": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}


def exit_code_for_status(status: str | None, default: int = EXIT_FAILED) -> int:
    """The exit code of a run whose summary says ``status``; ``default`` for anything else."""
    return EXIT_CODES.get(status, default) if isinstance(status, str) else default
