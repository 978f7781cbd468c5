"""What a sweep is: its spec (a preset YAML plus flags, validated) and its cells.

::

    configs/sweeps/<preset>.yaml + flags ──▶ SweepSpec ──▶ cells(): models x batches x rules
                                                           (x extra seeds of one cell)
                                            run_cells(): each run once (base-batch cells of
                                                          none / sqrt / linear share one run)

Kept apart from the runner (which trains the cells) and the report (which reads their
summaries), so that both import it and neither imports the other.

Example::

    spec = SweepSpec.from_preset("quick", batches=[1024, 8192])
    [c.name for c in cells(spec)]         # ["deepfm-1K-none-s0", ...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctr.numerics import NUMERICS
from ctr.optim.scaling import RULES, format_batch, parse_batch
from ctr.train.config import CONFIG_DIR

PRESET_DIR = CONFIG_DIR / "sweeps"
DONE = ("ok", "diverged")


# generator knobs a preset's synthetic data may set (ctr.data.synth.model.SynthConfig): the
# vocabulary's size and skew, e.g. {vocab_scale: 30, zipf: 0.72} for millions of table rows
SYNTH_KNOBS: dict[str, type | tuple] = {"vocab_scale": (int, float), "zipf": (int, float)}


@dataclass
class SweepSpec:
    name: str = "sweep"
    models: list[str] = field(default_factory=lambda: ["deepfm"])
    batches: list[int] = field(default_factory=lambda: [1024, 8192])
    rules: list[str] = field(default_factory=lambda: list(RULES))
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 1
    base_batch: int | None = None            # the scaling rules' base (default: the model config's)
    data: str | None = None                  # processed dataset; None: synthetic per `synthetic`
    synthetic: dict[str, Any] = field(default_factory=dict)   # {rows, seed, SYNTH_KNOBS} of generated data
    train_args: list[str] = field(default_factory=list)       # extra ctr-train flags for every cell
    spread: dict[str, Any] = field(default_factory=dict)      # {batch, rule, seeds}: noise check
    # more seeds of every rule at the base and the top batch: the report's top - base difference
    # then comes with a 95% interval (5 seeds in all is the least that separates 0.002)
    interval_seeds: list[int] = field(default_factory=list)
    nproc: int = 1
    numerics: str = "portable"                # ctr-train --numerics of every cell (ctr.numerics)
    jobs: int = 1                             # cells trained at once (threads split between them)
    out: str | None = None

    @classmethod
    def from_preset(cls, name_or_path: str, **overrides: Any) -> "SweepSpec":
        """The preset (a name under configs/sweeps or a YAML path) with ``overrides`` (None: keep;
        ``more_train_args`` are appended to the preset's ``train_args``, ``train_args`` replace them).
        Raises FileNotFoundError or ValueError with a message that names the file."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no sweep preset {name_or_path!r}: {path} is not a file "
                                    f"(presets: {names}, or a YAML path)")
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f)  # a stream: YAML errors then name the file
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read it ({e})") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a sweep preset is a mapping (models: ..., batches: ...), "
                             f"not a {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        values.setdefault("name", path.stem)
        try:
            spec = cls(**values).normalised()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        more = overrides.pop("more_train_args", None)
        given = {k: v for k, v in overrides.items() if v is not None}
        spec = dataclasses.replace(spec, **given)
        if more:   # after the preset's own: argparse lets the last of a repeated flag win
            spec.train_args = [*spec.train_args, *more]
        return spec.normalised()

    def normalised(self) -> "SweepSpec":
        """Checks every field (ValueError naming it), parses batch sizes, drops repeated values
        (a cell listed twice would run twice, at once under --jobs)."""
        self.name = _text("name", self.name)
        self.models = _unique(_values("models", self.models, str))
        batches = _values("batches", self.batches, (int, float, str))
        self.batches = _unique([_batch("batches", b) for b in batches])
        self.rules = _unique(_values("rules", self.rules, str))
        bad = [r for r in self.rules if r not in RULES]
        if bad:
            raise ValueError(f"unknown scaling rule(s) {bad}; choose from {RULES}")
        self.seeds = _unique(_values("seeds", self.seeds, int))
        if self.numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, not {self.numerics!r}")
        for key in ("epochs", "nproc", "jobs"):
            setattr(self, key, _count(key, getattr(self, key)))
        if self.base_batch is not None:
            self.base_batch = _batch("base_batch", self.base_batch)
        for key in ("data", "out"):
            if getattr(self, key) is not None:
                setattr(self, key, _text(key, getattr(self, key)))
        self.synthetic = _mapping("synthetic", self.synthetic, {"rows": int, "seed": int, **SYNTH_KNOBS})
        self.train_args = [str(a) for a in _values("train_args", self.train_args, (str, int, float),
                                                   allow_empty=True)]
        self.interval_seeds = _unique(_values("interval_seeds", self.interval_seeds, int, allow_empty=True))
        self.spread = _mapping("spread", self.spread,
                               {"batch": (int, float, str), "rule": str, "seeds": list})
        if self.spread:
            if "batch" not in self.spread:
                raise ValueError("spread needs a batch (spread: {batch: 1k, rule: cowclip, seeds: [1, 2]})")
            self.spread["batch"] = _batch("spread.batch", self.spread["batch"])
            if self.spread.get("rule", "cowclip") not in RULES:
                raise ValueError(f"spread.rule must be one of {RULES}, not {self.spread['rule']!r}")
            self.spread["seeds"] = _unique(_values("spread.seeds", self.spread.get("seeds", []), int,
                                                   allow_empty=True))
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path("sweeps") / self.name)


def _kind(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "a whole number", str: "text", float: "a number", list: "a list"}[k]
                       for k in kinds)


def _is(value: Any, kind: type | tuple) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _values(key: str, value: Any, kind: type | tuple, allow_empty: bool = False) -> list:
    """A list of ``kind`` (one bare value counts as a list of one)."""
    if _is(value, kind) and not isinstance(value, list):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ValueError(f"{key} must be a{'' if allow_empty else ' non-empty'} list, not {value!r}")
    for v in value:
        if not _is(v, kind):
            raise ValueError(f"{key}: {v!r} is not {_kind(kind)}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be non-empty text, not {value!r}")
    return value


def _count(key: str, value: Any) -> int:
    if not _is(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number >= 1, not {value!r}")
    return value


def _batch(key: str, value: Any) -> int:
    try:
        return parse_batch(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def _mapping(key: str, value: Any, kinds: dict[str, type | tuple]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping with keys {sorted(kinds)}, not {value!r}")
    for k, v in value.items():
        if k not in kinds:
            raise ValueError(f"{key}: unknown key {k!r}; known: {sorted(kinds)}")
        if not _is(v, kinds[k]):
            raise ValueError(f"{key}.{k} must be {_kind(kinds[k])}, not {v!r}")
    return dict(value)


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class Cell:
    model: str
    batch: int
    rule: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-{format_batch(self.batch)}-{self.rule}-s{self.seed}"


def alias_of(cell: Cell, spec: SweepSpec) -> Cell | None:
    """At the base batch (s = 1) the none / sqrt / linear rules resolve to the same
    hyperparameters, so their cells share the `none` cell's run instead of repeating it."""
    base = spec.base_batch
    if base and cell.batch == base and cell.rule in ("sqrt", "linear") and "none" in spec.rules:
        return Cell(cell.model, cell.batch, "none", cell.seed)
    return None


def cell_dir(out: Path, cell: Cell, spec: SweepSpec) -> Path:
    return out / "runs" / (alias_of(cell, spec) or cell).name


def cells(spec: SweepSpec) -> list[Cell]:
    out = [Cell(m, b, r, s) for m in spec.models for s in spec.seeds
           for b in sorted(spec.batches) for r in spec.rules]
    if spec.spread:
        for m in spec.models:
            for s in spec.spread.get("seeds", []):
                c = Cell(m, spec.spread["batch"], spec.spread.get("rule", "cowclip"), int(s))
                out.append(c)
    base, top = spec.base_batch or min(spec.batches), max(spec.batches)
    if spec.interval_seeds and base in spec.batches and top != base:
        out += [Cell(m, b, r, s) for m in spec.models for s in spec.interval_seeds
                for b in (base, top) for r in spec.rules]
    return _unique(out)


def run_cells(spec: SweepSpec, all_cells: list[Cell] | None = None) -> list[Cell]:
    """The cells that train a run of their own: each run once, aliases folded into theirs."""
    return _unique([alias_of(c, spec) or c for c in (cells(spec) if all_cells is None else all_cells)])
