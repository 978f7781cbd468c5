"""One list of settings: every field a run can set has exactly one flag, routed to its place."""

import dataclasses
import subprocess
import sys

import pytest

from ctr.cli import train as train_cli
from ctr.models.config import MODEL_NAMES, ModelConfig
from ctr.optim.scaling import RULE_FIELDS, Hyperparams
from ctr.train.config import HPARAM_FIELDS, TrainConfig, load_config
from ctr.train.settings import SETTING, SETTINGS


def test_every_field_has_one_setting_in_the_right_place():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for f in dataclasses.fields(Hyperparams):
        if f.name not in RULE_FIELDS:
            assert SETTING[f.name].where == "hparams", f.name
    for f in dataclasses.fields(ModelConfig):
        assert SETTING[f.name].where == "model", f.name
    not_flags = {"model", "dataset", "data", "out", "hparams", "batch_overrides", "model_config", "log_every"}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in not_flags:
            assert SETTING[f.name].where == "run", f.name
    assert set(HPARAM_FIELDS) == {s.name for s in SETTINGS if s.where == "hparams"}


def test_flags_reach_their_structure():
    args = train_cli.build_parser().parse_args(
        ["--model", "dcnv2", "--dense-lr", "2e-3", "--dcnv2-experts", "2", "--dropout", "0.1",
         "--adam-epsilon-form", "torch", "--mlp", "8,8", "--drop-last"])
    cfg = load_config(args.model, "criteo", overrides=train_cli.overrides_from(args))
    assert cfg.hparams["dense_lr"] == 2e-3
    assert cfg.model_settings() == dataclasses.replace(
        ModelConfig.from_dict(load_config("dcnv2", "criteo").model_config), dcnv2_experts=2, dropout=0.1,
        mlp=(8, 8))
    assert cfg.adam_epsilon_form == "torch" and cfg.drop_last is True
    assert tuple(train_cli.build_parser()._option_string_actions["--model"].choices) == MODEL_NAMES


def test_warmup_epochs_is_never_dropped():
    cow = load_config("deepfm", "criteo", overrides={"batch": "8k", "warmup_epochs": 0.5})
    assert cow.resolved_hparams().warmup_epochs == 0.5          # the cowclip rule's warm-up
    none = load_config("deepfm", "criteo", overrides={"batch": "8k", "scaling": "none", "warmup_epochs": 0.5})
    assert none.resolved_hparams().warmup_epochs == 0.5
    table = load_config("deepfm", "criteo", overrides={"batch": "8k"})
    table.batch_overrides = {"cowclip": {"8k": {"warmup_epochs": 0.25}}}
    assert table.resolved_hparams().warmup_epochs == 0.25       # a per-batch override wins


@pytest.mark.parametrize("flags", [["--dropout", "x"], ["--mlp", "0,4"], ["--dense-l2", "some"]])
def test_bad_values_are_refused_by_the_parser(flags):
    with pytest.raises(SystemExit):
        train_cli.build_parser().parse_args(flags)


def test_help_needs_neither_torch_nor_torchrec():
    code = ("import sys; from ctr.cli import train; train.build_parser().format_help(); "
            "sys.exit(int('torch' in sys.modules or 'torchrec' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
