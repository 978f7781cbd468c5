"""Every Criteo rule of raw-input detection, and the I<n>/C<n> layout of any other header.

Criteo's logs have no header: a line's field count names its layout. Kaggle ``train.txt``
and the 1TB ``day_N`` files are TAB-separated, 40 fields (label, I1..I13, C1..C26);
``test.txt`` has 39 (no label); the Kaggle CSV has 41 with a leading ``Id`` column. A 41-field
line can also be the 40 fields plus a trailing TAB: when on every sampled line the first
field is a 0/1 label (an ``Id`` column holds distinct ids) and on most the last is empty, the
file is read as Criteo with one extra column :data:`TRAILING` that must stay empty. Under a
header, ``I<n>`` columns are dense and the rest categorical; exactly Criteo's 39 makes the
dataset ``criteo``, anything else ``custom``. TAB with Criteo's columns is format ``criteo``
(``criteo-test`` without a label), every other such layout ``csv``. The field names
themselves are defined once, in :mod:`ctr.data.dataset` (``CRITEO_DENSE``, ``CRITEO_SPARSE``).

This module is one entry of :data:`ctr.data.raw.formats.RULES`; see there for its hooks.

Example::

    headerless_names(40, lines, "\\t")     # (["label", "I1", ..., "C26"], False)
    layout(["I1", "I2", "C1"])             # {"dense": ["I1", "I2"], "sparse": ["C1"], "dataset": "custom"}
"""

from __future__ import annotations

import re
from typing import Any

from ctr.data.dataset import CRITEO_DENSE, CRITEO_SPARSE

DATASET_NAMES = ("criteo", "custom")     # RawFormat.dataset values these rules own
# --format NAME -> whether it accepts what was detected (format name, layout)
FORMATS = {
    "criteo": lambda name, lay: lay["dataset"] in ("criteo", "custom") and lay["label"] is not None,
    "criteo-test": lambda name, lay: lay["dataset"] in ("criteo", "custom") and lay["label"] is None,
    "csv": lambda name, lay: lay["dataset"] in ("criteo", "custom"),
}
LABEL_NAMES = ("label",)
ID_NAMES = ("id",)                        # the Kaggle CSV's leading Id column
HEADER_WORDS = frozenset({"label", "id", "i1", "c1"})
HEADERLESS = "Criteo 39/40/41"            # the field counts named in the unknown-layout error

COLUMNS = ["label"] + CRITEO_DENSE + CRITEO_SPARSE     # train.txt, day_N: 40 fields
TEST_COLUMNS = CRITEO_DENSE + CRITEO_SPARSE            # test.txt: 39
ID_COLUMNS = ["Id", "label"] + CRITEO_DENSE + CRITEO_SPARSE   # Kaggle CSV: 41
TRAILING = "_trailing_empty_field"
_DENSE_NAME = re.compile(r"^I\d+$")


def headerless_names(n: int, lines: list[str], delim: str) -> tuple[list[str], bool] | None:
    """(column names, trailing empty field) of a headerless file with ``n`` fields a line."""
    if n == 41 and ends_with_empty_field(lines, delim):
        return COLUMNS + [TRAILING], True
    names = {40: COLUMNS, 39: TEST_COLUMNS, 41: ID_COLUMNS}.get(n)
    return (list(names), False) if names is not None else None


def ends_with_empty_field(lines: list[str], delim: str) -> bool:
    """41 fields that are Criteo's 40 plus a trailing delimiter, not the ``Id, label, ...``
    layout: on every sampled line the first field is a 0/1 label (an ``Id`` column holds
    distinct ids), and on most the last field is empty (the rest become bad rows)."""
    rows = [p for p in (ln.rstrip("\r").split(delim) for ln in lines) if len(p) == 41]
    return (bool(rows) and all(p[0] in ("0", "1") for p in rows)
            and sum(p[-1] == "" for p in rows) > len(rows) / 2)


def layout(rest: list[str]) -> dict[str, Any]:
    """Dense / sparse fields and dataset of feature columns ``rest`` (label and id removed):
    ``I<n>`` dense, the rest categorical. Takes any layout, so it is asked last."""
    dense = [n for n in rest if _DENSE_NAME.match(n)]
    sparse = [n for n in rest if n not in dense]
    dataset = "criteo" if (dense == CRITEO_DENSE and sparse == CRITEO_SPARSE) else "custom"
    return dict(dense=dense, sparse=sparse, dataset=dataset)


def format_name(lay: dict[str, Any], delim: str, names: list[str]) -> str:
    """``criteo`` / ``criteo-test`` for Criteo's columns TAB-separated, else ``csv``."""
    if lay["dataset"] == "criteo" and delim == "\t":
        return "criteo" if lay["label"] is not None else "criteo-test"
    return "csv"
