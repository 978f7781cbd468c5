"""Every setting of a training run, once: where it lives, how a flag parses it, what it means.

::

    SETTINGS ──▶ ctr-train's flags (add_setting_flags: one per setting, grouped, with help)
             ──▶ load_config(overrides)  (route: a TrainConfig field, Hyperparams or ModelConfig)
             ──▶ tests/test_settings.py  (every Hyperparams / ModelConfig / option field has one)

A setting's ``where`` says which structure holds it: ``run`` a :class:`TrainConfig` field,
``hparams`` a base :class:`~ctr.optim.scaling.Hyperparams` field (before the scaling rule),
``model`` a :class:`~ctr.models.config.ModelConfig` field. This module imports neither torch
nor TorchRec, so ``ctr-train --help`` is instant.

Example::

    parser = argparse.ArgumentParser(); add_setting_flags(parser)
    SETTING["dense_lr"].where        # "hparams"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from ctr.argtypes import positive_int
from ctr.data.source import LOADERS
from ctr.distributed.choices import DEVICES, EMBEDDING_BACKENDS, SHARDINGS
from ctr.models.config import MODEL_NAMES
from ctr.numerics import NUMERICS
from ctr.optim.options import (ADAM_EPSILON_FORMS, DENSE_L2_MODES, LOWER_BOUNDS, SPARSE_L2_MODES, UPDATE_MODES,
                               WARMUP_FORMS)
from ctr.optim.scaling import RULES, parse_batch


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text!r}")
    return value


def batch_size(text: str) -> int:
    try:
        return parse_batch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 400,400,400, not {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, not {text!r}")
    return sizes


@dataclass(frozen=True)
class Setting:
    name: str                       # the field's name; the flag is --name-with-dashes
    where: str                      # "run" | "hparams" | "model"
    help: str
    parse: Callable[[str], Any] | None = None   # None: a switch (store_true)
    choices: tuple[str, ...] | None = None
    group: str = "run"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_HP, _MODEL, _REF = "hyperparameters (base values, before the scaling rule)", "model", \
    "the reference's details (defaults: the reference code's; see ctr/optim/options.py)"
_DATA = "data loading (see ctr/data/source.py)"

SETTINGS: tuple[Setting, ...] = (
    Setting("batch", "run", "global batch: 1k, 128K, 131072 (K = 1024)", batch_size, group="main"),
    Setting("scaling", "run", "hyperparameter rule from the base batch", str, RULES, group="main"),
    Setting("epochs", "run", "passes over the train split", positive_int, group="main"),
    Setting("seed", "run", "seed of the initialisation and the batch order", int, group="main"),
    Setting("device", "run", "auto: cuda when a GPU is visible, else cpu", str, DEVICES, group="main"),
    Setting("sharding", "run", "how the tables are placed over the ranks", str, SHARDINGS, group="main"),
    Setting("embedding_backend", "run", "torchrec: TorchRec tables, any sharding; torch: plain PyTorch, "
            "replicated (no TorchRec/FBGEMM needed); auto: torchrec where it imports, else torch",
            str, EMBEDDING_BACKENDS, group="main"),
    Setting("update", "run", "dense: every table row gets L2 and an Adam step every step (the paper's "
            "whole-table L2); sparse: only the rows present in the batch get L2, CowClip and a lazy "
            "Adam step (a step costs O(batch), not O(table); not the paper's algorithm)", str,
            UPDATE_MODES, group="main"),
    Setting("sparse_l2", "run", "--update sparse under the cowclip rule: count: a present row's L2 is "
            "λ/s·min(cnt, s), the base run's L2 per epoch for rare and frequent ids alike; batch: λ·s "
            "(the dense regime's rule as it stands)", str, SPARSE_L2_MODES, group=_HP),
    Setting("numerics", "run", "native: the libraries pick CPU kernels for this CPU (fastest); "
            "portable: MKL, ATen, FBGEMM and oneDNN take their AVX2 paths, so a run repeats on "
            "another x86 machine (ctr/numerics.py)", str, NUMERICS, group="main"),
    Setting("base_batch", "run", "the batch the base values were tuned at", batch_size, group=_HP),
    Setting("dense_lr", "hparams", "Adam learning rate of the dense weights", non_negative_float, group=_HP),
    Setting("embedding_lr", "hparams", "Adam learning rate of the tables", non_negative_float, group=_HP),
    Setting("l2", "hparams", "L2 λ on every table row (and the dense linear weights)", non_negative_float,
            group=_HP),
    Setting("warmup_epochs", "hparams", "dense lr warm-up in epochs; under the cowclip rule this sets "
            "the rule's warm-up (--cowclip-warmup-epochs)", non_negative_float, group=_HP),
    Setting("r", "hparams", "CowClip ratio r", non_negative_float, group=_HP),
    Setting("zeta", "hparams", "CowClip lower bound ζ", non_negative_float, group=_HP),
    Setting("cowclip_warmup_epochs", "run", "dense warm-up of the cowclip rule in epochs (the paper's: 1)",
            non_negative_float, group=_HP),
    Setting("cowclip_lower_bound", "run", "reference: r·cnt·max(‖w‖, r·√d·ζ); paper: cnt·max(r‖w‖, ζ)",
            str, LOWER_BOUNDS, group=_REF),
    Setting("adam_epsilon_form", "run", "keras: ε on √v before bias correction; torch: after", str,
            ADAM_EPSILON_FORMS, group=_REF),
    Setting("adam_epsilon", "run", "Adam's ε", non_negative_float, group=_REF),
    Setting("dense_l2", "run", "reference: λ on the dense linear weights, 1e-5 on cross kernels", str,
            DENSE_L2_MODES, group=_REF),
    Setting("warmup_form", "run", "reference: PolynomialDecay from 1e-8; linear: lr·(t+1)/W", str,
            WARMUP_FORMS, group=_REF),
    Setting("embedding_dim", "model", "embedding size per field", positive_int, group=_MODEL),
    Setting("mlp", "model", "DNN hidden sizes, e.g. 400,400,400", layer_sizes, group=_MODEL),
    Setting("init_std", "model", "embedding init N(0, std)", non_negative_float, group=_MODEL),
    Setting("dropout", "model", "DNN dropout", non_negative_float, group=_MODEL),
    Setting("dnn_init", "model", "init of the dense nn.Linear layers (DNN, output, dense linear kernel): "
            "glorot_normal (DeepCTR's, the reference's) or torch (nn.Linear's default)", str,
            ("glorot_normal", "torch"), group=_MODEL),
    Setting("cross_layers", "model", "DCN / DCNv2 cross layers", positive_int, group=_MODEL),
    Setting("dcnv2_low_rank", "model", "DCNv2: low-rank mixture of experts of this rank (DCN-Mix)",
            positive_int, group=_MODEL),
    Setting("dcnv2_experts", "model", "DCNv2 (DCN-Mix): number of experts", positive_int, group=_MODEL),
    Setting("drop_last", "run", "drop the last partial batch of each epoch", None),
    Setting("loader", "run", "how the splits are read: memory (each rank holds them), stream (each "
            "rank reads its share of the row groups, bounded memory), auto: memory when the local "
            "ranks' copies fit --loader-memory-budget", str, LOADERS, group=_DATA),
    Setting("loader_memory_budget", "run", "GiB that the in-memory copies of this machine's ranks may "
            "take under --loader auto (default: half of the available memory)", non_negative_float,
            group=_DATA),
    Setting("loader_streams", "run", "streaming: reading streams, a multiple of the ranks (default: "
            "the ranks); a run gives the same batches on any number of ranks dividing it",
            positive_int, group=_DATA),
    Setting("shuffle_buffer", "run", "streaming: rows each stream shuffles together (its window of "
            "row groups); memory per stream is about twice this many rows", positive_int, group=_DATA),
    Setting("eval_batch", "run", "evaluation batch", batch_size),
    Setting("max_steps", "run", "stop after this many steps (smoke tests)", positive_int),
)
SETTING = {s.name: s for s in SETTINGS}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (default None: "not given", so the config's value stands)."""
    parser.add_argument("--model", choices=MODEL_NAMES, default="deepfm")
    groups: dict[str, Any] = {"main": parser}
    for s in SETTINGS:
        g = groups.get(s.group)
        if g is None:
            g = groups[s.group] = parser.add_argument_group(s.group)
        if s.parse is None:
            g.add_argument(s.flag, dest=s.name, action="store_true", default=None, help=s.help)
        else:
            g.add_argument(s.flag, dest=s.name, type=s.parse, choices=s.choices, help=s.help)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (the others are None and left to the config)."""
    return {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None}
