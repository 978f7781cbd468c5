"""Scaling rules against the paper's published Criteo and Avazu tables (DeepFM)."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import yaml

from ctr.optim.scaling import (
    RULES,
    Hyperparams,
    describe,
    format_batch,
    normalize_overrides,
    parse_batch,
    scale_hyperparams,
)

# (batch, dense lr, L2, zeta) exactly as printed in the paper / LargeBatchCTR README
CRITEO = [
    ("1K", "8e-4", "1e-5", "1e-5"),
    ("2K", "11.31e-4", "2e-5", "1e-5"),
    ("4K", "16e-4", "4e-5", "1e-5"),
    ("8K", "22.62e-4", "8e-5", "1e-5"),
    ("16K", "32e-4", "16e-5", "1e-5"),
    ("32K", "45.25e-4", "32e-5", "1e-5"),
    ("64K", "64e-4", "64e-5", "1e-5"),
    ("128K", "90.50e-4", "128e-5", "1e-5"),
]
AVAZU = [
    ("1K", "1e-4", "1e-5", "1e-3"),
    ("2K", "1.41e-4", "2e-5", "1e-3"),
    ("4K", "2e-4", "4e-5", "1e-4"),
    ("8K", "2.83e-4", "8e-5", "1e-4"),
    ("16K", "4e-4", "16e-5", "1e-4"),
    ("32K", "5.66e-4", "32e-5", "1e-4"),
    ("64K", "8e-4", "64e-5", "1e-4"),
    ("128K", "16e-4", "96e-5", "1e-4"),
]
# The per-batch table a configs/avazu/*.yaml would hold: the published table deviates from the
# pure rule in zeta (1e-3 -> 1e-4 from 4K) and at 128K (dense lr 16e-4, L2 96e-5). Written as
# YAML, with PyYAML's quirk that "1e-4" (no dot) stays a string.
AVAZU_OVERRIDES_YAML = """
4k:   {zeta: 1e-4}
8k:   {zeta: 1e-4}
16k:  {zeta: 1e-4}
32k:  {zeta: 1e-4}
64k:  {zeta: 1e-4}
128k: {zeta: 1e-4, dense_lr: 16e-4, l2: 96e-5}
"""


def assert_matches_printed(got: float, printed: str) -> None:
    """Equal to the printed value up to the paper's rounding: within 1e-3 relative, or within
    one unit of the last printed digit (the tables sometimes truncate: 8e-4*sqrt(128) =
    90.5097e-4 is printed 90.50e-4; 1e-4*sqrt(2) = 1.4142e-4 is printed 1.41e-4)."""
    value = float(printed)
    unit = float(Decimal(1).scaleb(Decimal(printed).as_tuple().exponent))
    assert math.isclose(got, value, rel_tol=1e-3) or abs(got - value) < unit, (got, printed)


CRITEO_BASE = Hyperparams(dense_lr=8e-4, embedding_lr=1e-4, l2=1e-5, zeta=1e-5, r=1.0)
AVAZU_BASE = Hyperparams(dense_lr=1e-4, embedding_lr=1e-4, l2=1e-5, zeta=1e-3, r=1.0)


@pytest.mark.parametrize("batch,dense_lr,l2,zeta", CRITEO)
def test_criteo_table(batch, dense_lr, l2, zeta):
    h = scale_hyperparams(CRITEO_BASE, "1K", batch, "cowclip")
    assert_matches_printed(h.dense_lr, dense_lr)
    assert h.l2 == pytest.approx(float(l2), rel=1e-12)
    assert h.zeta == float(zeta)
    assert h.embedding_lr == 1e-4
    assert h.warmup_epochs == 1.0 and h.cowclip is True and h.r == 1.0


def test_criteo_table_exact_values():
    h = scale_hyperparams(CRITEO_BASE, 1024, 131072, "cowclip")
    assert h.dense_lr == pytest.approx(8e-4 * math.sqrt(128), rel=1e-12)   # 90.5097e-4
    assert h.dense_lr == pytest.approx(90.5096e-4, rel=1e-5)   # the README's 128K command line
    assert scale_hyperparams(CRITEO_BASE, 1024, 8192, "cowclip").dense_lr == pytest.approx(
        22.6274e-4, rel=1e-5)                                    # the README's 8K command line


@pytest.mark.parametrize("batch,dense_lr,l2,zeta", AVAZU)
def test_avazu_table_with_config_overrides(batch, dense_lr, l2, zeta):
    overrides = yaml.safe_load(AVAZU_OVERRIDES_YAML)
    h = scale_hyperparams(AVAZU_BASE, "1k", batch, "cowclip", overrides)
    assert_matches_printed(h.dense_lr, dense_lr)
    assert h.l2 == pytest.approx(float(l2), rel=1e-12)
    assert h.zeta == pytest.approx(float(zeta), rel=1e-12)
    assert h.embedding_lr == 1e-4
    assert h.warmup_epochs == 1.0 and h.cowclip is True


def test_avazu_needs_the_overrides():
    pure = scale_hyperparams(AVAZU_BASE, 1024, 131072, "cowclip")
    assert pure.dense_lr == pytest.approx(1e-4 * math.sqrt(128))     # not the table's 16e-4
    assert pure.l2 == pytest.approx(128e-5) and pure.zeta == 1e-3
    overrides = {"128K": {"dense_lr": 16e-4, "l2": 96e-5, "zeta": 1e-4}}
    tuned = scale_hyperparams(AVAZU_BASE, 1024, 131072, "cowclip", overrides)
    assert (tuned.dense_lr, tuned.l2, tuned.zeta) == (16e-4, 96e-5, 1e-4)
    # an override for another batch does not apply
    assert scale_hyperparams(AVAZU_BASE, 1024, 65536, "cowclip", overrides) == \
        scale_hyperparams(AVAZU_BASE, 1024, 65536, "cowclip")


@pytest.mark.parametrize("batch", [512, 1024, 1536, 8192, 131072])
def test_every_rule_arithmetic(batch):
    base = Hyperparams(dense_lr=3e-4, embedding_lr=2e-4, l2=5e-6, warmup_epochs=0.5,
                       cowclip=True, r=0.8, zeta=2e-5)
    s = batch / 1024
    none = scale_hyperparams(base, 1024, batch, "none")
    assert none == base.replace(cowclip=False)
    sq = scale_hyperparams(base, 1024, batch, "sqrt")
    assert sq.dense_lr == pytest.approx(3e-4 * math.sqrt(s), rel=1e-12)
    assert sq.embedding_lr == pytest.approx(2e-4 * math.sqrt(s), rel=1e-12)
    assert (sq.l2, sq.warmup_epochs, sq.cowclip) == (5e-6, 0.5, False)
    lin = scale_hyperparams(base, 1024, batch, "linear")
    assert lin.dense_lr == pytest.approx(3e-4 * s, rel=1e-12)
    assert lin.embedding_lr == pytest.approx(2e-4 * s, rel=1e-12)
    assert (lin.l2, lin.warmup_epochs, lin.cowclip) == (5e-6, 0.5, False)
    cow = scale_hyperparams(base, 1024, batch, "cowclip")
    assert cow.dense_lr == pytest.approx(3e-4 * math.sqrt(s), rel=1e-12)
    assert cow.embedding_lr == 2e-4
    assert cow.l2 == pytest.approx(5e-6 * s, rel=1e-12)
    assert (cow.warmup_epochs, cow.cowclip, cow.r, cow.zeta) == (1.0, True, 0.8, 2e-5)
    # the base is not modified
    assert base == Hyperparams(3e-4, 2e-4, 5e-6, 0.5, True, 0.8, 2e-5)


def test_other_base_batch():
    base = Hyperparams(dense_lr=1e-3, embedding_lr=1e-3, l2=1e-5)
    h = scale_hyperparams(base, "4k", "64k", "linear")
    assert h.dense_lr == pytest.approx(16e-3)
    h = scale_hyperparams(base, 4096, 1024, "cowclip")      # scaling down works too
    assert h.dense_lr == pytest.approx(0.5e-3) and h.l2 == pytest.approx(0.25e-5)


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown scaling rule 'cow'"):
        scale_hyperparams(CRITEO_BASE, 1024, 2048, "cow")
    assert RULES == ("none", "sqrt", "linear", "cowclip")


def test_overrides_apply_after_any_rule_and_per_rule_tables():
    flat = {2048: {"dense_lr": 1.0}}
    for rule in RULES:
        assert scale_hyperparams(CRITEO_BASE, 1024, 2048, rule, flat).dense_lr == 1.0
    per_rule = {"cowclip": {"2k": {"zeta": 7e-5}}, "sqrt": {"2k": {"embedding_lr": 5.0}}}
    assert scale_hyperparams(CRITEO_BASE, 1024, 2048, "cowclip", per_rule).zeta == 7e-5
    assert scale_hyperparams(CRITEO_BASE, 1024, 2048, "sqrt", per_rule).embedding_lr == 5.0
    lin = scale_hyperparams(CRITEO_BASE, 1024, 2048, "linear", per_rule)
    assert lin == scale_hyperparams(CRITEO_BASE, 1024, 2048, "linear")
    # strings as YAML leaves them, and a boolean
    h = scale_hyperparams(CRITEO_BASE, 1024, 2048, "cowclip",
                          {"2k": {"l2": "3e-5", "cowclip": False, "warmup_epochs": 2}})
    assert (h.l2, h.cowclip, h.warmup_epochs) == (3e-5, False, 2.0)
    assert normalize_overrides(None) == {} and normalize_overrides({}) == {}
    assert normalize_overrides({"1k": {"r": 2}, 4096: {"zeta": "1e-4"}}) == {
        1024: {"r": 2.0}, 4096: {"zeta": 1e-4}}


@pytest.mark.parametrize("overrides,match", [
    ({"junk": {"l2": 1.0}}, "junk"),
    ({"4k": {"l2": 1.0}, 4096: {"zeta": 1.0}}, "both mean batch 4096"),
    ({"4k": {"lr": 1.0}}, r"unknown hyperparameter\(s\) \['lr'\]"),
    ({"4k": {"l2": "abc"}}, "l2 must be a number"),
    ({"4k": {"l2": -1.0}}, "must be >= 0"),
    ({"4k": 3}, "expected a mapping"),
    ({"cowclip": {}, "4k": {}}, "mix rule names"),
    ({"sqrt": {"bad": {}}}, "bad"),                      # other rules' tables validated too
    ([1, 2], "must be a mapping"),
])
def test_bad_overrides(overrides, match):
    with pytest.raises(ValueError, match=match):
        scale_hyperparams(CRITEO_BASE, 1024, 4096, "cowclip", overrides)


def test_hyperparams_validation_and_coercion():
    h = Hyperparams(dense_lr="8e-4", embedding_lr="1e-4", l2="1e-5", cowclip="true")
    assert (h.dense_lr, h.embedding_lr, h.l2, h.cowclip) == (8e-4, 1e-4, 1e-5, True)
    assert (h.warmup_epochs, h.r, h.zeta) == (0.0, 1.0, 1e-5)
    assert Hyperparams(**h.to_dict()) == h
    for bad in [dict(dense_lr="x"), dict(l2=-1.0), dict(r=0.0), dict(cowclip="maybe"),
                dict(zeta=float("nan")), dict(dense_lr=True)]:
        with pytest.raises(ValueError):
            Hyperparams(**{"dense_lr": 1e-3, "embedding_lr": 1e-3, **bad})


@pytest.mark.parametrize("text,want", [
    ("1k", 1024), ("1K", 1024), ("128K", 131072), ("128k", 131072), ("131072", 131072),
    (4096, 4096), ("1.5k", 1536), (" 2k ", 2048), ("64 K", 65536), ("1536", 1536),
    (4096.0, 4096), ("0.5k", 512),
])
def test_parse_batch(text, want):
    assert parse_batch(text) == want


@pytest.mark.parametrize("text", [
    "junk", "", "k", "0", "0k", "-1", "-4k", "1.3k", "1e3", "12kk", "4m", "1,024", "4 096",
    None, True, 0, -5, 1.5, float("nan"), float("inf"), [1024],
])
def test_parse_batch_rejects_junk(text):
    with pytest.raises(ValueError, match="invalid batch size") as e:
        parse_batch(text)
    assert repr(text) in str(e.value)


def test_format_batch():
    assert format_batch(131072) == "128K"
    assert format_batch(1024) == "1K"
    assert format_batch(1536) == "1536"
    assert format_batch(1000) == "1000"
    assert format_batch("2k") == "2K"
    for n in [1, 512, 1024, 1536, 3072, 131072, 10**6]:
        assert parse_batch(format_batch(n)) == n
    with pytest.raises(ValueError):
        format_batch(0)


def test_describe():
    on = describe(scale_hyperparams(CRITEO_BASE, 1024, 131072, "cowclip"))
    assert "\n" not in on
    assert "dense_lr 0.009051" in on and "embedding_lr 0.0001" in on and "l2 0.00128" in on
    assert "warmup 1 epoch," in on and "CowClip on (r 1, zeta 1e-05)" in on
    off = describe(scale_hyperparams(CRITEO_BASE, 1024, 2048, "sqrt"))
    assert "CowClip off" in off and "warmup 0 epochs" in off
