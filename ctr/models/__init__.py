"""CTR models on TorchRec: DeepFM, DCN, DCNv2, Wide&Deep, as DeepCTR / LargeBatchCTR define them.

::

    build_model(name, dense_fields, sparse_fields, vocab_sizes, ModelConfig)
        │
        ├─ SparseArch   model.sparse.embedding  EBC, emb_<field> [vocab, D]   ┐ sharded by DMP,
        │  (torchrec)   model.sparse.linear     EBC, lin_<field> [vocab, 1]   ┘ sparse_parameters()
        │  or FusedSparseArch (torch): sparse.embedding.weight [Σ vocab, D], sparse.linear.weight
        │                              [Σ vocab, 1], plain PyTorch (ctr.models.fused_sparse)
        └─ MODELS[name] DNN / FM / cross net, dense_linear, bias                dense_parameters()

    model(dense [B, n_dense] float32, ids [B, F] or a KJT) ─▶ logits [B]   (no sigmoid)

Every model adds DeepCTR's linear logit (first-order rows of each id + a kernel over the
dense features) and a global bias to its interaction logit(s). Dense features enter the
DNN / cross input after the flattened field embeddings.

Example::

    torch.manual_seed(0)
    model = build_model("deepfm", ["I1", "I2"], ["C1", "C2"], {"C1": 100, "C2": 7},
                        ModelConfig(embedding_dim=10))
    logits = model(dense, kjt)                                  # [B]
    opt_sparse = torch.optim.Adam(model.sparse_parameters())
    opt_dense = torch.optim.Adam(model.dense_parameters())
"""

from __future__ import annotations

import importlib
from typing import Any

from ctr.models.config import MODEL_NAMES, MODEL_SETTINGS, ModelConfig
from ctr.models.regularization import CROSS_L2, reference_l2

__all__ = ["CROSS_L2", "CTRModel", "DCN", "DCNv2", "DeepFM", "FusedSparseArch", "MODELS", "MODEL_NAMES", "MODEL_SETTINGS",
           "ModelConfig", "SparseArch", "WideDeep", "build_model", "reference_l2"]

# The model classes import torch (SparseArch also TorchRec); they load on first use, so the
# names and settings above (what the command line needs) come without them.
_LAZY = {"MODELS": "ctr.models.build", "build_model": "ctr.models.build", "CTRModel": "ctr.models.layers",
         "SparseArch": "ctr.models.sparse", "FusedSparseArch": "ctr.models.fused_sparse", "DeepFM": "ctr.models.deepfm", "DCN": "ctr.models.dcn",
         "DCNv2": "ctr.models.dcnv2", "WideDeep": "ctr.models.wide_deep"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctr.models' has no attribute {name!r}")
