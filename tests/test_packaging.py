"""An installed ctr works outside a source checkout: its configs ship as package data."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_carries_the_configs(tmp_path):
    wheel_dir, target, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "src"
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    shutil.copytree(ROOT / "ctr", src / "ctr", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir),
                            str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("ctr-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    code = ("import ctr, sys; from ctr.train.config import load_config, CONFIG_DIR; "
            "from ctr.sweep.spec import SweepSpec; "
            "assert ctr.__file__.startswith(sys.argv[1]), ctr.__file__; "
            "cfg = load_config('dcn', 'avazu', overrides={'batch': '128k'}); "
            "assert cfg.resolved_hparams().l2 == 96e-5; SweepSpec.from_preset('quick'); print(CONFIG_DIR)")
    run = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith(str(target))
