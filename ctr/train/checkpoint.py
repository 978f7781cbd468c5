"""Checkpoints keyed by table rows, so they load at any world size and sharding; each one a
single atomic unit.

::

    runs/NAME/checkpoint/
      step-000000120-1a2b3c4d/   one complete checkpoint, never modified once named:
        rank-00000.pt              dense weights + dense optimizer state (rank 0), and every
        rank-00001.pt              table shard the rank owns: {table: [{row_offset, weight,
                                   exp_avg, exp_avg_sq}, ...]}
      latest.json                which directory is the checkpoint: {format, checkpoint, files,
                                 epoch, step, global_step, world_size, ...}

A save builds the new directory under a pid-tagged temporary name (every rank writes its
file there, fsynced), renames it to ``step-*`` once all files are in, and only then replaces
``latest.json`` by one atomic rename; older ``step-*`` directories are deleted after that.
A kill at any instant therefore leaves ``latest.json`` naming either the old checkpoint or
the new one, each complete: never a mix. What a killed save leaves behind (a temporary or an
unreferenced ``step-*``) is removed by the next save or resume (:func:`clean_checkpoint_dir`,
called with the run directory locked).

Loading trusts nothing on disk: ``latest.json`` must name a ``step-*`` directory and
``rank-NNNNN.pt`` files inside it, each a plain file (no links, FIFOs or paths), read with
``torch.load(weights_only=True)`` (tensors, numbers, strings) and checked for structure.

Example::

    save_checkpoint(run_dir, env, dmp, groups, opt, progress, config)   # every rank calls it
    state = load_checkpoint(run_dir)            # all ranks' pieces, merged
    restore_(state, dmp, groups, opt)           # each rank copies the rows it holds
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ctr.distributed.env import DistEnv
from ctr.distributed.shards import FusedGroup, dense_parameters
from ctr.faults import fault_point
from ctr.fsutil import clean_stale_temps, fsync_dir, temp_path, write_json_atomic
from ctr.optim.optimizer import CTROptimizer

FORMAT = 2
LATEST = "latest.json"
# Settings that must match for a checkpoint to be resumed (others, like --epochs, may change).
RESUME_KEYS = ("model", "batch", "base_batch", "seed", "scaling", "hparams", "batch_overrides",
               "model_config", "cowclip_lower_bound", "cowclip_warmup_epochs", "adam_epsilon_form",
               "adam_epsilon", "dense_l2", "warmup_form", "update", "drop_last", "data", "loader")
# The streaming loader's order also depends on these (compared when the run streamed).
STREAM_RESUME_KEYS = ("loader_streams", "shuffle_buffer")
# The sparse regime's step also depends on these (compared when the run updated sparsely).
SPARSE_RESUME_KEYS = ("sparse_l2",)
# Resolved at a run's start; unresolved now (the launcher checks before the workers resolve),
# they take the run's recorded value, so they match whatever it was.
UNRESOLVED = {"loader": "auto", "loader_streams": None}
# A checkpoint from before a key existed ran with this value.
BEFORE_KEY = {"loader": "memory", "update": "dense", "sparse_l2": "batch"}
PROGRESS_KEYS = ("epoch", "step", "global_step")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
_DIR_RE = re.compile(r"^step-\d{9}-[0-9a-f]{8}$")
_FILE_RE = re.compile(r"^rank-\d{5}\.pt$")


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, malformed, or from another model or configuration."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoint"


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def _save_fsynced(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | Path, env: DistEnv, dmp: torch.nn.Module,
                    groups: list[FusedGroup], opt: CTROptimizer, progress: dict[str, Any],
                    config: dict[str, Any]) -> None:
    """Every rank calls this; returns once the new checkpoint is the latest one on disk."""
    d = checkpoint_dir(run_dir)
    multi = dist.is_initialized() and env.world_size > 1
    name_box: list[Any] = [None, None]
    if env.is_main:
        d.mkdir(parents=True, exist_ok=True)
        name = f"step-{int(progress['global_step']):09d}-{uuid.uuid4().hex[:8]}"
        tmp = temp_path(d / name)
        tmp.mkdir()
        name_box = [name, str(tmp)]
    if multi:
        dist.broadcast_object_list(name_box, src=0)
    name, tmp = name_box[0], Path(name_box[1])

    payload: dict[str, Any] = {"format": FORMAT, "rank": env.rank, "world_size": env.world_size,
                               "tables": _table_pieces(env, groups, opt), "progress": dict(progress),
                               "sparse_steps": opt.step_count, "config": _jsonable(config)}
    if env.is_main:
        payload["dense"] = {n: p.detach().cpu().clone() for n, p in dense_parameters(dmp).items()}
        payload["dense_optim"] = opt.dense_state_dict()
        payload["rng"] = torch.get_rng_state()
    _save_fsynced(payload, tmp / _rank_file(env.rank))
    fault_point("checkpoint.after_rank_file")
    if multi:
        dist.barrier()
    if env.is_main:
        files = [_rank_file(r) for r in range(env.world_size)]
        fsync_dir(tmp)
        os.replace(tmp, d / name)
        fsync_dir(d)
        fault_point("checkpoint.before_latest")
        write_json_atomic(d / LATEST, {"format": FORMAT, "checkpoint": name, "files": files,
                                       **progress, "world_size": env.world_size})
        fsync_dir(d)
        fault_point("checkpoint.after_latest")
        clean_checkpoint_dir(run_dir)
    if multi:
        dist.barrier()


def _table_pieces(env: DistEnv, groups: list[FusedGroup], opt: CTROptimizer
                  ) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        st = opt.sparse_state_of(g)
        for s in g.shards:
            if s.replicated and not env.is_main:
                continue  # replicated tables are saved once
            sl = slice(s.fused_row, s.fused_row + s.rows)
            piece = {"row_offset": s.row_offset, "weight": g.view()[sl].detach().cpu().clone()}
            for key in MOMENT_KEYS:
                if key in st:
                    piece[key] = g.view(st[key])[sl].detach().cpu().clone()
            tables.setdefault(s.table, []).append(piece)
    return tables


def clean_checkpoint_dir(run_dir: str | Path) -> list[Path]:
    """Removes what is not the latest checkpoint: older or unreferenced ``step-*`` directories,
    rank files of the old flat layout, and temporaries of dead processes. Call it only while
    holding the run directory's lock (then no live writer can own what it removes)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    removed = clean_stale_temps(d)
    keep = None
    try:
        info = json.loads((d / LATEST).read_text())
        keep = info.get("checkpoint") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return removed  # no readable latest.json: nothing else is provably unreferenced
    for p in d.iterdir():
        if p.name == keep or p.is_symlink():
            continue
        if _DIR_RE.match(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif keep and _FILE_RE.match(p.name) and p.is_file():  # format-1 layout, superseded
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def has_checkpoint(run_dir: str | Path) -> bool:
    return (checkpoint_dir(run_dir) / LATEST).is_file()


def read_latest(run_dir: str | Path) -> dict[str, Any]:
    """``latest.json``, checked: a dict with the progress keys and files confined to the
    checkpoint directory. Raises :class:`CheckpointError` naming the file and the problem."""
    path = checkpoint_dir(run_dir) / LATEST
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no complete checkpoint (no {path})")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read: {e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(info).__name__}")
    fmt = info.get("format")
    if fmt not in (1, FORMAT):
        raise CheckpointError(f"{path}: checkpoint format {fmt!r}, this ctr reads 1 and {FORMAT}")
    missing = [k for k in (*PROGRESS_KEYS, "world_size", "files") if k not in info]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}")
    for k in (*PROGRESS_KEYS, "world_size"):
        if not isinstance(info[k], int) or isinstance(info[k], bool) or info[k] < 0:
            raise CheckpointError(f"{path}: {k!r} must be a non-negative integer, not {info[k]!r}")
    files = info["files"]
    if (not isinstance(files, list) or not files
            or not all(isinstance(f, str) and _FILE_RE.match(f) for f in files)):
        raise CheckpointError(f"{path}: 'files' must be a list of rank-NNNNN.pt names, not {files!r}")
    if fmt == FORMAT:
        name = info.get("checkpoint")
        if not isinstance(name, str) or not _DIR_RE.match(name):
            raise CheckpointError(f"{path}: 'checkpoint' must name a step-* directory, not {name!r}")
    return info


def _checked_file(base: Path, fname: str, latest: Path) -> Path:
    """``base/fname`` if it is a plain, non-empty file inside the checkpoint directory."""
    path = base / fname
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (listed in {latest}); the checkpoint is incomplete") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a plain file; refusing to read it")
    if st.st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the checkpoint is damaged")
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Reads every rank's file of the latest checkpoint and merges the table pieces.

    A reader (``ctr-eval``) may race a live run that switches to a newer checkpoint and
    deletes this one mid-read; it then reads the newer one."""
    for attempt in range(3):
        before = read_latest(run_dir).get("checkpoint")
        try:
            return _load_latest(run_dir)
        except CheckpointError:
            if attempt == 2 or read_latest(run_dir).get("checkpoint") == before:
                raise
    raise AssertionError("unreachable")


def _load_latest(run_dir: str | Path) -> dict[str, Any]:
    d = checkpoint_dir(run_dir)
    info = read_latest(run_dir)
    latest = d / LATEST
    base = d / info["checkpoint"] if info["format"] == FORMAT else d
    if info["format"] == FORMAT and (base.is_symlink() or not base.is_dir()):
        raise CheckpointError(f"{base}: named by {latest} but not a checkpoint directory")
    merged: dict[str, Any] = {"tables": {}, "progress": {k: info[k] for k in PROGRESS_KEYS},
                              "world_size": info["world_size"]}
    for k in ("train_seconds", "samples"):
        if isinstance(info.get(k), (int, float)):
            merged["progress"][k] = info[k]
    if isinstance(info.get("data"), dict):   # the loader's position (the batches consumed)
        merged["progress"]["data"] = info["data"]
    for fname in info["files"]:
        path = _checked_file(base, fname, latest)
        try:
            part = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad checkpoint
            raise CheckpointError(f"{path}: cannot be loaded safely: {type(e).__name__}: {e}") from e
        _check_part(part, path, main=fname == _rank_file(0))
        for table, pieces in part["tables"].items():
            merged["tables"].setdefault(table, []).extend(pieces)
        for key in ("dense", "dense_optim", "rng", "config", "sparse_steps"):
            if key in part and key not in merged:
                merged[key] = part[key]
    return merged


def _check_part(part: Any, path: Path, main: bool) -> None:
    """Raises :class:`CheckpointError` unless ``part`` has the structure :func:`save_checkpoint` writes."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a ctr checkpoint file of this format ({what})")
    if not isinstance(part, dict):
        raise bad(f"a {type(part).__name__}, not a dict")
    if part.get("format") not in (1, FORMAT):
        raise bad(f"format {part.get('format')!r}")
    tables = part.get("tables")
    if not isinstance(tables, dict):
        raise bad("no 'tables'")
    for table, pieces in tables.items():
        if not isinstance(pieces, list):
            raise bad(f"table {table!r} is not a list of pieces")
        for piece in pieces:
            w = piece.get("weight") if isinstance(piece, dict) else None
            if (not isinstance(w, torch.Tensor) or w.dim() != 2
                    or not isinstance(piece.get("row_offset"), int) or piece["row_offset"] < 0):
                raise bad(f"table {table!r} has a piece without a 2-D weight and a row offset")
            for key in MOMENT_KEYS:
                if key in piece and (not isinstance(piece[key], torch.Tensor) or piece[key].shape != w.shape):
                    raise bad(f"table {table!r}: {key} does not match its weight's shape")
    if main:
        dense = part.get("dense")
        if not isinstance(dense, dict) or not all(isinstance(v, torch.Tensor) for v in dense.values()):
            raise bad("rank 0 holds no dense weights")
        if not isinstance(part.get("dense_optim"), dict):
            raise bad("rank 0 holds no dense optimizer state")


def check_compatible(saved: dict[str, Any], current: dict[str, Any], run_dir: str | Path) -> None:
    """Refuses a checkpoint made by another model or configuration, naming the differences."""
    def differs(k: str) -> bool:
        if k in UNRESOLVED and current.get(k) == UNRESOLVED[k]:
            return False
        return _jsonable(saved.get(k, BEFORE_KEY.get(k))) != _jsonable(current.get(k))
    keys = (RESUME_KEYS + (STREAM_RESUME_KEYS if saved.get("loader") == "stream" else ())
            + (SPARSE_RESUME_KEYS if saved.get("update") == "sparse" else ()))
    diffs = [k for k in keys if differs(k)]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k, BEFORE_KEY.get(k))!r} vs now {current.get(k)!r}"
                           for k in diffs)
        raise CheckpointError(f"{run_dir}: checkpoint was made with a different configuration ({detail})")


@torch.no_grad()
def restore_(state: dict[str, Any], dmp: torch.nn.Module, groups: list[FusedGroup],
             opt: CTROptimizer | None) -> None:
    """Copies the saved rows each local shard covers (any world size) and the dense state."""
    dense = dense_parameters(dmp)
    saved_dense = state.get("dense", {})
    if set(saved_dense) != set(dense):
        missing, extra = set(dense) - set(saved_dense), set(saved_dense) - set(dense)
        raise CheckpointError(f"checkpoint is for another model: dense parameters differ "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]})")
    for n, p in dense.items():
        if saved_dense[n].shape != p.shape:
            raise CheckpointError(f"checkpoint is for another model: {n} has shape "
                                  f"{tuple(saved_dense[n].shape)}, model wants {tuple(p.shape)}")
        p.copy_(saved_dense[n])
    if opt is not None:
        opt.ensure_sparse_state()
    for g in groups:
        st = opt.sparse_state_of(g) if opt is not None else {}
        for s in g.shards:
            pieces = state["tables"].get(s.table)
            if not pieces:
                raise CheckpointError(f"checkpoint has no table {s.table!r}")
            lo, hi = s.row_offset, s.row_offset + s.rows
            covered = 0
            for piece in pieces:
                w = piece["weight"]
                if w.shape[1] != s.dim:
                    raise CheckpointError(f"table {s.table}: dim {w.shape[1]} in checkpoint, {s.dim} now")
                p_lo, p_hi = piece["row_offset"], piece["row_offset"] + w.shape[0]
                a, b = max(lo, p_lo), min(hi, p_hi)
                if a >= b:
                    continue
                dst = slice(s.fused_row + a - lo, s.fused_row + b - lo)
                src = slice(a - p_lo, b - p_lo)
                g.view()[dst].copy_(w[src])
                for key in MOMENT_KEYS:
                    if key in st and key in piece:
                        g.view(st[key])[dst].copy_(piece[key][src])
                covered += b - a
            if covered != s.rows:
                raise CheckpointError(f"table {s.table}: checkpoint covers {covered} of rows "
                                      f"[{lo}, {hi}) (another vocabulary?)")
        if "step" in st:
            st["step"].fill_(float(state.get("sparse_steps", 0)))
    if opt is not None:
        if "dense_optim" in state:
            try:
                opt.load_dense_state_dict(state["dense_optim"])
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint's dense optimizer state does not fit this model: {e}") from e
        opt.step_count = int(state.get("sparse_steps", 0))


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
