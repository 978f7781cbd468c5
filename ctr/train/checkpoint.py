"""Checkpoints keyed by table rows, so they load at any world size and sharding.

::

    runs/NAME/checkpoint/
      rank-00000.pt   dense weights + dense Adam state (rank 0), and every table shard the
      rank-00001.pt   rank owns: {table: [(row_offset, weight, exp_avg, exp_avg_sq), ...]}
      latest.json     written last, by rank 0, once every rank's file is in place:
                      {epoch, step, global_step, world_size, files}

Each file is written to a temporary name and renamed; ``latest.json`` is what makes a
checkpoint count, so a run killed mid-save keeps the previous one. Files are loaded with
``torch.load(weights_only=True)``: tensors, numbers and strings only.

Example::

    save_checkpoint(run_dir, env, dmp, groups, opt, progress, config)   # every rank calls it
    state = load_checkpoint(run_dir)            # all ranks' pieces, merged
    restore_(state, dmp, groups, opt)           # each rank copies the rows it holds
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ctr.data.dataset import write_json_atomic
from ctr.distributed.env import DistEnv
from ctr.distributed.sharding import FusedGroup
from ctr.optim.optimizer import CTROptimizer

FORMAT = 1
# Settings that must match for a checkpoint to be resumed (others, like --epochs, may change).
RESUME_KEYS = ("model", "batch", "base_batch", "seed", "scaling", "hparams", "batch_overrides",
               "model_config", "cowclip_lower_bound", "cowclip_warmup_epochs", "drop_last", "data")


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, or from another model or configuration."""


def _ckpt_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoint"


def _dense_params(dmp: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in dmp.named_parameters() if not hasattr(p, "_original_tensor")}


def save_checkpoint(run_dir: str | Path, env: DistEnv, dmp: torch.nn.Module,
                    groups: list[FusedGroup], opt: CTROptimizer, progress: dict[str, int],
                    config: dict[str, Any]) -> None:
    """Every rank calls this; returns once the checkpoint is complete on disk."""
    d = _ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        st = opt.sparse_state_of(g)
        for s in g.shards:
            if s.replicated and not env.is_main:
                continue  # replicated tables are saved once
            sl = slice(s.fused_row, s.fused_row + s.rows)
            piece = {"row_offset": s.row_offset, "weight": g.view()[sl].detach().cpu().clone()}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    piece[key] = g.view(st[key])[sl].detach().cpu().clone()
            tables.setdefault(s.table, []).append(piece)
    payload: dict[str, Any] = {"format": FORMAT, "rank": env.rank, "world_size": env.world_size,
                               "tables": tables, "progress": dict(progress),
                               "sparse_steps": opt.step_count, "config": _jsonable(config)}
    if env.is_main:
        payload["dense"] = {n: p.detach().cpu().clone() for n, p in _dense_params(dmp).items()}
        payload["dense_optim"] = opt.dense_state_dict()
        payload["rng"] = torch.get_rng_state()
    name = f"rank-{env.rank:05d}.pt"
    tmp = d / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(payload, tmp)
    os.replace(tmp, d / name)
    if dist.is_initialized():
        dist.barrier()
    if env.is_main:
        files = [f"rank-{r:05d}.pt" for r in range(env.world_size)]
        write_json_atomic(d / "latest.json", {"format": FORMAT, **progress,
                                              "world_size": env.world_size, "files": files})
        for stale in d.glob("rank-*.pt"):
            if stale.name not in files:
                stale.unlink()
    if dist.is_initialized():
        dist.barrier()


def has_checkpoint(run_dir: str | Path) -> bool:
    return (_ckpt_dir(run_dir) / "latest.json").is_file()


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Reads every rank's file of the latest complete checkpoint and merges the table pieces."""
    d = _ckpt_dir(run_dir)
    latest = d / "latest.json"
    if not latest.is_file():
        raise CheckpointError(f"{run_dir}: no complete checkpoint (no {latest})")
    info = json.loads(latest.read_text())
    merged: dict[str, Any] = {"tables": {}, "progress": {k: info[k] for k in
                                                         ("epoch", "step", "global_step") if k in info}}
    for fname in info["files"]:
        path = d / fname
        try:
            part = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as e:
            raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from e
        except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad checkpoint
            raise CheckpointError(f"{path}: cannot be loaded safely: {e}") from e
        if part.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {part.get('format')!r}, expected {FORMAT}")
        for table, pieces in part["tables"].items():
            merged["tables"].setdefault(table, []).extend(pieces)
        for key in ("dense", "dense_optim", "rng", "config", "sparse_steps"):
            if key in part and key not in merged:
                merged[key] = part[key]
    return merged


def check_compatible(saved: dict[str, Any], current: dict[str, Any], run_dir: str | Path) -> None:
    """Refuses a checkpoint made by another model or configuration, naming the differences."""
    diffs = [k for k in RESUME_KEYS if _jsonable(saved.get(k)) != _jsonable(current.get(k))]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise CheckpointError(f"{run_dir}: checkpoint was made with a different configuration ({detail})")


@torch.no_grad()
def restore_(state: dict[str, Any], dmp: torch.nn.Module, groups: list[FusedGroup],
             opt: CTROptimizer | None) -> None:
    """Copies the saved rows each local shard covers (any world size) and the dense state."""
    dense = _dense_params(dmp)
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
                for key in ("exp_avg", "exp_avg_sq"):
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
            opt.load_dense_state_dict(state["dense_optim"])
        opt.step_count = int(state.get("sparse_steps", 0))


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
