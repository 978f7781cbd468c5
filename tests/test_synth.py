"""Synthetic Criteo generator (ctr.data.synth): determinism, oracle, TSV layout, splits, demo."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from ctr.data import synth
from ctr.data.dataset import CRITEO_DENSE, CRITEO_SPARSE, DatasetError, read_meta, split_files
from ctr.data.encoding import FieldVocab, frequency_ids
from ctr.data.preprocess import parse_split, preprocess
from ctr.data.transforms import DenseStats, apply_dense_transform
from ctr.metrics import click_metrics

ROWS = 20_000
HEX8 = re.compile(r"[0-9a-f]{8}")


def _split_table(path, split):
    return pq.read_table(split_files(path, split))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """One small dataset (seed 7), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    meta = synth.generate_dataset(out, ROWS, seed=7, progress=False)
    return out, meta


def test_dataset_schema_and_meta(ds):
    path, meta = ds
    stored = read_meta(path)
    assert stored["dataset"] == "synthetic" and stored["label"] == "label"
    assert stored["dense_fields"] == CRITEO_DENSE and stored["sparse_fields"] == CRITEO_SPARSE
    assert stored["seed"] == 7 and stored["synthetic"]["rows"] == ROWS
    assert stored["synthetic"]["version"] == synth.GENERATOR_VERSION
    assert stored["dense_transform"]["kind"] == "minmax"
    assert stored["categorical_encoding"] == {"kind": "label", "order": "frequency"}
    assert stored["split_aliases"]["valid"] == "test"
    t = _split_table(path, "train")
    types = {f.name: str(f.type) for f in t.schema}
    assert types["label"] == "float" and types[synth.ORACLE_COLUMN] == "float"
    assert all(types[f] == "float" for f in CRITEO_DENSE)
    assert all(types[f] == "int32" for f in CRITEO_SPARSE)
    for split in ("train", "test"):
        t = _split_table(path, split)
        for f in CRITEO_SPARSE:
            col = t[f].to_numpy()
            assert col.min() >= 0 and col.max() < stored["vocab_sizes"][f]
        for f in CRITEO_DENSE:
            col = t[f].to_numpy()
            assert col.min() >= 0.0 and col.max() <= 1.0
    # label encoding over all rows: ids exactly 0..V-1, each of 1..V-1 used, by descending
    # frequency (id 1 is the most frequent); V is far below the Zipf support of huge fields
    both = [_split_table(path, s) for s in ("train", "test")]
    for f in CRITEO_SPARSE:
        ids = np.concatenate([t[f].to_numpy() for t in both])
        v = stored["vocab_sizes"][f]
        counts = np.bincount(ids, minlength=v)
        assert len(counts) == v and (counts[1:] > 0).all(), f
        assert (np.diff(counts[1:]) <= 0).all(), f
        assert v == 1 or counts[1] == counts[1:].max()
    assert stored["vocab_sizes"]["C3"] < 0.5 * stored["synthetic"]["support"]["C3"]
    # a huge field keeps a realistic share of rare ids at small sizes
    c3 = np.concatenate([t["C3"].to_numpy() for t in both])
    _, counts = np.unique(c3[c3 > 0], return_counts=True)
    assert (counts == 1).mean() > 0.5


def test_oracle_matches_stored_probabilities(ds):
    path, meta = ds
    t = _split_table(path, "test")
    y, p = t["label"].to_numpy(), t[synth.ORACLE_COLUMN].to_numpy()
    assert meta["oracle"]["test_auc"] == roc_auc_score(y, p)
    assert 0.75 < meta["oracle"]["test_auc"] < 0.95
    assert 0.2 < meta["positive_rate"] < 0.3
    assert abs(meta["positive_rate"] - meta["synthetic"]["model"]["positive_rate"]) < 0.02
    # the stored p are the generator's p for the very same rows (in some split order)
    model = synth.PlantedModel(7, ROWS)
    p_all = np.concatenate([model.chunk(i).p for i in range(model.num_chunks())]).astype(np.float32)
    stored = np.concatenate([_split_table(path, s)[synth.ORACLE_COLUMN].to_numpy()
                             for s in ("train", "test")])
    np.testing.assert_array_equal(np.sort(stored), np.sort(p_all))


def test_exact_split_sizes(tmp_path):
    meta = synth.generate_dataset(tmp_path / "a", 10_001, seed=1, progress=False)
    assert meta["splits"]["train"]["rows"] == 9_001 and meta["splits"]["test"]["rows"] == 1_000
    meta = synth.generate_dataset(tmp_path / "b", 10_001, seed=1, split=(0.8, 0.1, 0.1),
                                  progress=False)
    assert [meta["splits"][s]["rows"] for s in ("train", "valid", "test")] == [8_001, 1_000, 1_000]
    assert "valid" not in meta["split_aliases"]
    with pytest.raises(FileExistsError):
        synth.generate_dataset(tmp_path / "b", 10_001, seed=1, progress=False)


@pytest.mark.parametrize("rows,split,sizes", [
    (10_005, (0.8, 0.1, 0.1), [8_004, 1_001, 1_000]),   # generator version 2: 8,005 / 1,000 / 1,000
    (35, (0.9, 0.1), [32, 3]),                          # generator version 2: 31 / 4
])
def test_split_sizes_round_as_ctr_preprocess(tmp_path, rows, split, sizes):
    """One rounding rule for both producers: SplitSpec.sizes (leading splits half up, the
    last takes the rest), whatever form the split is given in."""
    spec = parse_split("random:" + ",".join(map(str, split)))
    assert spec.sizes(rows) == sizes
    for form in (split, ",".join(map(str, split)), "random:" + ",".join(map(str, split)), spec):
        assert synth.split_spec(form).sizes(rows) == sizes
    meta = synth.generate_dataset(tmp_path / "d", rows, seed=1, split=split, progress=False)
    assert [meta["splits"][s]["rows"] for s in spec.names] == sizes
    assert meta["split"] == spec.meta(1, rows)
    assert meta["oracle"]["test_rows"] == sizes[-1]


@pytest.mark.parametrize("split", [(1.0,), (0.5, 0.6), (0.9, -0.1, 0.2), "sequential:0.9,0.1",
                                   (0.25,) * 4])
def test_split_rejects(split):
    with pytest.raises(ValueError):
        synth.split_spec(split)


def test_cli_split_flag():
    parser = argparse.ArgumentParser()
    synth.add_synth_arguments(parser)
    assert parser.parse_args([]).split.sizes(10) == [9, 1]
    assert parser.parse_args(["--split", "0.8,0.1,0.1"]).split.names == ("train", "valid", "test")
    with pytest.raises(SystemExit):
        parser.parse_args(["--split", "0.9,0.2"])


def test_frequency_ids_is_the_preprocessing_rule():
    """The generator's label encoding and ctr-preprocess's vocabularies share one function:
    descending count, ties by ascending key (raw id / sorted key), unseen -> 0."""
    counts = np.array([5, 0, 7, 5, 1, 7])
    ids, v = frequency_ids(counts)
    assert ids.tolist() == [3, 0, 1, 4, 5, 2] and v == 6
    ids, v = frequency_ids(counts, min_count=5)
    assert ids.tolist() == [3, 0, 1, 4, 0, 2] and v == 5
    vocab = FieldVocab()
    keys = np.array([10, 20, 30, 40, 50], dtype=np.uint64)
    vocab.add(keys, np.array([5, 7, 5, 1, 7]))
    vocab.freeze()
    assert vocab.lookup(keys).tolist() == frequency_ids(np.array([5, 7, 5, 1, 7]))[0].tolist()
    assert vocab.size == 6


def test_oracle_metrics_score_like_a_model():
    rng = np.random.default_rng(0)
    p = rng.random(2_000).astype(np.float32)
    y = (rng.random(2_000) < p).astype(np.float32)
    m, c = synth.oracle_metrics(y, p), click_metrics(y, p)
    assert m == {"test_auc": c["auc"], "test_logloss": c["logloss"], "test_rows": 2_000}
    assert m["test_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert synth.oracle_metrics(np.ones(3), np.full(3, 0.5)) == {
        "test_auc": None, "test_logloss": None, "test_rows": 3}
    assert synth.oracle_metrics(np.zeros(0), np.zeros(0))["test_rows"] == 0


def test_import_stays_light():
    """ctr-preprocess synth must not pay for torch (ctr.train) or scikit-learn at import."""
    code = ("import sys, ctr.data.synth; "
            "print(sorted(m for m in ('torch', 'sklearn', 'ctr.train') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dataset_determinism(ds, tmp_path):
    path, meta = ds
    again = synth.generate_dataset(tmp_path / "again", ROWS, seed=7, progress=False)
    other = synth.generate_dataset(tmp_path / "other", ROWS, seed=8, progress=False)
    for split in ("train", "test"):
        assert _split_table(path, split).equals(_split_table(tmp_path / "again", split))
        assert not _split_table(path, split).equals(_split_table(tmp_path / "other", split))
    strip = lambda m: {k: v for k, v in m.items() if k != "synthetic"}  # noqa: E731
    assert strip(again) == strip(meta)
    assert again["synthetic"]["intercept"] == meta["synthetic"]["intercept"]
    assert other["synthetic"]["intercept"] != meta["synthetic"]["intercept"]


def test_tsv_layout_determinism_and_agreement_with_dataset(tmp_path):
    rows = 6_000
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    info = synth.write_raw_criteo_tsv(a, rows, seed=3, progress=False)
    synth.write_raw_criteo_tsv(b, rows, seed=3, progress=False)
    synth.write_raw_criteo_tsv(c, rows, seed=4, progress=False)
    data = a.read_bytes()
    assert data == b.read_bytes() and data != c.read_bytes()
    assert info["rows"] == rows and info["bytes"] == len(data)
    assert not list(tmp_path.glob(".*tmp*"))
    lines = data.decode("ascii").split("\n")
    assert lines[-1] == "" and len(lines) == rows + 1
    labels, dense, cats = [], [], []
    for line in lines[:-1]:
        f = line.split("\t")
        assert len(f) == 40
        assert f[0] in ("0", "1")
        for v in f[1:14]:
            assert v == "" or re.fullmatch(r"-?[0-9]+", v)
        for v in f[14:]:
            assert v == "" or HEX8.fullmatch(v)
        labels.append(int(f[0]))
        dense.append([float(v) if v else np.nan for v in f[1:14]])
        cats.append(f[14:])
    dense = np.array(dense)
    cats = np.array(cats)
    assert info["positives"] == sum(labels)
    assert dense[:, 1].min() >= -3 and np.nanmin(np.delete(dense, 1, axis=1)) >= 0
    # Criteo-like missing rates (I12 77%, I1 45%, I2 never; C22 76%, C1 never)
    miss = np.isnan(dense).mean(axis=0)
    assert abs(miss[11] - 0.77) < 0.03 and abs(miss[0] - 0.45) < 0.03 and miss[1] == 0
    cmiss = (cats == "").mean(axis=0)
    assert abs(cmiss[21] - 0.76) < 0.03 and cmiss[0] == 0
    # the dataset of the same (rows, seed), all rows in train and so in generation order, is
    # what ctr-preprocess makes of this TSV: same labels, same minmax dense, ids a relabelling
    # (checked on the parsed TSV here, against ctr-preprocess itself below)
    out = synth.generate_dataset(tmp_path / "ds", rows, seed=3, split=(1.0, 0.0), progress=False)
    t = _split_table(tmp_path / "ds", "train")
    np.testing.assert_array_equal(t["label"].to_numpy(), np.array(labels, dtype=np.float32))
    stats = DenseStats(CRITEO_DENSE)
    stats.update(dense)
    assert stats.params("minmax") == out["dense_transform"]["params"]
    x = apply_dense_transform(dense, "minmax", stats.params("minmax"), CRITEO_DENSE)
    for j, f in enumerate(CRITEO_DENSE):
        np.testing.assert_array_equal(t[f].to_numpy(), x[:, j])
    for j, f in enumerate(CRITEO_SPARSE):
        ids = t[f].to_numpy()
        assert ((ids == 0) == (cats[:, j] == "")).all()
        pairs = set(zip(ids.tolist(), cats[:, j].tolist()))
        assert len(pairs) == len(set(ids.tolist())) == len(set(cats[:, j].tolist()))
    # ctr-preprocess on the TSV: same vocab sizes and the same count for every id. Both order
    # ids by descending count; ties go by Zipf rank here, by hex key there, so ids agree
    # exactly where the count is unique in the field and otherwise within the tied block.
    pp = preprocess(a, tmp_path / "pp", split="sequential:1.0", progress=False)
    assert pp["vocab_sizes"] == out["vocab_sizes"]
    assert pp["categorical_encoding"]["kind"] == out["categorical_encoding"]["kind"] == "label"
    tp = _split_table(tmp_path / "pp", "train")
    np.testing.assert_array_equal(tp["label"].to_numpy(), t["label"].to_numpy())
    model = synth.PlantedModel(3, rows)
    raw = np.concatenate([model.chunk(i).ids for i in range(model.num_chunks())])
    unique_count_ids = 0
    for j, f in enumerate(CRITEO_SPARSE):
        g, q = t[f].to_numpy(), tp[f].to_numpy()
        v = out["vocab_sizes"][f]
        cg, cq = np.bincount(g, minlength=v), np.bincount(q, minlength=v)
        np.testing.assert_array_equal(cg, cq)
        np.testing.assert_array_equal(cg[g], cq[q])             # each row: an id of equal count
        values, multiplicity = np.unique(cg[1:], return_counts=True)
        unique = np.zeros(v, dtype=bool)
        unique[1:] = np.isin(cg[1:], values[multiplicity == 1])
        np.testing.assert_array_equal(g[unique[g]], q[unique[g]])
        unique_count_ids += int(unique.sum())
        # the generator's ids are its Zipf ranks relabelled, ties by ascending rank
        assert ((g == 0) == (raw[:, j] == 0)).all()
        pairs = np.unique(np.stack([g, raw[:, j]], axis=1)[g > 0], axis=0)   # sorted by id
        assert (pairs[:, 0] == np.arange(1, v)).all()              # one rank per id
        tied = cg[pairs[1:, 0]] == cg[pairs[:-1, 0]]
        assert (np.diff(pairs[:, 1])[tied] > 0).all()
    assert unique_count_ids > 100


def test_tsv_gzip(tmp_path):
    import gzip
    synth.write_raw_criteo_tsv(tmp_path / "p.tsv", 3_000, seed=5, progress=False)
    synth.write_raw_criteo_tsv(tmp_path / "p.tsv.gz", 3_000, seed=5, progress=False)
    assert gzip.decompress((tmp_path / "p.tsv.gz").read_bytes()) == (tmp_path / "p.tsv").read_bytes()


def test_rare_ids_carry_signal():
    model = synth.PlantedModel(11, 1_000_000)
    ids = model.chunk(0).ids
    for field in ("C3", "C12", "C21"):
        j = CRITEO_SPARSE.index(field)
        col = ids[:, j][ids[:, j] > 0]
        uniq, counts = np.unique(col, return_counts=True)
        effects = model.effects(field)
        once = effects[uniq[counts == 1]]
        frequent = effects[uniq[counts >= 20]]
        assert len(once) > 10_000 and len(frequent) > 100
        ratio = once.var() / frequent.var()
        assert 0.6 < ratio < 1.6, (field, ratio)
        assert abs(once.std() - effects[1:].std()) < 0.1 * effects[1:].std()


def test_parameters_do_not_depend_on_row_count():
    small, big = synth.PlantedModel(5, 10_000), synth.PlantedModel(5, 5_000_000)
    assert small.support["C3"] < big.support["C3"]
    assert small.intercept == big.intercept
    np.testing.assert_array_equal(small.scales, big.scales)
    for f in ("C1", "C3", "C26"):
        e_small, e_big = small.effects(f), big.effects(f)
        np.testing.assert_array_equal(e_small, e_big[:len(e_small)])
    # the same raw rows get the same planted probability from both
    ch = small.chunk(0)
    np.testing.assert_array_equal(small.logit(ch.dense, ch.ids), big.logit(ch.dense, ch.ids))


def test_support_rule():
    s = synth.support_sizes(1_000_000)
    assert s["C1"] == 1460 and s["C10"] == 93145                       # real size kept
    assert s["C3"] == int(np.ceil(10131227 * 1_000_000 / synth.CRITEO_ROWS))
    assert synth.support_sizes(1_000)["C3"] == 100_000                  # floor
    assert synth.support_sizes(10**9)["C3"] == 10131227                 # cap


def test_zipf_sampler_is_exact_inverse_cdf():
    rng = np.random.default_rng(0)
    for n in (3, 100, 5000, 300_000):
        s = synth.ZipfSampler(n, 1.05)
        u = rng.random(50_000)
        expect = np.minimum(np.searchsorted(s.cdf, u, side="right"), n - 1)
        np.testing.assert_array_equal(s.sample(u), expect)


def test_ensure_demo_dataset_reuses(tmp_path, capsys):
    path = tmp_path / "demo"
    assert synth.ensure_demo_dataset(path, rows=3_000, seed=0) == path
    first = capsys.readouterr().out
    assert "generating" in first and first.count("\n") == 1
    stamp = (path / "meta.json").stat().st_mtime_ns
    synth.ensure_demo_dataset(path, rows=3_000, seed=0)
    out = capsys.readouterr().out
    assert "reusing" in out and out.count("\n") == 1
    assert (path / "meta.json").stat().st_mtime_ns == stamp
    synth.ensure_demo_dataset(path, rows=4_000, seed=0)                # other rows: regenerated
    assert "regenerating" in capsys.readouterr().out
    assert read_meta(path)["synthetic"]["rows"] == 4_000
    other = tmp_path / "not-synthetic"
    other.mkdir()
    (other / "something.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synth.ensure_demo_dataset(other, rows=3_000)


def test_generator_knobs_name_and_identify_the_generated_data(monkeypatch, tmp_path, capsys):
    """A preset's {vocab_scale, zipf}: its own directory, reused only with the same knobs."""
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    knobs = {"vocab_scale": 30.0, "zipf": 0.72}
    assert synth.synthetic_dir(3_000, 0, knobs) == tmp_path / "synthetic-3000-s0-vocab_scale30-zipf0.72"
    assert synth.synthetic_dir(synth.DEMO_ROWS, 0, knobs).name != "synthetic-demo"
    ds = synth.resolve_dataset(None, rows=3_000, seed=0, model=knobs)
    assert read_meta(ds.path)["synthetic"]["model"]["zipf"] == 0.72
    plain = synth.resolve_dataset(None, rows=3_000, seed=0)
    assert plain.path != ds.path and sum(plain.vocab_sizes.values()) < sum(ds.vocab_sizes.values())
    capsys.readouterr()
    synth.ensure_demo_dataset(ds.path, rows=3_000, seed=0, model=knobs)
    assert "reusing" in capsys.readouterr().out
    synth.ensure_demo_dataset(ds.path, rows=3_000, seed=0, model={"vocab_scale": 30.0, "zipf": 0.9})
    assert "regenerating" in capsys.readouterr().out


def test_demo_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CTR_DATA_DIR", raising=False)
    demo = synth.synthetic_dir()                  # in a source checkout: its data/ directory
    assert demo.name == "synthetic-demo" and demo.parent.name == "data"
    assert (demo.parents[1] / "ctr" / "data" / "synth" / "demo.py").is_file()
    assert 500_000 <= synth.DEMO_ROWS <= 2_000_000
    # ctr-train and the sweeps share one place and one name per (rows, seed)
    assert synth.synthetic_dir(synth.DEMO_ROWS, 0) == demo
    assert synth.synthetic_dir(2_000, 3) == demo.parent / "synthetic-2000-s3"
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    assert synth.synthetic_dir(2_000, 3) == tmp_path / "synthetic-2000-s3"


def test_resolve_dataset(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    ds = synth.resolve_dataset(None, rows=2_000, seed=1)          # generated on first use
    assert ds.path == tmp_path / "synthetic-2000-s1" and ds.family == "synthetic"
    assert ds.rows("train") + ds.rows("test") == 2_000 and ds.oracle_test_auc is not None
    capsys.readouterr()
    again = synth.resolve_dataset(str(ds.path))                   # a given directory: only read
    assert again.vocab_sizes == ds.vocab_sizes and capsys.readouterr().out == ""
    with pytest.raises(DatasetError, match="not a processed dataset"):
        synth.resolve_dataset(str(tmp_path / "nothing"))


@pytest.mark.parametrize("text,rows", [("1000000", 1_000_000), ("1m", 1_000_000),
                                       ("500k", 500_000), ("2.5M", 2_500_000),
                                       ("1_000", 1_000), ("1e6", 1_000_000)])
def test_parse_rows(text, rows):
    assert synth.parse_rows(text) == rows


@pytest.mark.parametrize("text", ["", "abc", "0", "1.5", "-3", "1x"])
def test_parse_rows_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        synth.parse_rows(text)


def test_rows_are_decimal_unlike_batches():
    from ctr.optim.scaling import parse_batch
    assert synth.parse_rows("2k") == 2_000 and parse_batch("2k") == 2_048
    parser = argparse.ArgumentParser()
    synth.add_synth_arguments(parser)
    rows_help = next(a.help for a in parser._actions if a.dest == "rows")
    assert "k = 1,000" in rows_help and "k = 1024" in rows_help
    with pytest.raises(ValueError):
        synth.parse_rows(0)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_synth_arguments(parser)
    tsv = tmp_path / "s.tsv"
    args = parser.parse_args(["--rows", "2k", "--format", "tsv", "--out", str(tsv), "--quiet"])
    assert synth.synth_main(args) == 0 and len(tsv.read_bytes().split(b"\n")) == 2_001
    assert synth.synth_main(args) != 0                                # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    args = parser.parse_args(["--rows", "2k", "--format", "tsv", "--out", str(tsv), "--quiet",
                              "--overwrite", "--seed", "1"])
    assert synth.synth_main(args) == 0
    out = tmp_path / "ds"
    args = parser.parse_args(["--rows", "3000", "--out", str(out), "--quiet", "--seed", "2",
                              "--positive-rate", "0.1", "--fm-dim", "2"])
    assert synth.synth_main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["synthetic"]["model"]["positive_rate"] == 0.1
    assert meta["synthetic"]["model"]["fm_dim"] == 2
    assert meta["positive_rate"] < 0.16
    with pytest.raises(TypeError):
        synth.generate_dataset(tmp_path / "x", 100, no_such_knob=1)


# --------------------------------------------------------------------------- Criteo-1TB-style days


def test_day_sizes_cut_one_stream_into_equal_days():
    assert synth.day_sizes(10, 3) == [3, 3, 4] and synth.day_sizes(7, 7) == [1] * 7
    assert sum(synth.day_sizes(1_000_003, 24)) == 1_000_003
    assert max(synth.day_sizes(1_000_003, 24)) - min(synth.day_sizes(1_000_003, 24)) <= 1
    for rows, days in ((3, 4), (10, 0), (10, 1.5)):
        with pytest.raises(ValueError):
            synth.day_sizes(rows, days)
    assert synth.day_file_names(3, gzip=True) == ["day_0.gz", "day_1.gz", "day_2.gz"]


def test_days_are_the_single_file_cut_at_row_boundaries(tmp_path, monkeypatch):
    """Small generator chunks (1,000 rows), so days begin and end inside chunks: the days
    concatenated are the single-file writer's bytes, rows add up, each day parses as a Criteo
    1TB day file, and the positives and the last day's oracle are those of its rows."""
    import gzip

    from ctr.data.raw import detect_format
    monkeypatch.setattr("ctr.data.synth.model.CHUNK_ROWS", 1000)
    rows = 5_500
    info = synth.write_raw_criteo_days(tmp_path / "days", rows, days=3, seed=3, progress=False,
                                       oracle_last=True)
    one = synth.write_raw_criteo_tsv(tmp_path / "one.tsv", rows, seed=3, progress=False)
    names = [f"day_{d}" for d in range(3)]
    assert sorted(p.name for p in (tmp_path / "days").iterdir()) == names    # no temporaries left
    data = [(tmp_path / "days" / n).read_bytes() for n in names]
    assert b"".join(data) == (tmp_path / "one.tsv").read_bytes()
    assert [f["rows"] for f in info["files"]] == [d.count(b"\n") for d in data] == [1833, 1833, 1834]
    assert info["rows"] == rows and info["positives"] == one["positives"]
    assert [f["bytes"] for f in info["files"]] == [len(d) for d in data]
    for n, d, f in zip(names, data, info["files"]):
        fm = detect_format(tmp_path / "days" / n)
        assert (fm.name, fm.dataset, fm.has_label, len(fm.sparse), len(fm.dense)) == \
            ("criteo", "criteo", True, 26, 13)
        assert f["positives"] == sum(line[:1] == b"1" for line in d.split(b"\n")[:-1])
    model = synth.PlantedModel(3, rows)
    ch = [model.chunk(i) for i in range(model.num_chunks())]
    p = np.concatenate([c.p for c in ch])[-1834:]
    y = np.concatenate([c.label for c in ch])[-1834:]
    assert info["oracle_last"]["test_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    gz = synth.write_raw_criteo_days(tmp_path / "gz", rows, days=3, seed=3, gzip=True, progress=False)
    assert [gzip.decompress((tmp_path / "gz" / f"{n}.gz").read_bytes()) for n in names] == data
    assert "oracle_last" not in gz


def test_days_writer_leaves_no_partial_day(tmp_path, monkeypatch):
    """An error while writing day 1 keeps the finished day 0, removes day 1's temporary and
    writes no day 2."""
    from ctr.data.synth import tsv
    monkeypatch.setattr("ctr.data.synth.model.CHUNK_ROWS", 1000)
    real, calls = tsv.tsv_parts, []

    def failing(ch, keys):
        calls.append(len(ch.label))
        if len(calls) == 4:          # day 0 is chunks 0, 1 (cut); day 1 starts in chunk 1
            raise OSError("disk full")
        return real(ch, keys)
    monkeypatch.setattr(tsv, "tsv_parts", failing)
    with pytest.raises(OSError, match="disk full"):
        synth.write_raw_criteo_days(tmp_path, 6_000, days=3, seed=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0"]
    assert (tmp_path / "day_0").read_bytes().count(b"\n") == 2000


def test_cli_days(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_synth_arguments(parser)
    out = tmp_path / "days"

    def run(*extra):
        return synth.synth_main(parser.parse_args(["--rows", "3k", "--quiet", "--out", str(out), *extra]))
    assert run("--format", "days", "--days", "3") == 0
    assert sorted(p.name for p in out.iterdir()) == ["day_0", "day_1", "day_2"]
    assert "3,000 rows in 3 day files" in capsys.readouterr().out
    assert run("--format", "days", "--days", "3") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run("--format", "days", "--days", "2", "--overwrite") == 2   # day_2 would be stale
    assert "day_2, which this run would not write" in capsys.readouterr().err
    assert run("--format", "days", "--days", "3", "--overwrite", "--seed", "1") == 0
    for bad, msg in ((("--format", "days"), "needs --days"),
                     (("--format", "tsv", "--days", "3"), "--days goes with --format days"),
                     (("--format", "days", "--days", "4000"), "at least one row"),
                     (("--gzip",), "--gzip goes with --format days")):
        assert run(*bad) == 2
        assert msg in capsys.readouterr().err
