"""Process-group set-up that is the same for 1 process, N CPU processes (gloo) and CUDA (nccl).

::

    ctr-train --nproc N ──child──▶ torchrun --nproc_per_node N -m ctr.cli.train ...
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

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ctr.distributed.choices import DEVICES
from ctr.exitcodes import exit_code_for_status
from ctr.procs import die_with_parent, run_child

__all__ = ["DistEnv", "die_with_parent", "free_port", "init_distributed", "launch_workers",
           "resolve_device", "shutdown_distributed"]


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
    if choice not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, not {choice!r}")
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


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Nodes:
    """Where this host's workers sit in a run over several hosts (torchrun's static rendezvous):
    ``count`` hosts, this one ``rank`` (0 = the one whose rank 0 writes the run's files), and
    ``master`` = ``host:port`` of node 0, which every node names the same."""

    count: int = 1
    rank: int = 0
    master: str | None = None

    def torchrun_args(self) -> list[str]:
        if self.count == 1:
            return ["--standalone"]
        if self.master is None:
            raise ValueError("--nnodes > 1 needs --master HOST:PORT (node 0's address, the same on every node)")
        host, _, port = self.master.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--master must be HOST:PORT, not {self.master!r}")
        if not 0 <= self.rank < self.count:
            raise ValueError(f"--node-rank {self.rank} is outside 0..{self.count - 1} (--nnodes {self.count})")
        return [f"--nnodes={self.count}", f"--node_rank={self.rank}", f"--master_addr={host}",
                f"--master_port={port}"]


def launch_workers(nproc: int, module: str, argv: list[str],
                   run_dir: str | os.PathLike | None = None, pass_fds: tuple[int, ...] = (),
                   nodes: Nodes = Nodes()) -> int:
    """Runs ``python -m module argv`` in ``nproc`` local processes under torchrun (by way of
    :mod:`ctr.distributed.run_worker`); returns the run's exit code. With ``nodes.count > 1``
    this host's torchrun joins the others at ``nodes.master`` (each host runs this launcher
    with its own ``nodes.rank``; ranks ``rank*nproc .. rank*nproc + nproc - 1`` are here).

    torchrun is started by :func:`ctr.procs.run_child`: it gets SIGTERM if this launcher dies,
    a Ctrl-C makes the launcher wait for the workers' checkpoint, and a SIGTERM is passed on.
    torchrun exits 1 whenever a worker fails, so a diverged (3) or interrupted (130) run would
    look like a crash: if ``run_dir/summary.json`` was written during this launch (it is not the
    file that was there before: ``write_json_atomic`` always makes a new inode), its status
    decides the code (:mod:`ctr.exitcodes`); otherwise torchrun's code is returned.
    ``pass_fds`` stay open in torchrun (the run directory's lock: held until torchrun has
    ended its workers, even if this launcher is killed).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a whole number of processes >= 1, not {nproc!r}")
    # through ctr.distributed.run_worker: torchrun would take a worker flag that abbreviates one
    # of its own (--r: --rdzv-*, --role, ...) for its own
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(),
           f"--nproc_per_node={nproc}", "-m", "ctr.distributed.run_worker", module,
           json.dumps([str(a) for a in argv])]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    summary = Path(run_dir) / "summary.json" if run_dir is not None else None
    before = _stamp(summary) if summary else None
    code = run_child(cmd, env=env, pass_fds=pass_fds)
    if summary and _stamp(summary) not in (None, before):
        try:
            status = json.loads(summary.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            return code
        return exit_code_for_status(status, default=code)
    return code
