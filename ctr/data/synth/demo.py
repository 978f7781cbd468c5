"""The demo dataset: the built-in synthetic data, generated on first use and then reused.

``ctr-train`` without ``--data``, ``make demo`` and the sweeps need a dataset without asking
for one; :func:`ensure_demo_dataset` makes ``data/synthetic-demo`` (:data:`DEMO_ROWS` rows)
the first time and reuses it while its ``meta.json`` matches: same rows, seed, default model
knobs and :data:`~ctr.data.synth.model.GENERATOR_VERSION`, so a dataset from an older
generator is regenerated rather than trained on. Concurrent callers (the ranks of one
``torchrun``) wait on a lock file instead of generating twice.

Example::

    path = ensure_demo_dataset()                          # data/synthetic-demo, made once
    path = ensure_demo_dataset("data/synthetic-2m", rows=2_000_000, seed=1)
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from ctr.data.dataset import DatasetError, read_meta
from ctr.data.synth.dataset import generate_dataset
from ctr.data.synth.model import GENERATOR_VERSION, SynthConfig

DEMO_DIR = Path(__file__).resolve().parents[3] / "data" / "synthetic-demo"
DEMO_ROWS = 1_000_000


def _matches(meta: dict[str, Any], rows: int, seed: int) -> bool:
    syn = meta.get("synthetic") or {}
    return (meta.get("dataset") == "synthetic" and syn.get("version") == GENERATOR_VERSION
            and syn.get("rows") == rows and syn.get("seed") == seed
            and syn.get("model") == dataclasses.asdict(SynthConfig()))


def ensure_demo_dataset(path: str | os.PathLike = DEMO_DIR, rows: int = DEMO_ROWS,
                        seed: int = 0) -> Path:
    """The built-in synthetic dataset at ``path``: generated on first use, reused afterwards.

    Reused if its meta.json matches ``rows``, ``seed`` and this generator version (default
    model knobs); a synthetic dataset that does not match is regenerated; any other content at
    ``path`` is an error. Concurrent callers (e.g. the ranks of one ``torchrun``) serialise on
    a lock file beside ``path``. Prints one line saying which happened.
    """
    import fcntl
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            meta = None
            if path.exists():
                try:
                    meta = read_meta(path)
                except DatasetError:
                    if any(path.iterdir()):
                        raise FileExistsError(f"{path} exists and is not a synthetic dataset; "
                                              "move it away or pass another path") from None
                if meta is not None and meta.get("dataset") != "synthetic":
                    raise FileExistsError(f"{path} holds a {meta.get('dataset')!r} dataset, not "
                                          "the synthetic demo; move it away or pass another path")
            if meta is not None and _matches(meta, rows, seed):
                print(f"synthetic dataset: reusing {path} ({rows:,} rows, seed {seed})", flush=True)
                return path
            why = "regenerating (parameters changed)" if meta is not None else "generating"
            print(f"synthetic dataset: {why} {path} ({rows:,} rows, seed {seed}) ...",
                  end="", flush=True)
            t0 = time.perf_counter()
            try:
                generate_dataset(path, rows, seed=seed, overwrite=path.exists(), progress=False)
            except BaseException:
                print(" failed", flush=True)
                raise
            print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
            return path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
