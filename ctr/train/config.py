"""The training configuration: a YAML file per dataset x model, overridden by flags.

::

    configs/<dataset>/<model>.yaml   the paper's values at the base batch (1K)
          + command-line flags       any field, e.g. --epochs 2 --dense-lr 1e-3
          = TrainConfig              written to runs/NAME/config.json, checked on --resume
          + scaling rule             Hyperparams at the requested batch (ctr.optim.scaling)

Example::

    cfg = load_config(model="deepfm", dataset="criteo", overrides={"batch": 131072})
    hp = cfg.resolved_hparams()      # dense lr 90.5e-4, L2 128e-5, embedding lr 1e-4 ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctr.data.source import DEFAULT_SHUFFLE_BUFFER, LOADERS
from ctr.distributed.choices import EMBEDDING_BACKENDS, check_backend_sharding
from ctr.optim.options import OptimizerOptions
from ctr.models.config import MODEL_SETTINGS, ModelConfig
from ctr.numerics import NUMERICS
from ctr.optim.scaling import RULE_FIELDS, Hyperparams, parse_batch, scale_hyperparams

# Shipped inside the package (package data), so an installed ctr finds them anywhere; the
# top-level configs/ of a source checkout is a link to this directory.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


# The base hyperparameters a config or a flag may set (RULE_FIELDS are the rule's to decide).
HPARAM_FIELDS = tuple(f.name for f in dataclasses.fields(Hyperparams) if f.name not in RULE_FIELDS)


class ConfigError(ValueError):
    """A training setting is unknown or out of range; the message names it."""


@dataclass
class TrainConfig:
    model: str = "deepfm"
    dataset: str = "synthetic"         # which configs/<dataset>/ the defaults came from
    data: str | None = None            # processed dataset dir; None = the built-in synthetic data
    batch: int = 1024
    base_batch: int = 1024
    epochs: int = 1
    seed: int = 0
    scaling: str = "cowclip"
    hparams: dict[str, Any] = field(default_factory=dict)          # base Hyperparams fields
    # rule -> batch -> values: the published tables' departures from a pure rule (Avazu's)
    batch_overrides: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)     # ctr.models.ModelConfig fields
    # Where the reference code and torch / Algorithm 1 differ (ctr.optim.options): the
    # reference's by default, in every config unless it says otherwise.
    cowclip_lower_bound: str = OptimizerOptions.lower_bound
    # The cowclip rule's dense warm-up in epochs (see ctr.optim.scaling.scale_hyperparams).
    cowclip_warmup_epochs: float = 1.0
    adam_epsilon_form: str = OptimizerOptions.adam_epsilon_form
    adam_epsilon: float = OptimizerOptions.adam_epsilon
    dense_l2: str = OptimizerOptions.dense_l2
    warmup_form: str = OptimizerOptions.warmup_form
    # dense: every table row gets L2 and Adam every step (the paper's); sparse: only the rows of
    # the batch (ctr.optim.options). A resume key: a run is one of the two algorithms.
    update: str = OptimizerOptions.update
    # the sparse regime's L2 under the cowclip rule (ctr.optim.options): count (λ/s·min(cnt, s)
    # per present row) | batch (λ·s). A resume key.
    sparse_l2: str = OptimizerOptions.sparse_l2
    sharding: str = "auto"
    # auto | torchrec | torch; a run resolves auto at start and records the concrete one. Not a
    # resume key: a checkpoint of one backend resumes and evaluates on the other.
    embedding_backend: str = "auto"
    device: str = "auto"
    # native | portable (ctr.numerics): which CPU kernels the libraries may pick; portable pins
    # their AVX2 paths so that a run repeats on another x86 machine. Not a resume key.
    numerics: str = "native"
    drop_last: bool = False
    # How the splits are read (ctr.data.source): auto | memory | stream. A run resolves auto at
    # start and records the concrete loader (and the streaming loader's streams) in config.json;
    # on --resume an unset value takes the run's recorded one.
    loader: str = "auto"
    loader_memory_budget: float | None = None   # GiB for all local ranks' copies; None: half the free RAM
    loader_streams: int | None = None           # streaming: reading streams (None: the world size)
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER  # streaming: rows one stream shuffles together
    eval_batch: int = 65536
    max_steps: int | None = None       # stop early (benchmarks, smoke tests)
    out: str | None = None
    log_every: int = 20

    def base_hparams(self) -> Hyperparams:
        return Hyperparams(**self.hparams)

    def resolved_hparams(self) -> Hyperparams:
        return scale_hyperparams(self.base_hparams(), self.base_batch, self.batch, self.scaling,
                                 (self.batch_overrides or {}).get(self.scaling),
                                 cowclip_warmup_epochs=self.cowclip_warmup_epochs)

    def optimizer_options(self) -> OptimizerOptions:
        return OptimizerOptions(lower_bound=self.cowclip_lower_bound,
                                adam_epsilon_form=self.adam_epsilon_form,
                                adam_epsilon=self.adam_epsilon, dense_l2=self.dense_l2,
                                warmup_form=self.warmup_form, update=self.update,
                                sparse_l2=self.sparse_l2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Raises :class:`ConfigError` for a value no run can use (``--epochs 0`` and the like)."""
        positive = {"batch": self.batch, "base_batch": self.base_batch, "epochs": self.epochs,
                    "eval_batch": self.eval_batch, "log_every": self.log_every}
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        if self.loader_streams is not None:
            positive["loader_streams"] = self.loader_streams
        positive["shuffle_buffer"] = self.shuffle_buffer
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, not {value!r}")
        if self.numerics not in NUMERICS:
            raise ConfigError(f"numerics must be one of {NUMERICS}, not {self.numerics!r}")
        if self.loader not in LOADERS:
            raise ConfigError(f"loader must be one of {LOADERS}, not {self.loader!r}")
        budget = self.loader_memory_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not budget >= 0):
            raise ConfigError(f"loader-memory-budget must be a number of GiB >= 0, not {budget!r}")
        try:
            if self.embedding_backend not in EMBEDDING_BACKENDS:
                raise ValueError(f"embedding_backend must be one of {EMBEDDING_BACKENDS}, "
                                 f"not {self.embedding_backend!r}")
            check_backend_sharding(self.embedding_backend, self.sharding)
            self.adam_epsilon = self.optimizer_options().adam_epsilon   # checks every option
            self.model_settings()
            self.resolved_hparams()
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from e
        return self

    def model_settings(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model_config)


def config_path(dataset: str, model: str) -> Path:
    return CONFIG_DIR / dataset / f"{model}.yaml"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(model: str, dataset: str = "synthetic", path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults from ``configs/<dataset>/<model>.yaml`` (or ``path``), then ``overrides``."""
    src = Path(path) if path else config_path(dataset, model)
    values = read_yaml(src)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{src}: unknown keys {sorted(unknown)}")
    values.setdefault("model", model)
    values.setdefault("dataset", dataset)
    cfg = TrainConfig(**values)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():  # run settings first: the scaling rule decides below
        if key in known:
            setattr(cfg, key, value)
        elif key not in HPARAM_FIELDS and key not in MODEL_SETTINGS:
            raise ConfigError(f"unknown setting {key!r}")
    for key, value in given.items():
        if key == "warmup_epochs" and cfg.scaling == "cowclip":
            cfg.cowclip_warmup_epochs = value   # the cowclip rule owns the warm-up
        elif key in HPARAM_FIELDS:
            cfg.hparams = {**cfg.hparams, key: value}
        elif key in MODEL_SETTINGS:
            cfg.model_config = {**cfg.model_config, key: value}
    try:
        cfg.batch = parse_batch(cfg.batch)
        cfg.base_batch = parse_batch(cfg.base_batch)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg.validate()
