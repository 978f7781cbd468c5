"""Building a model by name: the registry of model classes and :func:`build_model`.

Example::

    model = build_model("dcn", ["I1"], ["C1"], {"C1": 100}, ModelConfig(cross_layers=2))
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ctr.distributed.choices import EMBEDDING_BACKENDS
from ctr.models.config import MODEL_NAMES, ModelConfig
from ctr.models.dcn import DCN
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.layers import CTRModel, apply_dnn_init_
from ctr.models.wide_deep import WideDeep

MODELS: dict[str, type[CTRModel]] = {"deepfm": DeepFM, "dcn": DCN, "dcnv2": DCNv2, "wd": WideDeep}
assert tuple(MODELS) == MODEL_NAMES, "ctr.models.config.MODEL_NAMES and MODELS must list the same models"


def build_model(name: str, dense_fields: list[str], sparse_fields: list[str],
                vocab_sizes: dict[str, int], config: ModelConfig,
                device: torch.device | str = "cpu",
                sparse_device: torch.device | str | None = None,
                embedding_backend: str = "torchrec") -> CTRModel:
    """Builds model ``name`` (one of :data:`MODELS`) for the given fields.

    Parameters are drawn from the global torch RNG in a fixed order (embedding tables,
    first-order tables, then dense layers, which are always drawn on the CPU and then
    moved), so ``torch.manual_seed`` makes the initialisation reproducible; both embedding
    backends draw the same values.

    ``sparse_device="meta"`` leaves the tables unallocated (and draws nothing for them): for
    DistributedModelParallel to materialise (sharded) on ``device`` (torchrec), or for
    ``to_empty`` and a seeded fill (torch): no time or memory spent on a full table per rank.

    ``embedding_backend``: ``torchrec`` (:class:`~ctr.models.sparse.SparseArch`, TorchRec
    EBCs) or ``torch`` (:class:`~ctr.models.fused_sparse.FusedSparseArch`, plain PyTorch).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    arch: Any
    if embedding_backend == "torchrec":
        from ctr.models.sparse import SparseArch as arch   # imports TorchRec
    elif embedding_backend == "torch":
        from ctr.models.fused_sparse import FusedSparseArch as arch
    else:
        raise ValueError(f"embedding_backend must be one of {EMBEDDING_BACKENDS[1:]}, not {embedding_backend!r}")
    mlp = tuple(int(h) for h in config.mlp)
    sparse = arch(list(sparse_fields), vocab_sizes, config.embedding_dim,
                  init_std=config.init_std, with_linear=True,
                  device=sparse_device if sparse_device is not None else device)
    model = MODELS[name].from_config(sparse, len(dense_fields), replace(config, mlp=mlp))
    apply_dnn_init_(model, config.dnn_init)   # glorot_normal (default): as built; torch: nn.Linear's
    if sparse_device is None:
        return model.to(device)
    for name, child in model.named_children():  # the tables stay where they are (e.g. meta)
        if name != "sparse":
            child.to(device)
    for p in model.parameters(recurse=False):
        p.data = p.data.to(device)
    return model
