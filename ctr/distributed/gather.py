"""The whole global batch's ids, from ranks that each read only their own rows.

The torch embedding backend replicates every table, and its gradient sync
(:meth:`ctr.train.build.ModelParts.sync_gradients`) and CowClip counts need the *global*
batch's ids. The in-memory loader knows the global batch on every rank without communication;
the streaming loader (:mod:`ctr.data.stream`) gives a rank only its rows, so for that backend
the ids are all-gathered once per step::

    rank 0: ids [b0, F] ─┐
    rank 1: ids [b1, F] ─┼─ all_gather (padded to max b) ──▶ every rank: [b0 + b1 + ..., F]
    ...                 ─┘                                   rank 0's rows first

That is O(B·F) int32 per step, independent of the tables' size. The torchrec backend no longer
calls it: each sharded lookup counts the ids it receives after TorchRec's input all-to-all, and
data-parallel tables all-reduce a count vector instead (:mod:`ctr.distributed.counts`).

Example::

    global_ids = global_batch_ids(batch_ids, sizes=[512, 512], device=env.device)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def global_batch_ids(local_ids: torch.Tensor, sizes: Sequence[int],
                     device: torch.device | None = None) -> torch.Tensor:
    """[sum(sizes), F] ids of the global batch in rank order, from this rank's ``local_ids``
    [sizes[rank], F]. Every rank calls it at the same step with the same ``sizes`` (known to all
    ranks: the loader's plan). ``device``: where the collective runs (cuda under nccl); the
    result stays there. One process: ``local_ids`` itself."""
    world = len(sizes)
    if world == 1:
        return local_ids
    width = local_ids.shape[1]
    most = max(sizes)
    dev = device if device is not None else local_ids.device
    buf = torch.zeros((most, width), dtype=local_ids.dtype, device=dev)
    buf[:local_ids.shape[0]] = local_ids.to(dev)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
