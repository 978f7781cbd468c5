"""Shared fixtures: a small synthetic dataset made once per test session."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
