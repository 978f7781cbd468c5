"""Which floating-point code paths a CPU run takes, and pinning them so that a run repeats on
another x86 machine.

The same command, data and seed repeat bit for bit on one machine. On another machine the
libraries may pick other kernels for the CPU they find, and other kernels sum in another order:
MKL (the dense layers' GEMMs) chooses its code path by CPU vendor and ISA, ATen vectorises its
own kernels for the widest ISA present (AVX2 or AVX-512), FBGEMM (TorchRec's embedding kernels)
and oneDNN do the same. One ulp of difference in a step grows over thousands of steps into a
different model: measured here (README "Noise"), forcing one other code path moves a 300-step
DeepFM cell's test AUC by up to 7e-5, and CowClip cells of the 2-epoch sweep differed across
two machines by 0.003.

``portable`` sets each library's documented switch to its AVX2 path, which every x86-64 CPU
of the last decade has, so that machines with AVX2 or more run the same kernels:

- ``MKL_CBWR=AVX2``: MKL's Conditional Numerical Reproducibility (the same results on any CPU
  that has AVX2, for the same MKL version and thread count);
- ``ATEN_CPU_CAPABILITY=avx2``: ATen's kernels;
- ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2``: FBGEMM's;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's.

A variable the user has set already is left as it is (and recorded). What it cannot pin: other
library versions (torch, MKL, FBGEMM: keep the wheels), GPUs, and non-x86 CPUs. The thread
count did not change a result here (1 vs 2 threads, bit for bit), but MKL's guarantee needs a
fixed one, so it is recorded too. ``native`` (the default of ``ctr-train``) changes nothing;
a sweep's cells are ``portable`` unless its preset says otherwise.

Example::

    numerics.apply("portable")      # before the first tensor op (ctr-train does it at start)
    numerics.describe()             # {"mode": "portable", "env": {...}, "cpu": "AMD EPYC", ...}
"""

from __future__ import annotations

import os
import platform
from typing import Any

NUMERICS = ("native", "portable")
PORTABLE_ENV = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
_MODE_VAR = "CTR_NUMERICS"   # what apply() chose, so that workers and describe() know


def portable_env() -> dict[str, str]:
    """The variables ``portable`` adds to the environment (those not set already)."""
    return {k: v for k, v in PORTABLE_ENV.items() if k not in os.environ}


def apply(mode: str) -> None:
    """Sets this process's (and its children's) numerics; ``ValueError`` for an unknown mode.
    Must run before the first MKL / ATen / FBGEMM call: each reads its switch once."""
    if mode not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, not {mode!r}")
    if mode == "portable":
        os.environ.update(portable_env())
    os.environ[_MODE_VAR] = mode


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """What a result's numerics depended on, for config.json / summary.json / sweep results."""
    import torch
    return {"mode": os.environ.get(_MODE_VAR, "native"),
            "env": {k: os.environ.get(k) for k in PORTABLE_ENV},
            "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}
