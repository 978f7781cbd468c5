"""``ctr-preprocess``: raw click logs -> a processed dataset for ``ctr-train``.

Examples::

    ctr-preprocess train.txt --out data/criteo                     # Criteo Kaggle, 90/10 split
    ctr-preprocess day_0.gz day_1.gz --out data/criteo1tb --min-count 10
    ctr-preprocess day_{0..23}.gz --out data/criteo1tb --split files:23,1 --hash-buckets 40000000
    ctr-preprocess train.csv --out data/avazu --split random:0.8,0.1,0.1
    ctr-preprocess X.csv --labels y.csv --out data/avazu-x --format avazu-x
    ctr-preprocess test.txt --out data/criteo-test --split random:1.0   # unlabelled
    ctr-preprocess synth --help                                    # synthetic data instead

Inputs are detected by sniffing (gzip by magic bytes): Criteo TSV (40 fields; 39 = test,
no label; lines ending in a TAB too), Criteo CSV variants (header or not, leading Id,
integers as floats), Avazu (24 columns; 21-column variant with --labels), Parquet with raw
columns. Bad rows (a dense value such as inf, nan or 1e400 included) stop the run with the
file and line (exit 2) unless --skip-bad-rows; more than half of a file's rows bad stops it
anyway (a wrong layout). --overwrite replaces only a ctr dataset, never a directory holding
other files or an input. Ctrl-C or SIGTERM removes the partial output (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager

from ctr import allocator
from ctr.data.dataset import ROW_GROUP_ROWS
from ctr.data.encoding import ENCODINGS
from ctr.data.raw import FORMATS, RawInputError
from ctr.data.transforms import DENSE_TRANSFORMS
from ctr.argtypes import positive_int
from ctr.exitcodes import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup (the temporary output) runs."""


@contextmanager
def _sigterm_as_interrupt():
    def raise_terminated(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctr-preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raw input file(s); one vocabulary "
                   "over all of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="input layout (default: detected from the first lines)")
    p.add_argument("--labels", action="append", metavar="FILE",
                   help="separate labels file (one 0/1 per line, optional header), e.g. for "
                   "avazu-x; repeat once per input")
    p.add_argument("--split", default="random:0.9,0.1",
                   help="random|sequential:RATIOS, or files:COUNTS (whole input files in the "
                   "order given: files:23,1 = the first 23 inputs train, the last test, as for "
                   "Criteo 1TB's day_0..day_23); 2 parts = train,test (valid aliases test), "
                   "3 = train,valid,test (default random:0.9,0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    p.add_argument("--dense", choices=DENSE_TRANSFORMS, default="minmax",
                   help="dense transform (default minmax, the paper's)")
    g = p.add_argument_group("categorical encoding (default: full label encoding, the paper's)")
    g.add_argument("--encoding", choices=ENCODINGS, default=None,
                   help="label | min_count (needs --min-count) | hash (needs --hash-buckets)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--min-count", type=positive_int, metavar="K",
                   help="values seen fewer than K times -> id 0 (BARS protocol)")
    m.add_argument("--hash-buckets", type=positive_int, metavar="N",
                   help="hash values into N buckets (ids 1..N)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed rows (counted and listed in meta.json) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--row-group-rows", type=positive_int, default=ROW_GROUP_ROWS, metavar="N",
                   help="rows per Parquet row group, the unit the streaming loader gives a rank "
                   f"(default {ROW_GROUP_ROWS:,}; smaller for more ranks on a small dataset)")
    p.add_argument("--block-mb", type=positive_int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary")
    return p


def _synth(argv: list[str]) -> int:
    try:
        from ctr.data.synth import add_synth_arguments, synth_main
    except ImportError as e:
        print(f"ctr-preprocess synth: not available ({e})", file=sys.stderr)
        return EXIT_USAGE
    p = argparse.ArgumentParser(prog="ctr-preprocess synth",
                                description="Writes a synthetic dataset (see ctr.data.synth).")
    add_synth_arguments(p)
    args = p.parse_args(argv)
    return int(synth_main(args) or 0)


def main(argv: list[str] | None = None) -> int:
    allocator.ensure(main, argv)   # first: may restart this process once (ctr/allocator.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_as_interrupt():
            if argv and argv[0] == "synth":
                return _synth(argv[1:])
            return _preprocess(build_parser().parse_args(argv))
    except Terminated:
        print("ctr-preprocess: terminated (SIGTERM); nothing was written", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("ctr-preprocess: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _preprocess(args: argparse.Namespace) -> int:
    from ctr.data.preprocess import format_summary, preprocess
    try:
        meta = preprocess(args.inputs, args.out, fmt=args.format, labels=args.labels,
                          split=args.split, seed=args.seed, dense=args.dense,
                          encoding=args.encoding, min_count=args.min_count,
                          hash_buckets=args.hash_buckets, skip_bad_rows=args.skip_bad_rows,
                          overwrite=args.overwrite, progress=not args.quiet,
                          block_bytes=args.block_mb << 20, row_group_rows=args.row_group_rows)
    except RawInputError as e:
        msg = str(e)
        if getattr(e, "skippable", False):
            msg += "\n(pass --skip-bad-rows to skip such rows)"
        print(f"ctr-preprocess: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except FileExistsError as e:
        print(f"ctr-preprocess: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        print(f"ctr-preprocess: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(format_summary(meta, args.out))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
