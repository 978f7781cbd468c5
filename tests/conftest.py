"""Shared fixtures: a small synthetic dataset made once per test session, and the test device.

``CTR_TEST_DEVICE=cuda pytest -m device`` runs the step / optimizer / model tests that can run
on any device (marked ``@pytest.mark.device``; they use :data:`DEVICE` or the ``device``
fixture) on a GPU; the default is ``cpu``. ``tools/gpu_check.sh`` does that on a GPU machine.
"""

import os
from pathlib import Path

import pytest
import torch

from ctr import allocator

# The processes the tests start (ctr-train, torchrun workers, sweep cells) run under ctr's
# allocator set-up from their first instruction, as `make test` runs pytest itself.
os.environ.update(allocator.plan().changes)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Where the device-independent tests put their tensors and models.
DEVICE = torch.device(os.environ.get("CTR_TEST_DEVICE", "cpu"))


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on CTR_TEST_DEVICE (default cpu); "
                            "`CTR_TEST_DEVICE=cuda pytest -m device` runs these on a GPU")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("CTR_TEST_DEVICE=cuda, but torch sees no GPU")


@pytest.fixture
def device() -> torch.device:
    """The device of the device-independent tests (``CTR_TEST_DEVICE``, default cpu)."""
    return DEVICE


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """12k rows of the built-in synthetic generator: tables of tens to thousands of rows."""
    from ctr.data.synth import generate_dataset
    path = tmp_path_factory.mktemp("data") / "synthetic-12k"
    generate_dataset(path, 12_000, seed=0, progress=False)
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
