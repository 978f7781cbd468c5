"""Every Avazu rule of raw-input detection and reading.

Avazu's ``train.csv`` has 24 columns ``id,click,hour,C1,banner_pos,...,C21`` (23 without
``click``: unlabelled), with or without a header; a header is recognised as Avazu by its
``hour``, ``site_id`` and ``app_id`` columns. ``id`` is dropped and every other column is
categorical (no dense fields). The 21-column variant ``avazu-x`` (no ``id``, no
``device_ip``, ``hour`` already cut to ``HH``) takes its labels from a separate file
(:mod:`ctr.data.raw.labels`). ``hour`` is ``YYMMDDHH``: ``avazu_hour="raw"`` keeps it as one
categorical field, as LargeBatchCTR's ``data_utils.py`` label-encodes it (22 fields);
``"split"`` cuts it to hour of day and adds a :data:`WEEKDAY` field, when the sampled values
are all ``YYMMDDHH``.

This module is one entry of :data:`ctr.data.raw.formats.RULES`; see there for its hooks.

Example::

    fm = detect_format("train.csv", avazu_hour="split")    # fm.sparse[-1] == "weekday"
    hours, days = split_hour(pa.array([b"14102100"]))       # [b"00"], [b"1"] (a Tuesday)
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from ctr.data.encoding import _as_binary

if TYPE_CHECKING:
    from ctr.data.raw.formats import RawFormat

DATASET_NAMES = ("avazu",)                # RawFormat.dataset values these rules own
# --format NAME -> whether it accepts what was detected (format name, layout)
FORMATS = {
    "avazu": lambda name, lay: name == "avazu",
    "avazu-x": lambda name, lay: name == "avazu-x",
}
LABEL_NAMES = ("click",)
ID_NAMES = ("id",)
HEADER_WORDS = frozenset({"click", "id", "hour"})
HEADERLESS = "Avazu 21/23/24"             # the field counts named in the unknown-layout error

AVAZU_COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain",
                 "site_category", "app_id", "app_domain", "app_category", "device_id",
                 "device_ip", "device_model", "device_type", "device_conn_type",
                 "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
AVAZU_X_COLUMNS = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "device_ip")]
# Avazu's YYMMDDHH hour: "raw" keeps the value as one field (LargeBatchCTR's data_utils.py
# label-encodes it as is); "split" makes it hour of day plus a weekday field.
AVAZU_HOUR = ("raw", "split")
WEEKDAY = "weekday"


def headerless_names(n: int, lines: list[str], delim: str) -> tuple[list[str], bool] | None:
    """(column names, trailing empty field) of a headerless file with ``n`` fields a line."""
    names = {24: AVAZU_COLUMNS, 23: [c for c in AVAZU_COLUMNS if c != "click"],
             21: AVAZU_X_COLUMNS}.get(n)
    return (list(names), False) if names is not None else None


def layout(rest: list[str]) -> dict[str, Any] | None:
    """Avazu's fields (all categorical) if feature columns ``rest`` are Avazu's, else None."""
    if "hour" in rest and "site_id" in rest and "app_id" in rest:
        return dict(dense=[], sparse=list(rest), dataset="avazu")
    return None


def format_name(lay: dict[str, Any], delim: str, names: list[str]) -> str:
    """``avazu-x`` without ``id`` and ``device_ip``, else ``avazu``."""
    return "avazu-x" if ("id" not in names and "device_ip" not in names) else "avazu"


def check_hour_option(avazu_hour: str) -> None:
    if avazu_hour not in AVAZU_HOUR:
        raise ValueError(f"unknown avazu_hour {avazu_hour!r}; choose one of {AVAZU_HOUR}")


def apply_hour_option(fm: RawFormat, avazu_hour: str,
                      sample: Callable[[str], list[str]]) -> None:
    """``avazu_hour="split"`` on an Avazu input whose sampled ``hour`` values (``sample``:
    column -> the first values, stripped) are all ``YYMMDDHH``: split it, add WEEKDAY."""
    if fm.dataset != "avazu" or avazu_hour != "split":
        return
    values = sample("hour")
    fm.avazu_hour = bool(values) and all(len(v) == 8 and v.isdigit() for v in values)
    if fm.avazu_hour:
        fm.sparse.append(WEEKDAY)


# --------------------------------------------------------------------------- RawFormat hooks


def derived_fields(fm: RawFormat) -> list[str]:
    """Output fields made by :func:`derive` rather than read from the file."""
    return [WEEKDAY] if fm.avazu_hour else []


def derive(fm: RawFormat, sparse: dict[str, pa.Array]) -> None:
    """A block's categoricals as read -> as output (split hours: ``HH`` plus weekday)."""
    if fm.avazu_hour:
        sparse["hour"], sparse[WEEKDAY] = split_hour(sparse["hour"])


def describe(fm: RawFormat) -> dict[str, Any]:
    """This input's entry in ``meta.json``'s sources, beyond the generic keys."""
    return {"avazu_hour": "split" if fm.avazu_hour else "raw"}


def split_hour(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``YYMMDDHH`` -> (``HH``, weekday ``0``..``6`` Monday=0), on the distinct values only."""
    enc = pc.dictionary_encode(_as_binary(arr), null_encoding="encode")
    hours, days = [], []
    for v in enc.dictionary.to_pylist():
        s = (v or b"").strip()
        if len(s) == 8 and s.isdigit():
            hours.append(s[6:8])
            try:
                wd = datetime.date(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6])).weekday()
                days.append(str(wd).encode())
            except ValueError:
                days.append(b"")
        else:
            hours.append(s)
            days.append(b"")
    idx = enc.indices
    return (pa.array(hours, pa.binary()).take(idx), pa.array(days, pa.binary()).take(idx))
