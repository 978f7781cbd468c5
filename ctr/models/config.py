"""The model names and architecture settings, without importing torch or TorchRec.

The command line, the config loader and the docs take the list of models and of model
settings from here (``ctr.models.MODELS`` maps the same names to their classes), so a model
or a setting is added in one place.

Example::

    cfg = ModelConfig(embedding_dim=16, mlp=(256, 256))
    assert "dcnv2" in MODEL_NAMES
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The models, in the order the docs list them: DeepFM, DCN, DCNv2 (DCN-Mix with a low rank),
# Wide&Deep.
MODEL_NAMES = ("deepfm", "dcn", "dcnv2", "wd")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters shared by all models (a model ignores fields it has no use for)."""

    embedding_dim: int = 10
    mlp: tuple[int, ...] = (400, 400, 400)
    cross_layers: int = 3               # DCN / DCNv2
    dcnv2_low_rank: int | None = None   # None: full matrix cross; int: low-rank mixture of experts
    dcnv2_experts: int = 4
    init_std: float = 1e-2              # embedding init N(0, std)
    dropout: float = 0.0
    dnn_init: str = "glorot_normal"     # dense nn.Linear layers: DeepCTR's glorot_normal | torch (nn.Linear's)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """From a config's ``model_config`` mapping (lists become tuples); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown}; known: {sorted(known)}")
        converted: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


MODEL_SETTINGS = tuple(f.name for f in dataclasses.fields(ModelConfig))

# The tables' naming contract: field C1 has an embedding table emb_C1 [V, D] (CowClip applies)
# and a first-order table lin_C1 [V, 1] (never clipped). Sharding, the optimizer and
# checkpoints tell them apart by these names.
EMBEDDING_PREFIX = "emb_"
LINEAR_PREFIX = "lin_"
TABLE_KINDS = {EMBEDDING_PREFIX: "embedding", LINEAR_PREFIX: "linear"}


def check_sparse_fields(owner: str, fields: list[str], vocab_sizes: dict[str, int], embedding_dim: int) -> None:
    """The arguments every sparse arch (either backend) needs, checked once; ``owner`` names it."""
    if not fields:
        raise ValueError(f"{owner} needs at least one sparse field")
    missing = [f for f in fields if f not in vocab_sizes]
    if missing:
        raise ValueError(f"no vocabulary size for sparse field(s) {missing}")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be >= 1, not {embedding_dim}")


def field_of(table: str) -> str:
    """``emb_C1`` / ``lin_C1`` -> ``C1``."""
    return table.split("_", 1)[1]


def kind_of(table: str) -> str:
    """``emb_C1`` -> ``embedding``, ``lin_C1`` -> ``linear``."""
    for prefix, kind in TABLE_KINDS.items():
        if table.startswith(prefix):
            return kind
    raise ValueError(f"{table!r} is not a table name ({sorted(TABLE_KINDS)} + field)")
