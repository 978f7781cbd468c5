"""``python -m ctr.data.synth ...``: the same as ``ctr-preprocess synth ...``."""

import argparse
import sys

from ctr.data.synth.cli import add_synth_arguments, synth_main

parser = argparse.ArgumentParser(prog="python -m ctr.data.synth",
                                 description="Writes a synthetic Criteo-shaped dataset or TSV.")
add_synth_arguments(parser)
sys.exit(synth_main(parser.parse_args()))
