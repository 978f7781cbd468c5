"""The device and sharding choices, in a module light enough for ``--help`` (no torch, no TorchRec)."""

DEVICES = ("auto", "cpu", "cuda")
# Column-wise sharding is not offered: CowClip needs whole rows on one rank.
SHARDINGS = ("auto", "data_parallel", "table_wise", "row_wise")
