"""Raw click logs: format detection and a streaming block reader.

Supported inputs (each possibly gzip-compressed, detected by its magic bytes):

============  =====================================================================
format        layout
============  =====================================================================
criteo        Criteo Kaggle ``train.txt`` / 1TB ``day_N``: TAB, 40 fields
              (label, I1..I13, C1..C26), no header
criteo-test   Criteo Kaggle ``test.txt``: 39 fields, no label
csv           Criteo layout as CSV: comma, header or not, optional leading ``Id``
              column (41 fields), integers possibly written as floats (``260.0``);
              any other header: ``I<n>`` columns dense, the rest categorical
avazu         Avazu ``train.csv``: 24 columns ``id,click,hour,...`` with or without
              header (23 without ``click``: unlabelled); ``id`` dropped, ``hour``
              ``YYMMDDHH`` one categorical field as the reference keeps it (22 fields;
              ``avazu_hour="split"``: hour of day plus a derived ``weekday`` field)
avazu-x       Avazu 21-column variant (no ``id``, no ``device_ip``, ``hour`` already
              ``HH``); labels from a separate one-column file (``labels=``)
parquet       Parquet with raw columns (label, I1..I13, C1..C26; strings or integers)
============  =====================================================================

:func:`detect_format` sniffs the first lines; :class:`RawReader` then yields
:class:`RawBlock` s: ~64 MB of input cut at line boundaries (so each block's first line
number is known exactly), parsed by ``pyarrow.csv`` into a label vector, a float64 dense
matrix (NaN = missing) and one Arrow binary array per categorical field.

Bad rows (wrong field count, non-numeric integer field, label not 0/1, a dense value that
is not a finite float32: ``inf``, ``nan``, ``1e400``) raise :class:`RawInputError` naming the
file, the 1-based line number and the problem, or with ``skip_bad_rows=True`` are dropped and
reported in :attr:`RawBlock.bad`. Missing is an empty field (or another of pyarrow's null
tokens such as ``NA``, ``NULL``; in Parquet also a float NaN). A block that fails to parse is
re-parsed by bisection to find its bad lines, so the fast path has no per-line Python work.
Lines of any length up to :data:`~ctr.data.raw.files.MAX_LINE_BYTES` work. Criteo lines
ending with one extra, empty field (a trailing TAB: 41 fields, the first a 0/1 label on every
sampled line, the last empty on most) are read as Criteo; a line with something in that last
field is a bad row.

One concern per module:

============  =====================================================================
files         bytes: magic bytes, plain/gzip reading, blocks cut at line ends, the
              gzip / directory / missing-file errors, :class:`RawInputError`
formats       the registry (:data:`FORMATS`, the dataset rules in order), sniffing
              (:func:`detect_format`), :class:`RawFormat`, :class:`RawReader`
criteo        every Criteo rule: 40/39/41 fields, the trailing-TAB layout, ``Id``,
              ``I<n>`` dense names, format names criteo / criteo-test / csv
avazu         every Avazu rule: 24/23/21 columns, the header, ``hour`` raw | split
labels        a separate labels file, read in step with the features (avazu-x)
rows          :class:`RawBlock`, the value rules shared by text and Parquet, the
              mostly-bad-rows stop (:func:`check_bad_share`)
text          text parsing into Arrow, bad-line bisection and diagnosis
parquet       raw Parquet input
============  =====================================================================

Example::

    fmt = detect_format("train.txt.gz")              # RawFormat(name="criteo", ...)
    for block in RawReader(fmt).blocks():
        block.label, block.dense, block.sparse["C1"]
"""

from ctr.data.raw.avazu import AVAZU_COLUMNS, AVAZU_HOUR, AVAZU_X_COLUMNS, WEEKDAY
from ctr.data.raw.files import BLOCK_BYTES, RawInputError
from ctr.data.raw.formats import FORMATS, RawFormat, RawReader, detect_format
from ctr.data.raw.rows import BAD_SHARE_LIMIT, BAD_SHARE_MIN_ROWS, RawBlock, check_bad_share

__all__ = [
    "AVAZU_COLUMNS", "AVAZU_HOUR", "AVAZU_X_COLUMNS", "BAD_SHARE_LIMIT", "BAD_SHARE_MIN_ROWS",
    "BLOCK_BYTES", "FORMATS", "WEEKDAY", "RawBlock", "RawFormat", "RawInputError", "RawReader",
    "check_bad_share", "detect_format",
]
