"""A training step reads one value back from the device: the logged loss (issue 11, part 4).

On a GPU every op whose output size or result the host needs (``torch.unique``, ``nonzero``,
``bincount``, boolean-mask indexing, ``.item()``) makes the CPU wait for the device, and a step
with several such waits cannot queue the next batch's work behind the current one. This test
runs ``Trainer.train_step`` (the torch backend, both table updates, CowClip clipping) under a
dispatch mode that records every such op, so it can check that on the CPU too: the touched rows
are put in the GPU's fixed-size form (``CTR_TOUCHED_ROWS=fixed``), whose ops are the ones the
GPU runs. On CUDA (``CTR_TEST_DEVICE=cuda``, the GPU check) torch's own sync detector counts
the synchronisations as well.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ctr.distributed.choices import torchrec_importable
from ctr.distributed.env import shutdown_distributed
from ctr.models.row_grad import TOUCHED_ROWS_ENV
from ctr.train.config import load_config
from ctr.train.trainer import Trainer
from tests.conftest import DEVICE

aten = torch.ops.aten
# ops whose result's size or value the host reads from the device: each one a wait on CUDA
HOST_READS = {aten._local_scalar_dense, aten.nonzero, aten.nonzero_static, aten._unique, aten._unique2,
              aten.unique_dim, aten.unique_consecutive, aten.bincount, aten.masked_select, aten.histc,
              aten.repeat_interleave}
BOOL_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class HostReads(TorchDispatchMode):
    """Records the name of every op that makes the host wait for the device's result."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        packet = func.overloadpacket
        if packet in HOST_READS and not (packet is aten.repeat_interleave and kwargs and
                                         kwargs.get("output_size") is not None):
            self.reads.append(packet.__name__)
        elif packet in BOOL_INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            self.reads.append(f"{packet.__name__} (boolean mask)")
        return func(*args, **(kwargs or {}))


def _trainer(data, update: str, model: str, backend: str = "torch") -> Trainer:
    cfg = load_config(model, "synthetic", overrides={
        "batch": 512, "data": str(data), "device": DEVICE.type, "embedding_backend": backend,
        "update": update, "scaling": "cowclip", "r": 1e-2, "mlp": [16, 16], "cross_layers": 1,
        "dcnv2_low_rank": 2, "dcnv2_experts": 2})
    tr = Trainer(cfg, quiet=True)
    tr.setup()
    tr.dmp.train()
    return tr


def _audited_step(tr: Trainer, batches) -> tuple[list[str], int]:
    """One ``train_step``: (host reads seen by the dispatch mode, CUDA syncs torch warned of)."""
    batch = next(batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with HostReads() as audit:
                tr.train_step(batch)
        finally:
            if DEVICE.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return audit.reads, syncs


needs_torchrec = pytest.mark.skipif(not torchrec_importable(), reason="torchrec / fbgemm_gpu do not import here")


@pytest.mark.device
@pytest.mark.parametrize("update", ["dense", "sparse"])
@pytest.mark.parametrize("model,backend", [("deepfm", "torch"), ("dcnv2", "torch"),
                                           pytest.param("deepfm", "torchrec", marks=needs_torchrec)])
def test_a_training_step_reads_the_device_once_for_the_loss(small_dataset, monkeypatch, update, model, backend):
    """Both embedding backends: TorchRec's (its lookups' counts, a full ``weight.grad``) and the
    torch one (row gradients). TorchRec's own CPU lookups read nothing back here either."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "fixed")        # the GPU's form (its default there)
    tr = _trainer(small_dataset, update, model, backend)
    try:
        batches = iter(tr.loader.epoch(0))
        tr.train_step(next(batches))                     # the first step makes Adam's state
        for _ in range(2):
            reads, syncs = _audited_step(tr, batches)
            assert reads == ["_local_scalar_dense"], reads   # loss_sum.item(), nothing else
            if DEVICE.type == "cuda":
                assert syncs == 1, syncs
        assert tr.opt.last_clip_fraction > 0             # CowClip did clip (read after the step)
    finally:
        shutdown_distributed()


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the exact form is the CPU's")
def test_the_audit_sees_the_exact_forms_unique(small_dataset, monkeypatch):
    """The CPU's exact form sorts by ``torch.unique``: the audit must catch it (it can fail)."""
    monkeypatch.setenv(TOUCHED_ROWS_ENV, "exact")
    tr = _trainer(small_dataset, "dense", "deepfm")
    try:
        batches = iter(tr.loader.epoch(0))
        tr.train_step(next(batches))
        reads, _ = _audited_step(tr, batches)
        assert "_unique2" in reads and "_local_scalar_dense" in reads
    finally:
        shutdown_distributed()
