"""``ctr-preprocess synth``: the command-line face of the synthetic generator.

:func:`add_synth_arguments` adds the flags (rows, seed, output, format, split and the planted
model's knobs) to a parser and :func:`synth_main` runs them, so ``ctr-preprocess synth`` and
``python -m ctr.data.synth`` share one definition. :func:`parse_rows` is the project's one
parser of row counts (``2m`` = 2,000,000 rows: decimal suffixes, unlike batch sizes).

Example::

    ctr-preprocess synth --rows 2m --out data/synth-2m                  # processed dataset
    ctr-preprocess synth --rows 500k --format tsv --out data/s.tsv.gz   # raw TSV to preprocess
    ctr-preprocess synth --rows 3m --format days --days 3 --out data/days   # day_0, day_1, day_2
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
from ctr.data.synth.tsv import day_file_names, day_sizes, write_raw_criteo_days, write_raw_criteo_tsv

# Row counts are decimal: k = 1,000, m = 1,000,000, g/b = 10**9 ("--rows 2m" is two million
# rows). Batch sizes are binary instead (ctr.optim.scaling.parse_batch: "128k" = 131,072).
_DAY_FILE = re.compile(r"day_\d+(\.gz)?")     # what --format days writes (and what it refuses to mix)
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
                        help="output dataset directory, .tsv/.tsv.gz file with --format tsv, "
                             "directory of day files with --format days "
                             "(default data/synthetic-ROWS[.tsv|-days])")
    parser.add_argument("--format", choices=("dataset", "tsv", "days"), default="dataset",
                        help="dataset: processed dataset, ready for ctr-train; tsv: raw Criteo "
                             "TSV for ctr-preprocess; days: Criteo-1TB-style day_0..day_{N-1} "
                             "raw files from one planted model, for ctr-preprocess --split "
                             "files:N-1,1 (default dataset)")
    parser.add_argument("--days", type=positive_int, default=None, metavar="N",
                        help="--format days: how many day files (the rows cut into N consecutive "
                             "days of equal size, to one row)")
    parser.add_argument("--gzip", action="store_true",
                        help="--format days: write day_N.gz (--format tsv: gzip by the .gz suffix)")
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


def rows_tag(rows: int) -> str:
    """A row count as written in names: ``2m``, ``500k``, ``1234`` (the inverse of :func:`parse_rows`)."""
    for suf, mult in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if rows % mult == 0:
            return f"{rows // mult}{suf}"
    return str(rows)


def _days_main(args: argparse.Namespace, kw: dict[str, Any]) -> int:
    """``--format days``: day files in ``--out``, refused over other day files without
    ``--overwrite``; day files that are not among those written are refused even then, so
    that ``DIR/day_*`` is exactly this data."""
    if args.days is None:
        print("error: --format days needs --days N", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out is not None else Path("data") / f"synthetic-{rows_tag(args.rows)}-days"
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file; --format days writes a directory of day files",
              file=sys.stderr)
        return 2
    try:
        day_sizes(args.rows, args.days)
    except ValueError as e:
        print(f"error: --days {args.days}: {e}", file=sys.stderr)
        return 2
    names = set(day_file_names(args.days, args.gzip))
    present = sorted(p.name for p in out.iterdir() if _DAY_FILE.fullmatch(p.name)) if out.is_dir() else []
    extra = [n for n in present if n not in names]
    if extra:
        print(f"error: {out} holds {', '.join(extra[:5])}, which this run would not write; "
              "remove them or use another --out, so that the directory's day files are one "
              "dataset", file=sys.stderr)
        return 2
    if present and not args.overwrite:
        print(f"error: {out} already holds {', '.join(present[:5])}; pass --overwrite to "
              "replace them", file=sys.stderr)
        return 2
    info = write_raw_criteo_days(out, args.rows, args.days, seed=args.seed, gzip=args.gzip,
                                 progress=not args.quiet, **kw)
    sizes = ", ".join(f"{Path(f['path']).name} {f['rows']:,}" for f in info["files"][:4])
    more = ", ..." if args.days > 4 else ""
    print(f"wrote {out}: {info['rows']:,} rows in {args.days} day files ({sizes}{more}), "
          f"{info['bytes'] / 2**20:,.1f} MiB, positive rate {info['positive_rate']:.4f}, "
          f"{info['rows_per_second']:,.0f} rows/s")
    return 0


def synth_main(args: argparse.Namespace) -> int:
    """Runs ``ctr-preprocess synth``; returns the exit status."""
    progress = not args.quiet
    kw = _model_kwargs(args)
    fmt = args.format
    if getattr(args, "days", None) is not None and fmt != "days":
        print("error: --days goes with --format days", file=sys.stderr)
        return 2
    if getattr(args, "gzip", False) and fmt != "days":
        print("error: --gzip goes with --format days (for --format tsv, name the file .tsv.gz)",
              file=sys.stderr)
        return 2
    if fmt == "days":
        return _days_main(args, kw)
    out = args.out
    if args.format == "tsv":
        out = Path(out) if out is not None else Path("data") / f"synthetic-{rows_tag(args.rows)}.tsv"
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
    out = Path(out) if out is not None else Path("data") / f"synthetic-{rows_tag(args.rows)}"
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
