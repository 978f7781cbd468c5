"""Hyperparameter scaling rules from the base batch (1K in the paper) to a large batch.

With ``s = batch / base_batch``:

============  ==============  ==============  ========  ===============  =======
rule          dense lr        embedding lr    L2        warmup (epochs)  CowClip
============  ==============  ==============  ========  ===============  =======
``none``      lr              lr              l2        base             off
``sqrt``      lr * sqrt(s)    lr * sqrt(s)    l2        base             off
``linear``    lr * s          lr * s          l2        base             off
``cowclip``   lr * sqrt(s)    lr (unchanged)  l2 * s    1                on
============  ==============  ==============  ========  ===============  =======

``cowclip`` is the paper's rule (Zheng et al., AAAI 2023, and the bytedance/LargeBatchCTR
README): embedding lr fixed, L2 scaled linearly, dense lr by sqrt(s), one epoch of linear
dense-lr warm-up, CowClip with the base r and zeta. A per-batch ``overrides`` table from the
config is applied after the rule, for published tables that deviate from the pure rule
(Avazu: zeta 1e-3 at 1K/2K but 1e-4 from 4K; at 128K dense lr 16e-4 and L2 96e-5).

L2 base value: 1e-5 at 1K. The LargeBatchCTR README's tables (1e-5 ... 128e-5; Avazu 128K:
96e-5), its example commands (``--l2 8e-05`` at 8K, ``128e-05`` at 128K on Criteo) and
``train.py``'s default agree; README versions before its commit 12101b4 printed the tables ten
times larger (1e-4 ... 128e-4).

Overrides, as a config would hold them (YAML keys may be ints or strings like ``"128k"``)::

    {4096: {"zeta": 1e-4}, "8k": {"zeta": 1e-4}, ..., "128K": {"dense_lr": 16e-4, "l2": 96e-5}}

or, per rule, ``{"cowclip": {...table...}, "sqrt": {...}}`` (rules without a table get none).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "RULES",
    "RULE_FIELDS",
    "Hyperparams",
    "scale_hyperparams",
    "normalize_overrides",
    "parse_batch",
    "format_batch",
    "describe",
]

RULES = ("none", "sqrt", "linear", "cowclip")

_FLOAT_FIELDS = ("dense_lr", "embedding_lr", "l2", "warmup_epochs", "r", "zeta", "l2_batch_ratio")


def _to_float(name: str, value: Any) -> float:
    # YAML 1.1 (PyYAML) reads "1e-4" (no dot) as a string: accept numeric strings.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false",
                                                            "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ValueError(f"{name} must be a boolean, got {value!r}")


@dataclass
class Hyperparams:
    """The optimisation hyperparameters that depend on the batch size.

    ``warmup_epochs``: linear warm-up of the dense lr (epochs, may be fractional); ``r`` and
    ``zeta``: CowClip ratio and lower bound, used when ``cowclip`` is true. Numeric strings
    (``"1e-4"``, as PyYAML leaves them) are converted; negative values are rejected.
    """

    dense_lr: float
    embedding_lr: float
    l2: float = 0.0
    warmup_epochs: float = 0.0
    cowclip: bool = False
    r: float = 1.0
    zeta: float = 1e-5
    # the batch ratio s the rule scaled L2 by (the cowclip rule: s, else 1). The dense regime
    # does not need it; the sparse one gives a present row λ/s·min(cnt, s) (OptimizerOptions.sparse_l2)
    l2_batch_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in _FLOAT_FIELDS:
            value = _to_float(name, getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
            setattr(self, name, value)
        self.cowclip = _to_bool("cowclip", self.cowclip)
        if self.r <= 0:
            raise ValueError(f"r must be > 0, got {self.r!r}")
        if self.l2_batch_ratio <= 0:
            raise ValueError(f"l2_batch_ratio must be > 0, got {self.l2_batch_ratio!r}")

    def replace(self, **changes: Any) -> "Hyperparams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(Hyperparams))
# the fields the rule sets, not a config or a flag
RULE_FIELDS = ("cowclip", "l2_batch_ratio")

_BATCH_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kK])?$")


def parse_batch(text: str | int) -> int:
    """A batch size from ``4096``, ``"4096"``, ``"4k"``, ``"128K"``, ``"1.5k"`` (k = 1024).

    Raises ``ValueError`` naming the input for anything else: junk, zero, negatives, or a
    fractional result (``"1.3k"`` = 1331.2 samples).
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid batch size {text!r}: expected a positive integer or e.g. '128k'")
    if isinstance(text, int):
        value: float = text
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise ValueError(f"invalid batch size {text!r}: must be a finite positive integer")
        value = text
    elif isinstance(text, str):
        m = _BATCH_RE.match(text.strip())
        if not m:
            raise ValueError(f"invalid batch size {text!r}: expected a positive integer or a "
                             f"number of K (1K = 1024), e.g. '4096', '4k', '128K'")
        value = float(m.group(1)) * (1024 if m.group(2) else 1)
        if not m.group(2) and "." not in m.group(1):
            value = int(m.group(1))          # exact for big integers
    else:
        raise ValueError(f"invalid batch size {text!r}: expected a positive integer or e.g. '128k'")
    if value != int(value):
        raise ValueError(f"invalid batch size {text!r}: {value} is not a whole number of samples")
    if value <= 0:
        raise ValueError(f"invalid batch size {text!r}: must be positive")
    return int(value)


def format_batch(n: int) -> str:
    """``"128K"`` for 131072, ``"1K"`` for 1024, ``"1536"`` when not a multiple of 1024."""
    n = parse_batch(n)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _check_fields(where: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping of Hyperparams fields, got {values!r}")
    unknown = sorted(str(k) for k in set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown hyperparameter(s) {unknown}; known: {list(_FIELDS)}")
    out: dict[str, Any] = {}
    for name, value in values.items():
        out[name] = (_to_bool(f"{where}.{name}", value) if name == "cowclip"
                     else _to_float(f"{where}.{name}", value))
        if name != "cowclip" and out[name] < 0:
            raise ValueError(f"{where}.{name} must be >= 0, got {value!r}")
    return out


def _flat_table(where: str, table: Any) -> dict[int, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a mapping {{batch: {{field: value}}}}, got {table!r}")
    out: dict[int, dict[str, Any]] = {}
    origin: dict[int, Any] = {}
    for key, values in table.items():
        try:
            batch = parse_batch(key)
        except ValueError as e:
            raise ValueError(f"{where}: bad batch key: {e}") from None
        if batch in out:
            raise ValueError(f"{where}: keys {origin[batch]!r} and {key!r} both mean batch {batch}")
        out[batch] = _check_fields(f"{where}[{key!r}]", values)
        origin[batch] = key
    return out


def normalize_overrides(overrides: Mapping[Any, Any] | None,
                        rule: str | None = None) -> dict[int, dict[str, Any]]:
    """Validates a per-batch override table and returns it keyed by batch size (int).

    ``overrides`` is either one table ``{batch: {field: value}}``, applied whatever the rule,
    or one table per rule ``{rule: {batch: {field: value}}}`` from which ``rule`` selects
    (a rule without a table gets ``{}``; ``rule=None`` only validates and returns ``{}``).
    Every table is validated. Raises ``ValueError`` for unparseable batch keys, two keys
    naming one batch ("4k" and 4096), unknown fields, non-numeric values, and for rule names
    mixed with batch keys.
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"batch overrides must be a mapping, got {overrides!r}")
    keys = list(overrides)
    rule_keys = [k for k in keys if isinstance(k, str) and k.strip().lower() in RULES]
    if not rule_keys:
        return _flat_table("batch overrides", overrides)
    if len(rule_keys) != len(keys):
        raise ValueError(f"batch overrides mix rule names {rule_keys} with batch sizes "
                         f"{[k for k in keys if k not in rule_keys]}")
    tables = {k.strip().lower(): _flat_table(f"batch overrides[{k!r}]", overrides[k])
              for k in keys}
    return tables.get(rule, {}) if rule is not None else {}


def scale_hyperparams(base: Hyperparams, base_batch: int | str, batch: int | str, rule: str,
                      overrides: Mapping[Any, Any] | None = None,
                      cowclip_warmup_epochs: float = 1.0) -> Hyperparams:
    """Hyperparameters at ``batch`` from ``base`` (tuned at ``base_batch``) under ``rule``.

    See the module docstring for the rules; ``overrides`` (per-batch table, see
    :func:`normalize_overrides`) is applied after the rule. ``cowclip_warmup_epochs`` is the
    cowclip rule's dense warm-up: the paper's 1 epoch is 10% of its 10 epochs, so a shorter
    protocol may keep that share (0.1 for one epoch). ``base`` is not modified.
    """
    if rule not in RULES:
        raise ValueError(f"unknown scaling rule {rule!r}; expected one of {RULES}")
    base_batch, batch = parse_batch(base_batch), parse_batch(batch)
    s = batch / base_batch
    if rule == "none":
        out = base.replace(cowclip=False)
    elif rule == "sqrt":
        k = math.sqrt(s)
        out = base.replace(dense_lr=base.dense_lr * k, embedding_lr=base.embedding_lr * k,
                           cowclip=False)
    elif rule == "linear":
        out = base.replace(dense_lr=base.dense_lr * s, embedding_lr=base.embedding_lr * s,
                           cowclip=False)
    else:  # cowclip
        out = base.replace(dense_lr=base.dense_lr * math.sqrt(s), l2=base.l2 * s, l2_batch_ratio=s,
                           warmup_epochs=float(cowclip_warmup_epochs), cowclip=True)
    table = normalize_overrides(overrides, rule)
    if batch in table:
        out = out.replace(**table[batch])
    return out


def _g(x: float) -> str:
    return f"{x:.4g}"


def describe(h: Hyperparams) -> str:
    """One line, e.g. ``dense_lr 0.009051, embedding_lr 0.0001, l2 0.00128, warmup 1 epoch,
    CowClip on (r 1, zeta 1e-05)``."""
    warm = f"{_g(h.warmup_epochs)} epoch" + ("" if h.warmup_epochs == 1 else "s")
    clip = f"CowClip on (r {_g(h.r)}, zeta {_g(h.zeta)})" if h.cowclip else "CowClip off"
    return (f"dense_lr {_g(h.dense_lr)}, embedding_lr {_g(h.embedding_lr)}, l2 {_g(h.l2)}, "
            f"warmup {warm}, {clip}")
