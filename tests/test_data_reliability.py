"""Data-path reliability: --overwrite never deletes what is not a dataset (nor an input),
non-finite dense values, readable errors for broken inputs and datasets, misread layouts,
and temporaries left by killed runs (faults injected at named points, no timing races)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctr.cli.preprocess import main as cli_main
from ctr.data.dataset import (CRITEO_DENSE, CRITEO_SPARSE, DatasetError, DatasetWriter,
                              UnsafeOutputError, read_meta, remove_stale_temps)
from ctr.data.raw import RawInputError, detect_format
from ctr.data.raw import files as readers  # BLOCK_BYTES, MAX_LINE_BYTES
from ctr.data.transforms import DenseStats, apply_dense_transform
from ctr.faults import fault_point
from tests.test_preprocess import criteo_rows, read_split, run, write_text

REPO = Path(__file__).resolve().parents[1]


def _cli(capsys, *args) -> tuple[int, str]:
    rc = cli_main([str(a) for a in args] + ["--quiet"])
    return rc, capsys.readouterr().err


def _lines(rows, end: str = "") -> str:
    return "".join("\t".join(r) + end + "\n" for r in rows)


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_directory_holding_the_input(tmp_path, capsys):
    raw = tmp_path / "rawdir"
    raw.mkdir()
    f = write_text(raw / "train.txt", criteo_rows(50))
    before = f.read_bytes()
    link = tmp_path / "link"
    link.symlink_to(raw)
    for out in (raw, f, link):
        rc, err = _cli(capsys, f, "--out", out, "--overwrite")
        assert rc == 2 and "Traceback" not in err
        assert f"{out}: the output directory" in err and "would destroy it" in err
    assert f.read_bytes() == before and sorted(p.name for p in raw.iterdir()) == ["train.txt"]
    # a --labels file is protected the same way
    ds = tmp_path / "ds"
    run([f], ds)
    (ds / "y.csv").write_text("0\n")
    with pytest.raises(UnsafeOutputError, match="holds the input"):
        DatasetWriter(ds, overwrite=True, protect=[f, ds / "y.csv"])
    assert (ds / "y.csv").exists()


@pytest.mark.parametrize("case", ["user-dir", "extra-file", "extra-in-split", "no-schema",
                                  "plain-file", "symlink"])
def test_overwrite_refuses_what_is_not_a_dataset(tmp_path, capsys, case):
    f = write_text(tmp_path / "train.txt", criteo_rows(50))
    out = tmp_path / "out"
    run([f], out)
    victim = {"user-dir": out / "notes.txt", "extra-file": out / "notes.txt",
              "extra-in-split": out / "train" / "notes.txt", "no-schema": out / "meta.json",
              "plain-file": out, "symlink": out}[case]
    if case == "user-dir":
        import shutil
        shutil.rmtree(out)
        out.mkdir()
        (out / "photos").mkdir()
    if case == "no-schema":
        meta = json.loads(victim.read_text())
        del meta["schema_version"]
        victim.write_text(json.dumps(meta))
    elif case == "plain-file":
        import shutil
        shutil.rmtree(out)
        out.write_text("mine")
    elif case == "symlink":
        out.rename(tmp_path / "real")
        out.symlink_to(tmp_path / "real")
    else:
        victim.write_text("mine")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc, err = _cli(capsys, f, "--out", out, "--overwrite")
    assert rc == 2 and "Traceback" not in err and "--overwrite replaces only a dataset" in err
    named = {"user-dir": "photos", "extra-file": "notes.txt", "extra-in-split": "notes.txt",
             "no-schema": "schema_version", "plain-file": "not a directory",
             "symlink": "symbolic link"}[case]
    assert named in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_overwrite_replaces_dataset_and_empty_directory(tmp_path, capsys):
    f = write_text(tmp_path / "train.txt", criteo_rows(50))
    out = tmp_path / "out"
    out.mkdir()
    assert _cli(capsys, f, "--out", out, "--overwrite")[0] == 0
    assert _cli(capsys, f, "--out", out, "--overwrite", "--seed", "4")[0] == 0
    assert read_meta(out)["seed"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --------------------------------------------------------------------------- dense values


@pytest.mark.parametrize("value,why", [(v, "not a finite number") for v in
                                       ("inf", "-inf", "1e400", "nan", "NaN", "Infinity")]
                         + [("1e39", "too large for float32")])
def test_non_finite_dense_value_is_a_bad_row(tmp_path, capsys, value, why):
    rows = criteo_rows(300, seed=20)
    rows[17][5] = value                                     # I5 of line 18
    f = tmp_path / "train.txt"
    f.write_text(_lines(rows))
    problem = f"line 18: integer field I5 is {why}: {value!r}"
    with pytest.raises(RawInputError, match=re.escape(problem)):
        run([f], tmp_path / "out")
    rc, err = _cli(capsys, f, "--out", tmp_path / "out")
    assert rc == 2 and f"{f}: {problem}" in err and "--skip-bad-rows" in err
    meta = run([f], tmp_path / "out", skip_bad_rows=True, split="sequential:1")
    assert meta["bad_rows"]["count"] == 1 and meta["bad_rows"]["first_lines"] == [18]
    finite = [float(r[5]) for i, r in enumerate(rows) if r[5] and i != 17]
    params = meta["dense_transform"]["params"]["I5"]
    assert params["max"] == max(finite) and params["min"] == min(finite)
    col = read_split(tmp_path / "out", "train")["I5"].to_numpy()
    assert np.isfinite(col).all() and (col == 1.0).sum() == finite.count(max(finite))


def test_missing_tokens_stay_missing(tmp_path):
    rows = criteo_rows(50, seed=21)
    rows[3][2], rows[4][2], rows[5][2] = "", "NA", "NULL"
    f = tmp_path / "train.txt"
    f.write_text(_lines(rows))
    meta = run([f], tmp_path / "out", dense="none", split="sequential:1")
    assert meta["bad_rows"]["count"] == 0
    assert read_split(tmp_path / "out", "train")["I2"].iloc[3:6].tolist() == [0, 0, 0]


def test_non_finite_dense_in_parquet(tmp_path):
    n = 40
    cols = {"label": pa.array([0, 1] * (n // 2))}
    for c in CRITEO_DENSE:
        cols[c] = pa.array(np.arange(n, dtype=np.float64))
    cols["I2"] = pa.array([np.inf if i == 7 else np.nan if i == 8 else 1.0 for i in range(n)])
    cols["I3"] = pa.array(["nan" if i == 9 else "2" for i in range(n)])
    for c in CRITEO_SPARSE:
        cols[c] = pa.array(["a"] * n)
    f = tmp_path / "raw.parquet"
    pq.write_table(pa.table(cols), f)
    with pytest.raises(RawInputError, match="row 8: integer field I2 is not a finite number: 'inf"):
        run([f], tmp_path / "out")
    meta = run([f], tmp_path / "out", skip_bad_rows=True)
    assert meta["bad_rows"]["first_lines"] == [8, 10]        # float NaN (row 9) is missing
    problem = meta["bad_rows"]["first"][1]["problem"]
    assert problem == "integer field I3 is not a finite number: 'nan'"
    assert meta["dense_transform"]["params"]["I2"] == {"missing": 1, "min": 1.0, "max": 1.0}


def test_transforms_refuse_infinity_and_log1p_is_odd():
    x = np.array([[-3.0, np.nan], [0.0, 2.0]])
    y = apply_dense_transform(x, "log1p", {}, ["a", "b"])
    assert np.allclose(y, [[-np.log1p(3.0), 0.0], [0.0, np.log1p(2.0)]])
    bad = np.array([[1.0, np.inf]])
    for kind in ("minmax", "log1p", "none"):
        params = {"a": {"min": 0.0, "max": 1.0}, "b": {"min": 0.0, "max": 1.0}}
        with pytest.raises(ValueError, match="finite"):
            apply_dense_transform(bad, kind, params, ["a", "b"])
    with pytest.raises(ValueError, match="float32"):
        apply_dense_transform(np.array([[1e39]]), "none", {}, ["a"])
    with pytest.raises(ValueError, match="finite"):
        DenseStats(["a", "b"]).update(bad)


# --------------------------------------------------------------------------- readable errors


def test_gzip_magic_with_garbage_and_directory_input(tmp_path, capsys):
    g = tmp_path / "day_0.gz"
    g.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    with pytest.raises(RawInputError, match=r"day_0\.gz: starts like gzip but is not valid gzip"):
        detect_format(g)
    rc, err = _cli(capsys, g, "--out", tmp_path / "out")
    assert rc == 2 and "not valid gzip" in err and "empty" not in err
    d = tmp_path / "rawdir"
    d.mkdir()
    rc, err = _cli(capsys, d, "--out", tmp_path / "out")
    assert rc == 2 and f"{d}: is a directory" in err and "no such file" not in err
    f = write_text(tmp_path / "X.txt", criteo_rows(5, label=False))
    with pytest.raises(RawInputError, match=r"rawdir: is a directory; give the labels file"):
        detect_format(f, labels=d)
    assert not (tmp_path / "out").exists()


def test_truncated_dataset_parquet_is_a_dataset_error(tmp_path):
    from ctr.data.loader import SplitTensors
    f = write_text(tmp_path / "train.txt", criteo_rows(200))
    run([f], tmp_path / "ds")
    part = tmp_path / "ds" / "train" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"part-00000\.parquet: cannot read this Parquet file"):
        SplitTensors.load(tmp_path / "ds", "train")


def _break(meta: dict, case: str) -> str:
    """Damages ``meta`` one way; returns what the error must name."""
    if case == "vocab-missing":
        del meta["vocab_sizes"]["C7"]
        return "'vocab_sizes' has no entry for sparse field(s) ['C7']"
    if case == "vocab-extra":
        meta["vocab_sizes"]["C99"] = 3
        return "C99"
    if case == "vocab-zero":
        meta["vocab_sizes"]["C2"] = 0
        return "'vocab_sizes'['C2'] must be a positive integer"
    if case == "vocab-str":
        meta["vocab_sizes"]["C2"] = "12"
        return "'vocab_sizes'['C2']"
    if case == "vocab-list":
        meta["vocab_sizes"] = [1, 2]
        return "'vocab_sizes' must be an object"
    if case == "sparse-not-list":
        meta["sparse_fields"] = "C1"
        return "'sparse_fields' must be a list"
    if case == "dense-ints":
        meta["dense_fields"] = [1, 2]
        return "'dense_fields' must be a list"
    if case == "splits-list":
        meta["splits"] = ["train"]
        return "'splits' must be a non-empty object"
    if case == "split-no-rows":
        del meta["splits"]["train"]["rows"]
        return "'splits'['train']['rows']"
    if case == "split-files":
        meta["splits"]["test"]["files"] = "part-00000.parquet"
        return "'splits'['test']['files']"
    if case == "alias":
        meta["split_aliases"] = {"valid": "nope"}
        return "'split_aliases'"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["vocab-missing", "vocab-extra", "vocab-zero", "vocab-str",
                                  "vocab-list", "sparse-not-list", "dense-ints", "splits-list",
                                  "split-no-rows", "split-files", "alias"])
def test_read_meta_checks_structure(tmp_path, case):
    f = write_text(tmp_path / "train.txt", criteo_rows(30))
    ds = tmp_path / "ds"
    run([f], ds)
    path = ds / "meta.json"
    meta = json.loads(path.read_text())
    named = _break(meta, case)
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as e:
        read_meta(ds)
    assert str(e.value).startswith(f"{path}: ") and named in str(e.value)
    path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="JSON object"):
        read_meta(ds)


def test_line_longer_than_parse_block_and_block(tmp_path, monkeypatch):
    rows = criteo_rows(30, seed=22)
    rows[5][20] = "ab" * (3 << 19)                          # a 3 MB categorical on line 6
    f = tmp_path / "train.txt"
    f.write_text(_lines(rows))
    for block in (readers.BLOCK_BYTES, 1 << 20):             # a block longer, then shorter
        meta = run([f], tmp_path / f"out{block}", block_bytes=block, split="sequential:1")
        assert meta["rows_total"] == 30 and meta["bad_rows"]["count"] == 0
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 2 << 20)
    with pytest.raises(RawInputError, match=r"train\.txt: line 6: longer than 2 MiB"):
        run([f], tmp_path / "out", block_bytes=1 << 20)


# --------------------------------------------------------------------------- layouts


def test_trailing_tab_is_criteo_with_an_empty_last_field(tmp_path, capsys):
    rows = criteo_rows(300, seed=23)
    plain = write_text(tmp_path / "plain.txt", rows)
    f = tmp_path / "train.txt"
    f.write_text(_lines(rows, end="\t"))
    fm = detect_format(f)
    assert fm.name == "criteo" and fm.label == "label" and fm.dense == CRITEO_DENSE
    assert fm.sparse == CRITEO_SPARSE and fm.trailing_empty
    meta = run([f], tmp_path / "out", skip_bad_rows=True)
    assert meta["rows_total"] == 300 and meta["bad_rows"]["count"] == 0
    assert meta["sources"][0]["trailing_empty_field"] is True
    run([plain], tmp_path / "ref")
    for split in ("train", "test"):
        assert read_split(tmp_path / "out", split).equals(read_split(tmp_path / "ref", split))
    lines = f.read_text().splitlines(keepends=True)
    lines[9] = lines[9].rstrip("\n") + "x\n"                # line 10: something after the TAB
    f.write_text("".join(lines))
    with pytest.raises(RawInputError, match=r"line 10: has a value after the last field \('x'\)"):
        run([f], tmp_path / "out2")
    # the Id layout (41 fields, distinct ids first) is still the Id layout
    idf = write_text(tmp_path / "id.txt", [[str(10_000 + i)] + r for i, r in enumerate(rows)])
    fm = detect_format(idf)
    assert fm.columns[0] == "Id" and not fm.trailing_empty and fm.label == "label"


def test_mostly_bad_rows_stop_even_with_skip(tmp_path, capsys):
    rows = criteo_rows(300, seed=24, label=False)            # test.txt layout ...
    f = tmp_path / "test.txt"
    f.write_text(_lines(rows, end="\t"))                    # ... with a trailing TAB: 40 fields
    with pytest.raises(RawInputError, match=r"rows read are bad.*layout looks wrong") as e:
        run([f], tmp_path / "out", skip_bad_rows=True)
    assert not e.value.skippable
    rc, err = _cli(capsys, f, "--out", tmp_path / "out", "--skip-bad-rows")
    assert rc == 2 and "layout looks wrong" in err and "(first: line " in err
    assert not (tmp_path / "out").exists()
    # over many blocks: it stops at the first check, long before the end
    lines = ["\t".join(r[:-2]) if i % 4 and i >= 20 else "\t".join(r)
             for i, r in enumerate(criteo_rows(3000, seed=25))]
    g = tmp_path / "day_0"
    g.write_text("\n".join(lines) + "\n")
    with pytest.raises(RawInputError, match=r"day_0: \d+ of the \d+ rows read are bad"):
        run([g], tmp_path / "out", skip_bad_rows=True, block_bytes=8192)


# --------------------------------------------------------------------------- temporaries & kills


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _preprocess_proc(args, fault: str | None = None, sig: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("CTR_FAULT_AT", None)
    if fault:
        env["CTR_FAULT_AT"] = fault
    if sig:
        env["CTR_FAULT_SIGNAL"] = sig
    return subprocess.run([sys.executable, "-m", "ctr.cli.preprocess", *map(str, args), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _temps(d: Path, name: str = "out") -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(f".{name}."))


def test_writer_removes_only_dead_temporaries_of_its_name(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    made = {f".out.tmp-{dead}-0123abcd": True, f".out.old-{dead}-89abcdef": True,
            f".out.tmp-{alive}-0123abcd": False, f".other.tmp-{dead}-0123abcd": False,
            ".out.tmp-mine": False, f".out.x.tmp-{dead}-0123abcd": False}
    for name in made:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.parquet").write_text("x")
    (tmp_path / f".out.tmp-{dead}-feedbeef").write_text("a file")
    made[f".out.tmp-{dead}-feedbeef"] = True
    removed = remove_stale_temps(tmp_path / "out")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in made.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, g in made.items() if not g)
    with DatasetWriter(tmp_path / "out") as w:
        assert w.tmp_dir.name.startswith(f".out.tmp-{os.getpid()}-")


def test_kill_mid_write_leaves_temp_that_the_next_run_removes(tmp_path):
    f = write_text(tmp_path / "train.txt", criteo_rows(300, seed=26))
    out = tmp_path / "out"
    p = _preprocess_proc([f, "--out", out], fault="dataset.after_write")
    assert p.returncode == -signal.SIGKILL
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.tmp-") and not out.exists()
    p = _preprocess_proc([f, "--out", out])
    assert p.returncode == 0, p.stderr
    assert _temps(tmp_path) == [] and read_meta(out)["rows_total"] == 300


def test_kill_during_overwrite_leaves_old_that_the_next_run_removes(tmp_path):
    f = write_text(tmp_path / "train.txt", criteo_rows(300, seed=27))
    out = tmp_path / "out"
    run([f], out)
    p = _preprocess_proc([f, "--out", out, "--overwrite", "--seed", "5"],
                         fault="dataset.before_delete_old")
    assert p.returncode == -signal.SIGKILL
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.old-")
    assert read_meta(out)["seed"] == 5                       # the new one is in place
    p = _preprocess_proc([f, "--out", out, "--overwrite", "--seed", "6"])
    assert p.returncode == 0, p.stderr
    assert _temps(tmp_path) == [] and read_meta(out)["seed"] == 6


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    f = write_text(tmp_path / "train.txt", criteo_rows(300, seed=28))
    out = tmp_path / "out"
    p = _preprocess_proc([f, "--out", out], fault="dataset.after_write", sig="TERM")
    assert p.returncode == 143
    assert "terminated (SIGTERM); nothing was written" in p.stderr and "Traceback" not in p.stderr
    assert _temps(tmp_path) == [] and not out.exists()


def test_fault_point_is_inert_without_its_name(monkeypatch):
    monkeypatch.delenv("CTR_FAULT_AT", raising=False)
    fault_point("dataset.after_write")                      # nothing happens
    monkeypatch.setenv("CTR_FAULT_AT", "elsewhere")
    fault_point("dataset.after_write")
    monkeypatch.setenv("CTR_FAULT_AT", "here")
    monkeypatch.setenv("CTR_FAULT_SIGNAL", "NOSUCH")
    with pytest.raises(ValueError, match="NOSUCH"):
        fault_point("here")
