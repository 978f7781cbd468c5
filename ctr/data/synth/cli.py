"""``ctr-preprocess synth``: the command-line face of the synthetic generator.

:func:`add_synth_arguments` adds the flags (rows, seed, output, format, split and the planted
model's knobs) to a parser and :func:`synth_main` runs them, so ``ctr-preprocess synth`` and
``python -m ctr.data.synth`` share one definition. :func:`parse_rows` is the project's one
parser of row counts (``2m`` = 2,000,000 rows: decimal suffixes, unlike batch sizes).

Example::

    ctr-preprocess synth --rows 2m --out data/synth-2m                  # processed dataset
    ctr-preprocess synth --rows 500k --format tsv --out data/s.tsv.gz   # raw TSV to preprocess
    parse_rows("2.5m")                                                  # 2_500_000
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from ctr.argtypes import positive_int
from ctr.data.dataset import ROW_GROUP_ROWS
from ctr.data.preprocess import SplitSpec
from ctr.data.synth.dataset import DEFAULT_SPLIT, generate_dataset, split_spec
from ctr.data.synth.demo import DEMO_ROWS
from ctr.data.synth.model import SynthConfig, check_rows
from ctr.data.synth.tsv import write_raw_criteo_tsv

# Row counts are decimal: k = 1,000, m = 1,000,000, g/b = 10**9 ("--rows 2m" is two million
# rows). Batch sizes are binary instead (ctr.optim.scaling.parse_batch: "128k" = 131,072).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_rows(text: str | int) -> int:
    """A row count: ``1000000``, ``1_000_000``, ``1e6``, ``500k``, ``1m``, ``2.5M`` -> rows.

    The one parser of row counts. Suffixes are decimal, ``k`` = 1,000 and ``m`` = 1,000,000
    (``g`` and ``b`` = 10**9), as people count rows, unlike batch sizes, where ``k`` = 1024
    (:func:`ctr.optim.scaling.parse_batch`). Text that is not a positive whole count raises
    ``argparse.ArgumentTypeError`` (it is an argparse ``type``); an int goes through
    :func:`~ctr.data.synth.model.check_rows` (``ValueError``).
    """
    if isinstance(text, int):
        return check_rows(text)
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmgb]?)\s*", str(text).lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a row count: {text!r} (e.g. 1000000, 500k, 1m; "
                                         "k = 1,000)")
    value = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2)]
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole row count: {text!r}")
    return int(value)


def _parse_split(text: str) -> SplitSpec:
    try:
        return split_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (e.g. 0.9,0.1 or 0.8,0.1,0.1)") from None


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``ctr-preprocess synth`` flags to ``parser`` (see :func:`synth_main`)."""
    d = SynthConfig()
    parser.add_argument("--rows", type=parse_rows, default=DEMO_ROWS,
                        help="rows to generate, e.g. 1000000, 500k, 2m, 1e6; k = 1,000 and "
                             "m = 1,000,000 here (batch sizes use k = 1024) "
                             f"(default {DEMO_ROWS:,})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the "
                        "planted model (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output dataset directory, or .tsv/.tsv.gz file with --format tsv "
                             "(default data/synthetic-ROWS[.tsv])")
    parser.add_argument("--format", choices=("dataset", "tsv"), default="dataset",
                        help="dataset: processed dataset, ready for ctr-train; tsv: raw Criteo "
                             "TSV for ctr-preprocess (default dataset)")
    parser.add_argument("--split", type=_parse_split, default=split_spec(DEFAULT_SPLIT),
                        help="train,test (or train,valid,test) fractions for --format dataset, "
                             "rounded as ctr-preprocess rounds them (default 0.9,0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--row-group-rows", type=positive_int, default=ROW_GROUP_ROWS, metavar="N",
                        help="rows per Parquet row group, the unit the streaming loader gives a "
                        f"rank (--format dataset; default {ROW_GROUP_ROWS:,})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    g = parser.add_argument_group("planted model")
    g.add_argument("--positive-rate", type=float, default=d.positive_rate,
                   help=f"mean click probability (default {d.positive_rate})")
    g.add_argument("--sd-first", type=float, default=d.sd_first,
                   help=f"std of the per-id first-order effects (default {d.sd_first})")
    g.add_argument("--sd-fm", type=float, default=d.sd_fm,
                   help=f"std of the pairwise latent interactions (default {d.sd_fm})")
    g.add_argument("--sd-dense", type=float, default=d.sd_dense,
                   help=f"std of the linear dense term (default {d.sd_dense})")
    g.add_argument("--sd-nonlinear", type=float, default=d.sd_nonlinear,
                   help=f"std of the nonlinear term (default {d.sd_nonlinear})")
    g.add_argument("--fm-dim", type=int, default=d.fm_dim,
                   help=f"latent dimension of the planted interactions (default {d.fm_dim})")
    g.add_argument("--field-spread", type=float, default=d.field_spread,
                   help="log-std of the per-field effect scales; larger = fewer, stronger "
                        f"fields (default {d.field_spread})")
    g.add_argument("--zipf", type=float, default=d.zipf,
                   help=f"Zipf exponent of id frequencies (default {d.zipf})")
    g.add_argument("--vocab-scale", type=float, default=d.vocab_scale,
                   help="multiplies the id support of the huge fields; larger = rarer ids "
                        f"(default {d.vocab_scale})")


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("positive_rate", "sd_first", "sd_fm", "sd_dense", "sd_nonlinear", "fm_dim",
            "field_spread", "zipf", "vocab_scale")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _rows_tag(rows: int) -> str:
    for suf, mult in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if rows % mult == 0:
            return f"{rows // mult}{suf}"
    return str(rows)


def synth_main(args: argparse.Namespace) -> int:
    """Runs ``ctr-preprocess synth``; returns the exit status."""
    progress = not args.quiet
    kw = _model_kwargs(args)
    out = args.out
    if args.format == "tsv":
        out = Path(out) if out is not None else Path("data") / f"synthetic-{_rows_tag(args.rows)}.tsv"
        if out.exists() and not args.overwrite:
            print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        if out.is_dir():
            print(f"error: {out} is a directory", file=sys.stderr)
            return 2
        info = write_raw_criteo_tsv(out, args.rows, seed=args.seed, progress=progress, **kw)
        print(f"wrote {out}: {info['rows']:,} rows, {info['bytes'] / 2**20:,.1f} MiB, "
              f"positive rate {info['positive_rate']:.4f}, {info['rows_per_second']:,.0f} rows/s")
        return 0
    out = Path(out) if out is not None else Path("data") / f"synthetic-{_rows_tag(args.rows)}"
    t0 = time.perf_counter()
    try:
        meta = generate_dataset(out, args.rows, seed=args.seed, split=args.split,
                                overwrite=args.overwrite, progress=progress,
                                row_group_rows=args.row_group_rows, **kw)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    secs = time.perf_counter() - t0
    oracle = meta["oracle"]
    auc = f"{oracle['test_auc']:.4f}" if oracle.get("test_auc") is not None else "n/a"
    print(f"wrote {out}: {args.rows:,} rows, positive rate {meta.get('positive_rate', 0):.4f}, "
          f"oracle test AUC {auc}, {args.rows / secs:,.0f} rows/s")
    return 0
