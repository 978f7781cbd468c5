"""--numerics portable: the libraries' ISA switches reach the run (and its torchrun workers)
and are recorded; a variable the user set is kept; the sweep passes its preset's choice."""

import json
import os
import subprocess
import sys

import pytest

from ctr import numerics
from ctr.sweep.spec import SweepSpec

ENV_KEYS = (*numerics.PORTABLE_ENV, "CTR_NUMERICS")


@pytest.fixture
def clean_env(monkeypatch):
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_apply_sets_the_switches_and_keeps_the_users(clean_env):
    clean_env.setenv("MKL_CBWR", "COMPATIBLE")
    numerics.apply("portable")
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"                  # the user's own value stays
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2"
    assert os.environ["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2"
    d = numerics.describe()
    assert d["mode"] == "portable" and d["env"]["MKL_CBWR"] == "COMPATIBLE" and d["threads"] >= 1
    with pytest.raises(ValueError, match="numerics must be one of"):
        numerics.apply("fast")


def test_native_changes_nothing(clean_env):
    numerics.apply("native")
    assert not any(k in os.environ for k in numerics.PORTABLE_ENV)
    assert numerics.describe()["mode"] == "native"


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctr_train_records_portable_numerics(small_dataset, tmp_path, nproc):
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    p = subprocess.run([sys.executable, "-m", "ctr.cli.train", "--model", "deepfm", "--batch", "1k",
                        "--data", str(small_dataset), "--max-steps", "2", "--mlp", "16",
                        "--numerics", "portable", "--nproc", str(nproc), "--out", str(tmp_path / "r"),
                        "--quiet"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["numerics"]["mode"] == "portable"                      # rank 0, a worker under --nproc 2
    assert s["numerics"]["env"] == numerics.PORTABLE_ENV
    assert s["numerics"]["cpu_capability"] in ("AVX2", "DEFAULT")   # never wider than pinned
    assert json.loads((tmp_path / "r" / "config.json").read_text())["numerics"] == "portable"


def test_sweep_cells_default_to_portable():
    assert SweepSpec().normalised().numerics == "portable"
    with pytest.raises(ValueError, match="numerics"):
        SweepSpec(numerics="fast").normalised()
