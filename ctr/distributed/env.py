"""Process-group set-up that is the same for 1 process, N CPU processes (gloo) and CUDA (nccl).

::

    ctr-train --nproc N ──exec──▶ torchrun --nproc_per_node N -m ctr.cli.train ...
    torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) ──▶ init_distributed() joins that group
    plain `ctr-train` (no RANK) ──▶ init_distributed() makes a group of one on a free port

The model is always wrapped by TorchRec's DistributedModelParallel, which needs a process
group even for one process; making that group here keeps one code path for every case.

Example::

    env = init_distributed("auto")      # cuda:LOCAL_RANK + nccl if a GPU is there, else cpu + gloo
    ...
    shutdown_distributed()
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(choice: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {choice!r}")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no GPU")
    return choice


def init_distributed(device: str = "auto") -> DistEnv:
    """Joins (or creates) the default process group and picks this rank's device."""
    kind = resolve_device(device)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # Under torchrun the env:// rendezvous it set up; alone, a group of one on a fresh port
    # (not written to os.environ, so child processes never inherit a stale port).
    init_method = "env://" if "RANK" in os.environ else f"tcp://127.0.0.1:{free_port()}"
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, dev, backend)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_workers(nproc: int, module: str, argv: list[str]) -> int:
    """Runs ``python -m module argv`` in ``nproc`` local processes under torchrun; returns its code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", module, *argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    return subprocess.call(cmd, env=env)
