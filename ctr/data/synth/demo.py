"""The built-in data: which dataset a command uses when it is given none.

``ctr-train`` without ``--data``, ``make demo``, the sweeps and the tools need a dataset
without asking for one. :func:`resolve_dataset` is the one place that decides: the given
directory, else synthetic data under :func:`data_root` (``data/synthetic-demo`` with
:data:`DEMO_ROWS` rows, or ``data/synthetic-<rows>-s<seed>`` for a sweep's own size).
:func:`ensure_demo_dataset` makes it the first time and reuses it while its ``meta.json``
matches: same rows, seed, default model knobs and
:data:`~ctr.data.synth.model.GENERATOR_VERSION`, so a dataset from an older generator is
regenerated rather than trained on. Concurrent callers (the ranks of one ``torchrun``) wait
on a lock file instead of generating twice.

Example::

    ds = resolve_dataset(None)                            # data/synthetic-demo, made once
    ds = resolve_dataset(None, rows=2_000_000, seed=1)    # data/synthetic-2000000-s1
    ds = resolve_dataset("data/criteo")                   # read and checked, never generated
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ctr.data.dataset import DatasetError, DatasetSchema, read_schema
from ctr.data.synth.dataset import generate_dataset
from ctr.data.synth.model import GENERATOR_VERSION, make_config

DEMO_ROWS = 1_000_000
DATA_ROOT_ENV = "CTR_DATA_DIR"
_CHECKOUT = Path(__file__).resolve().parents[3]   # the source checkout, when ctr runs from one


def data_root() -> Path:
    """Where generated data goes: ``$CTR_DATA_DIR``, else the source checkout's ``data/``
    (ctr run from a clone), else ``./data`` (an installed ctr must not write into site-packages)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env)
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "ctr" / "__init__.py").is_file():
        return _CHECKOUT / "data"
    return Path("data")


def synthetic_dir(rows: int = DEMO_ROWS, seed: int = 0, model: Mapping[str, Any] | None = None) -> Path:
    """The generated dataset of ``rows`` rows and ``seed``: the demo's own name for its defaults.
    ``model``: generator knobs (:class:`SynthConfig` fields) that differ from the defaults, which
    then name the directory too (``synthetic-2000000-s0-vocab_scale30-zipf0.72``)."""
    knobs = "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}" for k, v in sorted((model or {}).items()))
    name = ("synthetic-demo" if (rows, seed) == (DEMO_ROWS, 0) and not knobs
            else f"synthetic-{rows}-s{seed}{knobs}")
    return data_root() / name


def resolve_dataset(data: str | os.PathLike | None, rows: int = DEMO_ROWS,
                    seed: int = 0, model: Mapping[str, Any] | None = None) -> DatasetSchema:
    """The dataset a command runs on: ``data`` (read and checked), or with ``data=None`` the
    synthetic data of ``rows`` rows, ``seed`` and generator knobs ``model``, made on first use."""
    if data is None:
        data = ensure_demo_dataset(synthetic_dir(rows, seed, model), rows=rows, seed=seed, model=model)
    return read_schema(data)


def _matches(ds: DatasetSchema, rows: int, seed: int, model: Mapping[str, Any] | None = None) -> bool:
    syn = ds.meta.get("synthetic") or {}
    return (ds.family == "synthetic" and syn.get("version") == GENERATOR_VERSION
            and syn.get("rows") == rows and syn.get("seed") == seed
            and syn.get("model") == dataclasses.asdict(make_config(**(model or {}))))


def ensure_demo_dataset(path: str | os.PathLike | None = None, rows: int = DEMO_ROWS,
                        seed: int = 0, model: Mapping[str, Any] | None = None) -> Path:
    """The built-in synthetic dataset at ``path``: generated on first use, reused afterwards.

    Reused if its meta.json matches ``rows``, ``seed`` and this generator version (default
    model knobs); a synthetic dataset that does not match is regenerated; any other content at
    ``path`` is an error. Concurrent callers (e.g. the ranks of one ``torchrun``) serialise on
    a lock file beside ``path``. Prints one line saying which happened.
    """
    import fcntl
    path = Path(path) if path is not None else synthetic_dir(rows, seed, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            found: DatasetSchema | None = None
            if path.exists():
                try:
                    found = read_schema(path)
                except DatasetError:
                    if any(path.iterdir()):
                        raise FileExistsError(f"{path} exists and is not a synthetic dataset; "
                                              "move it away or pass another path") from None
                if found is not None and found.family != "synthetic":
                    raise FileExistsError(f"{path} holds a {found.family!r} dataset, not "
                                          "the synthetic demo; move it away or pass another path")
            if found is not None and _matches(found, rows, seed, model):
                print(f"synthetic dataset: reusing {path} ({rows:,} rows, seed {seed})", flush=True)
                return path
            why = "regenerating (parameters changed)" if found is not None else "generating"
            print(f"synthetic dataset: {why} {path} ({rows:,} rows, seed {seed}) ...",
                  end="", flush=True)
            t0 = time.perf_counter()
            try:
                generate_dataset(path, rows, seed=seed, overwrite=path.exists(), progress=False,
                                 **dict(model or {}))
            except BaseException:
                print(" failed", flush=True)
                raise
            print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
            return path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
