"""Fault injection at named points, for tests that must kill a process at a precise place.

A point is a call ``fault_point("checkpoint.before_latest")`` in the code; it does nothing
unless the environment names it::

    CTR_FAULT_AT=checkpoint.before_latest      fire the first time the point is reached
    CTR_FAULT_AT=train.mid_step@3              fire the 3rd time
    CTR_FAULT_AT=train.mid_step@3,checkpoint.after_rank_file   several points (a double Ctrl-C)
    CTR_FAULT_SIGNAL=INT                       the signal sent (name or number; default KILL)

The signal goes to the process itself, so a test sees exactly what a ``kill -9`` or a Ctrl-C
at that instant would leave behind. Unset, a point costs one dict lookup.

Example::

    subprocess.run([...ctr-train...], env={**os.environ, "CTR_FAULT_AT": "checkpoint.before_latest"})
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def _signal() -> int:
    spec = os.environ.get("CTR_FAULT_SIGNAL", "KILL").strip().upper()
    if spec.isdigit():
        return int(spec)
    signum = getattr(signal, spec if spec.startswith("SIG") else "SIG" + spec, None)
    if signum is None:
        raise ValueError(f"CTR_FAULT_SIGNAL={spec!r} is not a signal name")
    return int(signum)


def fault_point(name: str) -> None:
    """Sends ``CTR_FAULT_SIGNAL`` to this process if ``CTR_FAULT_AT`` names this point
    (``name`` or ``name@N`` for the N-th time it is reached; a comma-separated list)."""
    spec = os.environ.get("CTR_FAULT_AT")
    if not spec:
        return
    wanted = [nth for target, _, nth in (s.strip().partition("@") for s in spec.split(",")) if target == name]
    if not wanted:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if any(_hits[name] == (int(nth) if nth else 1) for nth in wanted):
        os.kill(os.getpid(), _signal())
