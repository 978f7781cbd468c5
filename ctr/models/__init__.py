"""CTR models on TorchRec: DeepFM, DCN, DCNv2, Wide&Deep, as DeepCTR / LargeBatchCTR define them.

::

    build_model(name, dense_fields, sparse_fields, vocab_sizes, ModelConfig)
        │
        ├─ SparseArch   model.sparse.embedding  EBC, emb_<field> [vocab, D]   ┐ sharded by DMP,
        │               model.sparse.linear     EBC, lin_<field> [vocab, 1]   ┘ sparse_parameters()
        └─ MODELS[name] DNN / FM / cross net, dense_linear, bias                dense_parameters()

    model(dense [B, n_dense] float32, sparse KJT) ─▶ logits [B]   (no sigmoid)

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

import re
from dataclasses import dataclass

import torch

from ctr.models.dcn import DCN
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.layers import CTRModel
from ctr.models.sparse import SparseArch
from ctr.models.wide_deep import WideDeep

__all__ = ["CROSS_L2", "CTRModel", "DCN", "DCNv2", "DeepFM", "MODELS", "ModelConfig", "SparseArch",
           "WideDeep", "build_model", "reference_l2"]

# DeepCTR's l2_reg_cross default; LargeBatchCTR's train.py passes only l2_reg_linear and
# l2_reg_embedding (= --l2), so its cross kernels keep this fixed value at every batch size.
CROSS_L2 = 1e-5
_DENSE_LINEAR = re.compile(r"(^|\.)dense_linear\.weight$")
_CROSS_KERNEL = re.compile(r"(^|\.)cross\.(kernels|U_kernels|V_kernels|C_kernels)\.\d+$")


def reference_l2(name: str, l2: float) -> tuple[str, float]:
    """(group, c) of the reference's L2 ``c·ΣW²`` on dense parameter ``name``.

    As LargeBatchCTR builds DeepCTR's models: the dense features' first-order kernel
    (``Linear``'s ``linear_kernel``, here ``dense_linear.weight``) gets ``l2_reg_linear = l2``,
    the batch-scaled λ of the tables; the cross kernels (DCN's ``kernels``, DCN-Mix's ``U``,
    ``V``, ``C``) get :data:`CROSS_L2`; the DNN, the logit layers, every bias and the DCN-Mix
    gates get none. Matched on the name's tail, so any wrapper's prefix is ignored.
    """
    if _DENSE_LINEAR.search(name):
        return "linear", float(l2)
    if _CROSS_KERNEL.search(name):
        return "cross", CROSS_L2
    return "none", 0.0


@dataclass
class ModelConfig:
    """Architecture hyperparameters shared by all models (unused fields are ignored)."""

    embedding_dim: int = 10
    mlp: tuple[int, ...] = (400, 400, 400)
    cross_layers: int = 3               # DCN / DCNv2
    dcnv2_low_rank: int | None = None   # None: full matrix cross; int: low-rank mixture of experts
    dcnv2_experts: int = 4
    init_std: float = 1e-2              # embedding init N(0, std), also for first-order weights
    dropout: float = 0.0


MODELS: dict[str, type[CTRModel]] = {
    "deepfm": DeepFM,
    "dcn": DCN,
    "dcnv2": DCNv2,
    "wd": WideDeep,
}


def build_model(name: str, dense_fields: list[str], sparse_fields: list[str],
                vocab_sizes: dict[str, int], config: ModelConfig,
                device: torch.device | str = "cpu",
                sparse_device: torch.device | str | None = None) -> CTRModel:
    """Builds model ``name`` (one of :data:`MODELS`) for the given fields.

    Parameters are drawn from the global torch RNG in a fixed order (embedding tables,
    first-order tables, then dense layers, which are always drawn on the CPU and then
    moved), so ``torch.manual_seed`` makes the initialisation reproducible.

    ``sparse_device="meta"`` leaves the tables unallocated for DistributedModelParallel to
    materialise (sharded) on ``device``: no time or memory spent on a full table per rank.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    mlp = tuple(int(h) for h in config.mlp)
    sparse = SparseArch(list(sparse_fields), vocab_sizes, config.embedding_dim,
                        init_std=config.init_std, with_linear=True,
                        device=sparse_device if sparse_device is not None else device)
    num_dense = len(dense_fields)
    model: CTRModel
    if name == "deepfm":
        model = DeepFM(sparse, num_dense, mlp=mlp, dropout=config.dropout)
    elif name == "wd":
        model = WideDeep(sparse, num_dense, mlp=mlp, dropout=config.dropout)
    elif name == "dcn":
        model = DCN(sparse, num_dense, mlp=mlp, cross_layers=config.cross_layers,
                    dropout=config.dropout)
    else:
        model = DCNv2(sparse, num_dense, mlp=mlp, cross_layers=config.cross_layers,
                      low_rank=config.dcnv2_low_rank, num_experts=config.dcnv2_experts,
                      dropout=config.dropout)
    if sparse_device is None:
        return model.to(device)
    for name, child in model.named_children():  # the tables stay where they are (e.g. meta)
        if name != "sparse":
            child.to(device)
    for p in model.parameters(recurse=False):
        p.data = p.data.to(device)
    return model
