"""Synthetic Criteo: the project's built-in default data, of any size, deterministic by seed.

Rows look like the Criteo Kaggle display-advertising log (a label, 13 heavy-tailed integer
features ``I1..I13``, 26 categorical fields ``C1..C26`` with Criteo's missing rates and
cardinalities), and their labels come from a *planted* model, so the true click probability
of every row, and with it the best AUC any model can reach, is known. One row generator
feeds two outputs, which for the same ``(rows, seed)`` hold the same rows in the same order:

- :mod:`~ctr.data.synth.model`: :class:`PlantedModel` (feature laws, id supports, the label
  model; its docstring states them), :class:`SynthConfig`, Criteo's cardinalities, the Zipf
  sampler;
- :mod:`~ctr.data.synth.tsv`: :func:`write_raw_criteo_tsv`, a raw Criteo TSV, to exercise
  ``ctr-preprocess``, and :func:`write_raw_criteo_days`, the same rows as Criteo-1TB-style
  ``day_N`` files;
- :mod:`~ctr.data.synth.dataset`: :func:`generate_dataset`, straight to a processed dataset
  (:mod:`ctr.data.dataset`) encoded as ``ctr-preprocess`` would, plus the true probability
  (column ``oracle_p``) and the test split's oracle AUC in ``meta.json``;
- :mod:`~ctr.data.synth.demo`: :func:`ensure_demo_dataset`, the cached built-in dataset;
- :mod:`~ctr.data.synth.cli`: ``ctr-preprocess synth`` (also ``python -m ctr.data.synth``).

Example::

    from ctr.data.synth import generate_dataset, write_raw_criteo_tsv, ensure_demo_dataset
    meta = generate_dataset("data/synth-10m", 10_000_000, seed=1)
    print(meta["oracle"]["test_auc"])
    write_raw_criteo_tsv("data/synth.tsv", 1_000_000, seed=0)   # then: ctr-preprocess data/synth.tsv
    path = ensure_demo_dataset()                                  # data/synthetic-demo, made once

From the command line: ``ctr-preprocess synth --rows 10m --out data/synth-10m``.
"""

from ctr.data.synth.cli import add_synth_arguments, parse_rows, synth_main
from ctr.data.synth.dataset import ORACLE_COLUMN, generate_dataset, oracle_metrics, split_spec
from ctr.data.synth.demo import DEMO_ROWS, data_root, ensure_demo_dataset, resolve_dataset, synthetic_dir
from ctr.data.synth.model import (CHUNK_ROWS, CRITEO_CARDINALITY, CRITEO_ROWS, GENERATOR_VERSION,
                                  Chunk, PlantedModel, SynthConfig, ZipfSampler, check_rows,
                                  make_config, support_sizes)
from ctr.data.synth.tsv import (day_file_names, day_sizes, scramble_ids, tsv_parts,
                                write_raw_criteo_days, write_raw_criteo_tsv)

__all__ = [
    "CHUNK_ROWS", "CRITEO_CARDINALITY", "CRITEO_ROWS", "DEMO_ROWS",
    "GENERATOR_VERSION", "ORACLE_COLUMN", "Chunk", "PlantedModel", "SynthConfig", "ZipfSampler",
    "add_synth_arguments", "check_rows", "data_root", "ensure_demo_dataset", "resolve_dataset", "synthetic_dir", "generate_dataset",
    "make_config", "oracle_metrics", "parse_rows", "scramble_ids", "split_spec",
    "support_sizes", "synth_main", "tsv_parts", "write_raw_criteo_tsv",
    "day_file_names", "day_sizes", "write_raw_criteo_days",
]
