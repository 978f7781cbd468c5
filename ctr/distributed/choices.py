"""The device, sharding and embedding backend choices, in a module light enough for ``--help``
(no torch, no TorchRec)."""

DEVICES = ("auto", "cpu", "cuda")
# Column-wise sharding is not offered: CowClip needs whole rows on one rank.
SHARDINGS = ("auto", "data_parallel", "table_wise", "row_wise")
# torchrec: TorchRec EBCs sharded by DistributedModelParallel (every sharding type); torch:
# plain-PyTorch fused tables, replicated (data-parallel). auto: torchrec where it imports.
EMBEDDING_BACKENDS = ("auto", "torchrec", "torch")
# The shardings the torch backend supports: its tables are replicated on every rank.
TORCH_BACKEND_SHARDINGS = ("auto", "data_parallel")


def torchrec_importable() -> bool:
    """Whether TorchRec and FBGEMM import here (imports them: only for resolving ``auto``)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, hidden, or a broken build: not usable
        return False
    return True


def resolve_embedding_backend(choice: str) -> str:
    """``auto`` -> ``torchrec`` where TorchRec imports, else ``torch``; a concrete one as is
    (``torchrec`` where it does not import: ``RuntimeError``)."""
    if choice not in EMBEDDING_BACKENDS:
        raise ValueError(f"--embedding-backend must be one of {EMBEDDING_BACKENDS}, not {choice!r}")
    if choice == "auto":
        return "torchrec" if torchrec_importable() else "torch"
    if choice == "torchrec" and not torchrec_importable():
        raise RuntimeError("--embedding-backend torchrec asked for, but torchrec / fbgemm_gpu do not "
                           "import here; use --embedding-backend torch")
    return choice


def check_backend_sharding(backend: str, sharding: str) -> None:
    """``ValueError`` unless ``sharding`` is one the (concrete) ``backend`` can do."""
    if backend == "torch" and sharding not in TORCH_BACKEND_SHARDINGS:
        raise ValueError(f"--sharding {sharding} needs --embedding-backend torchrec: the torch backend "
                         f"replicates every table on every rank (--sharding auto or data_parallel)")
