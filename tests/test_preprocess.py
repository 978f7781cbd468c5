"""ctr-preprocess: every input format, the real samples, round trips, bad input, splits,
encodings, determinism and atomic output."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctr.cli.preprocess import main as cli_main
from ctr.data.dataset import CRITEO_DENSE, CRITEO_SPARSE, read_meta, split_files
from ctr.data.encoding import CategoricalEncoder, FieldVocab, string_keys
from ctr.data.preprocess import parse_split, preprocess
from ctr.data.raw import AVAZU_COLUMNS, RawInputError, RawReader, detect_format
from ctr.data.transforms import apply_dense_transform

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- raw makers


def criteo_rows(n: int, seed: int = 0, label: bool = True, float_ints: bool = False) -> list[list[str]]:
    """Criteo-shaped raw rows as strings: I1 = row index (identifies the row), negatives,
    empties, 8-hex categoricals from small pools (repeats), some missing."""
    rng = random.Random(seed)
    pools = [[f"{rng.getrandbits(32):08x}" for _ in range(1 + (j * 7) % 40)] for j in range(26)]
    rows = []
    for i in range(n):
        r = [str(int(rng.random() < 0.3))] if label else []
        for j in range(13):
            if j == 0:
                v = str(i)
            elif rng.random() < 0.15:
                v = ""
            else:
                v = str(rng.randint(-3 if j == 1 else 0, 500))
            if float_ints and v:
                v = v + ".0"
            r.append(v)
        for j in range(26):
            pool = pools[j]
            r.append("" if rng.random() < 0.1 else pool[min(int(rng.expovariate(0.3)), len(pool) - 1)])
        rows.append(r)
    return rows


def write_text(path: Path, rows: list[list[str]], delim: str = "\t", header: list[str] | None = None,
               gz: bool = False, newline: str = "\n") -> Path:
    lines = ([delim.join(header)] if header else []) + [delim.join(r) for r in rows]
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


CRITEO_HEADER = ["label"] + CRITEO_DENSE + CRITEO_SPARSE


def avazu_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        day = rng.choice([21, 22, 25])
        hour = rng.randint(0, 23)
        r = [str(10**18 + i), str(int(rng.random() < 0.2)), f"1410{day:02d}{hour:02d}",
             rng.choice(["1005", "1002", "1010"]), rng.choice(["0", "1", "7"])]
        for name in AVAZU_COLUMNS[5:]:
            if name in ("C20",):
                r.append(rng.choice(["-1", "100084", "100083"]))
            elif name.startswith("C") or name in ("device_type", "device_conn_type"):
                r.append(str(rng.randint(0, 30)))
            else:
                r.append(f"{rng.randint(0, 40):08x}")
        rows.append(r)
    return rows


def read_split(out: Path, split: str) -> pd.DataFrame:
    files = split_files(out, split)
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def read_all(out: Path) -> pd.DataFrame:
    meta = read_meta(out)
    frames = []
    for s in meta["splits"]:
        df = read_split(out, s)
        df["_split"] = s
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def run(inputs, out, **kw):
    kw.setdefault("progress", False)
    return preprocess(inputs, out, **kw)


# --------------------------------------------------------------------------- keys & vocab


def test_string_keys_hex_and_hashed():
    vals = ["", None, "0", "00", "a", "0a", "ffffffff", "FF", "-1", "x" * 30, "abcdef01234567"]
    k = string_keys(pa.array(vals))
    assert k[0] == 0 and k[1] == 0                        # missing
    assert len(set(k[2:].tolist())) == len(vals) - 2      # all distinct, none 0
    assert k[6] == (8 << 56) | 0xFFFFFFFF
    assert all(int(x) >> 63 == 1 for x in k[7:10])        # non-hex: hashed, top bit set
    assert int(k[10]) >> 63 == 0                          # 14 hex digits still exact
    # same value, same key, whatever the array layout (slices, binary, large_string)
    a = pa.array(vals)
    assert (string_keys(a.slice(3, 5)) == k[3:8]).all()
    assert (string_keys(a.cast(pa.large_string())) == k).all()
    assert (string_keys(pa.array([0, 10, None])) == string_keys(pa.array(["0", "10", ""]))).all()


def test_vocab_ids_by_frequency_ties_by_key_and_merging():
    v = FieldVocab(merge_at=2)  # merge often to exercise it
    v.add(np.array([5, 7, 9], np.uint64), np.array([1, 3, 3]))
    v.add(np.array([9, 5, 0], np.uint64), np.array([1, 1, 4]))   # key 0 (missing) ignored
    v.add(np.array([11], np.uint64), np.array([2]))
    v.freeze()
    # counts: 9->4, 7->3, 5->2, 11->2 ; ties by key: 5 before 11
    assert v.lookup(np.array([9, 7, 5, 11, 0, 12345], np.uint64)).tolist() == [1, 2, 3, 4, 0, 0]
    assert v.size == 5
    w = FieldVocab()
    w.add(np.array([5, 7, 9, 11], np.uint64), np.array([2, 3, 4, 2]))
    w.freeze(min_count=3)
    assert w.lookup(np.array([9, 7, 5, 11], np.uint64)).tolist() == [1, 2, 0, 0]
    assert w.size == 3


def test_encoder_many_distinct_keys():
    enc = CategoricalEncoder(["C"])
    n = 300_000
    vals = pa.array([f"{i:08x}" for i in range(n)])
    enc.count("C", vals)
    enc.count("C", vals.slice(0, 1000))
    enc.finalize()
    ids = enc.encode("C", vals)
    assert enc.vocab_sizes()["C"] == n + 1
    assert (np.sort(ids) == np.arange(1, n + 1)).all()
    assert (ids[:1000] <= 1000).all()  # the values seen twice get the first ids


# --------------------------------------------------------------------------- splits


def test_parse_split_and_exact_sizes():
    s = parse_split("random:0.8,0.1,0.1")
    assert s.names == ("train", "valid", "test")
    assert s.sizes(1001) == [801, 100, 100] and sum(s.sizes(7)) == 7
    assert parse_split("random").sizes(10) == [9, 1]
    assert parse_split("sequential:1").names == ("train",)
    for bad in ("random:0.5,0.1", "shuffle:0.9,0.1", "random:a,b", "random:0.2,0.2,0.2,0.4"):
        with pytest.raises(ValueError):
            parse_split(bad)


# --------------------------------------------------------------------------- formats


def _expect(meta, rows, labelled=True, dataset="criteo"):
    assert meta["rows_total"] == rows
    assert sum(s["rows"] for s in meta["splits"].values()) == rows
    assert (meta["label"] == "label") == labelled
    assert meta["dataset"] == dataset


@pytest.mark.parametrize("variant", ["tsv", "tsv-gz", "test-tsv", "csv-header-id-floats",
                                     "csv-noheader", "csv-header-gz", "tsv-crlf"])
def test_criteo_text_variants(tmp_path, variant):
    n = 300
    labelled = variant != "test-tsv"
    rows = criteo_rows(n, seed=1, label=labelled, float_ints="floats" in variant)
    f = tmp_path / "raw"
    if variant == "tsv":
        write_text(f, rows)
        name = "criteo"
    elif variant == "tsv-gz":
        write_text(f, rows, gz=True)
        name = "criteo"
    elif variant == "tsv-crlf":
        write_text(f, rows, newline="\r\n")
        name = "criteo"
    elif variant == "test-tsv":
        write_text(f, rows)
        name = "criteo-test"
    elif variant == "csv-header-id-floats":
        write_text(f, [[str(10_000 + i)] + r for i, r in enumerate(rows)], ",",
                   header=["Id", "Label"] + CRITEO_DENSE + CRITEO_SPARSE)
        name = "csv"
    elif variant == "csv-noheader":
        write_text(f, rows, ",")
        name = "csv"
    else:
        write_text(f, rows, ",", header=CRITEO_HEADER, gz=True)
        name = "csv"
    fm = detect_format(f)
    assert fm.name == name and fm.compression == ("gzip" if "gz" in variant else None)
    meta = run([f], tmp_path / "out")
    _expect(meta, n, labelled)
    assert meta["format"] == name
    assert meta["sources"][0]["bytes"] == f.stat().st_size
    df = read_all(tmp_path / "out")
    assert list(df.columns[:-1]) == (["label"] if labelled else []) + CRITEO_DENSE + CRITEO_SPARSE
    if labelled:
        raw_pos = sum(int(r[0]) for r in rows)
        assert df["label"].sum() == raw_pos and df["label"].dtype == np.float32
    else:
        assert meta["positive_rate"] is None and "label" not in df.columns
    assert df["C1"].dtype == np.int32 and df["I1"].dtype == np.float32


def test_explicit_format_checked(tmp_path):
    f = write_text(tmp_path / "day_0", criteo_rows(20))
    assert detect_format(f, "criteo").name == "criteo"
    assert detect_format(f, "csv").name == "csv"
    with pytest.raises(RawInputError, match="not --format criteo-test"):
        detect_format(f, "criteo-test")
    with pytest.raises(RawInputError, match="not --format avazu"):
        detect_format(f, "avazu")
    with pytest.raises(RawInputError, match="not Parquet"):
        detect_format(f, "parquet")


def test_avazu_24_columns_header_and_headerless(tmp_path):
    """--avazu-hour split (the default, raw, is in test_reference_details.py)."""
    rows = avazu_rows(400, seed=2)
    a = write_text(tmp_path / "train.csv", rows, ",", header=AVAZU_COLUMNS)
    b = write_text(tmp_path / "test", rows, ",")                    # no header, labelled
    for f in (a, b):
        fm = detect_format(f, avazu_hour="split")
        assert fm.name == "avazu" and fm.label == "click" and fm.avazu_hour
    meta = run([a], tmp_path / "out", split="sequential:1", avazu_hour="split")
    _expect(meta, 400, dataset="avazu")
    assert meta["dense_fields"] == []
    assert meta["sparse_fields"] == AVAZU_COLUMNS[2:] + ["weekday"]
    assert len(meta["sparse_fields"]) == 23
    df = read_split(tmp_path / "out", "train")
    raw = pd.DataFrame(rows, columns=AVAZU_COLUMNS)
    # hour -> hour of day; weekday from the date (2014-10-21 Tue=1, 22 Wed=2, 25 Sat=5)
    hh = raw["hour"].str[6:8]
    wd = raw["hour"].str[4:6].map({"21": 1, "22": 2, "25": 5})
    assert meta["vocab_sizes"]["hour"] == hh.nunique() + 1
    assert meta["vocab_sizes"]["weekday"] == 4
    assert (df.groupby(hh)["hour"].nunique() == 1).all() and df["hour"].nunique() == hh.nunique()
    assert (df.groupby(wd)["weekday"].nunique() == 1).all() and df["weekday"].nunique() == 3
    assert (df["label"].to_numpy() == raw["click"].astype(float).to_numpy()).all()
    meta_b = run([b], tmp_path / "out_b", split="sequential:1", avazu_hour="split")
    assert meta_b["vocab_sizes"] == meta["vocab_sizes"]
    assert read_split(tmp_path / "out_b", "train").equals(df)


def test_avazu_x_with_labels_file(tmp_path):
    rows = avazu_rows(300, seed=3)
    raw = pd.DataFrame(rows, columns=AVAZU_COLUMNS)
    xcols = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "device_ip")]
    assert len(xcols) == 21
    x = raw[xcols].copy()
    x["hour"] = x["hour"].str[6:8]
    xf = tmp_path / "X.csv"
    x.to_csv(xf, index=False)
    yf = tmp_path / "y.csv"
    raw[["click"]].to_csv(yf, index=False)
    fm = detect_format(xf, labels=yf)
    assert fm.name == "avazu-x" and not fm.avazu_hour and fm.labels_header
    meta = run([xf], tmp_path / "out", labels=[yf], split="sequential:0.5,0.5", fmt="avazu-x")
    _expect(meta, 300, dataset="avazu")
    assert meta["sparse_fields"] == xcols
    df = pd.concat([read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "test")])
    assert (df["label"].to_numpy() == raw["click"].astype(float).to_numpy()).all()
    # without labels: an unlabelled dataset
    meta = run([xf], tmp_path / "out2")
    assert meta["label"] is None
    # labels file too short
    (tmp_path / "short.csv").write_text("click\n" + "0\n" * 10)
    with pytest.raises(RawInputError, match=r"short\.csv.*fewer"):
        run([xf], tmp_path / "out3", labels=[tmp_path / "short.csv"])
    assert not (tmp_path / "out3").exists()


@pytest.mark.parametrize("cat_type", ["string", "int"])
def test_parquet_input(tmp_path, cat_type):
    rows = criteo_rows(250, seed=4)
    raw = pd.DataFrame(rows, columns=CRITEO_HEADER)
    cols = {"label": pa.array(raw["label"].astype(np.int64))}
    for c in CRITEO_DENSE:
        cols[c] = pa.array(pd.to_numeric(raw[c]).astype("Int64"))
    for c in CRITEO_SPARSE:
        if cat_type == "string":
            cols[c] = pa.array(raw[c].where(raw[c] != "", None))
        else:
            cols[c] = pa.array([int(v, 16) if v else None for v in raw[c]], pa.int64())
    f = tmp_path / "raw.parquet"
    pq.write_table(pa.table(cols), f, row_group_size=100)
    assert detect_format(f).name == "parquet"
    meta = run([f], tmp_path / "out", split="sequential:1")
    _expect(meta, 250)
    # the same rows as TSV give the same ids (ints vs hex strings differ, so compare structure)
    t = write_text(tmp_path / "raw.tsv", rows)
    meta_t = run([t], tmp_path / "out_t", split="sequential:1")
    assert meta["vocab_sizes"] == meta_t["vocab_sizes"]
    a, b = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out_t", "train")
    assert np.allclose(a[CRITEO_DENSE].to_numpy(), b[CRITEO_DENSE].to_numpy())
    for c in CRITEO_SPARSE:
        assert (a[c].groupby(b[c]).nunique() == 1).all()
        assert ((a[c] == 0) == (b[c] == 0)).all()


# --------------------------------------------------------------------------- round trip


def test_round_trip_against_pandas(tmp_path):
    n = 600
    rows = criteo_rows(n, seed=5)
    f = write_text(tmp_path / "train.txt", rows)
    # tiny blocks: the file is read in many blocks, so block joins are exercised too
    meta = run([f], tmp_path / "out", split="random:0.8,0.1,0.1", seed=3, block_bytes=4096)
    raw = pd.read_csv(f, sep="\t", header=None, names=CRITEO_HEADER, dtype=str, keep_default_na=False)
    assert meta["split"]["sizes"] == {"train": 480, "valid": 60, "test": 60}
    for s, k in (("train", 480), ("valid", 60), ("test", 60)):
        assert meta["splits"][s]["rows"] == k
    df = read_all(tmp_path / "out")
    assert len(df) == n
    # I1 = raw row index, minmax-scaled: recover each output row's raw row
    params = meta["dense_transform"]["params"]
    assert params["I1"]["min"] == 0 and params["I1"]["max"] == n - 1
    idx = np.rint(df["I1"].to_numpy(np.float64) * (n - 1)).astype(int)
    assert sorted(idx) == list(range(n))
    src = raw.iloc[idx].reset_index(drop=True)
    assert (df["label"].to_numpy() == src["label"].astype(float).to_numpy()).all()
    # rows keep the file order inside each split
    for s in ("train", "valid", "test"):
        assert (np.diff(idx[(df["_split"] == s).to_numpy()]) > 0).all()
    dense_raw = src[CRITEO_DENSE].replace("", np.nan).astype(float).to_numpy()
    want = apply_dense_transform(dense_raw, "minmax", params, CRITEO_DENSE)
    assert np.allclose(df[CRITEO_DENSE].to_numpy(), want, atol=1e-6)
    for c in CRITEO_SPARSE:
        ids, vals = df[c].to_numpy(), src[c].to_numpy()
        assert ((ids == 0) == (vals == "")).all()                       # missing <-> 0
        pairs = set(zip(ids.tolist(), vals.tolist()))
        assert len(pairs) == len(set(ids.tolist())) == len(set(vals.tolist()))  # bijection
        counts = pd.Series(vals[vals != ""]).value_counts()
        assert meta["vocab_sizes"][c] == len(counts) + 1
        assert set(ids.tolist()) - {0} == set(range(1, len(counts) + 1))  # contiguous
        # id 1 is the most frequent value; ids ordered by descending count, ties by key
        by_id = {i: v for i, v in pairs if i}
        cnt = [counts[by_id[i]] for i in range(1, len(counts) + 1)]
        assert cnt == sorted(cnt, reverse=True)


def test_determinism_and_seed(tmp_path):
    f = write_text(tmp_path / "train.txt", criteo_rows(400, seed=6))
    run([f], tmp_path / "a", seed=7)
    run([f], tmp_path / "b", seed=7)
    run([f], tmp_path / "c", seed=8)
    for s in ("train", "test"):
        assert read_split(tmp_path / "a", s).equals(read_split(tmp_path / "b", s))
    assert not read_split(tmp_path / "a", "test").equals(read_split(tmp_path / "c", "test"))
    ma, mc = read_meta(tmp_path / "a"), read_meta(tmp_path / "c")
    assert ma["vocab_sizes"] == mc["vocab_sizes"]
    assert ma["splits"]["test"]["rows"] == mc["splits"]["test"]["rows"] == 40
    assert ma["split"] == {"kind": "random", "ratios": {"train": 0.9, "test": 0.1}, "seed": 7,
                           "sizes": {"train": 360, "test": 40}}
    assert ma["split_aliases"] == {"valid": "test"} and ma["seed"] == 7


def test_sequential_split(tmp_path):
    n = 101
    f = write_text(tmp_path / "train.txt", criteo_rows(n, seed=7))
    meta = run([f], tmp_path / "out", split="sequential:0.8,0.1,0.1", dense="none", block_bytes=2048)
    sizes = [meta["splits"][s]["rows"] for s in ("train", "valid", "test")]
    assert sizes == [81, 10, 10]
    got = [read_split(tmp_path / "out", s)["I1"].astype(int).tolist() for s in ("train", "valid", "test")]
    assert got == [list(range(81)), list(range(81, 91)), list(range(91, 101))]


def test_multiple_inputs_one_vocabulary(tmp_path):
    rows = criteo_rows(300, seed=8)
    d0 = write_text(tmp_path / "day_0", rows[:120])
    d1 = write_text(tmp_path / "day_1.gz", rows[120:], gz=True)
    whole = write_text(tmp_path / "all", rows)
    m = run([d0, d1], tmp_path / "two", split="sequential:1")
    w = run([whole], tmp_path / "one", split="sequential:1")
    assert m["vocab_sizes"] == w["vocab_sizes"] and m["rows_total"] == 300
    assert [s["rows"] for s in m["sources"]] == [120, 180]
    assert read_split(tmp_path / "two", "train").equals(read_split(tmp_path / "one", "train"))
    t = write_text(tmp_path / "test.txt", criteo_rows(5, label=False))
    with pytest.raises(RawInputError, match="differ"):
        run([d0, t], tmp_path / "mixed")


def test_dense_transforms(tmp_path):
    rows = criteo_rows(200, seed=9)
    f = write_text(tmp_path / "train.txt", rows)
    raw = np.array([[float(v) if v else np.nan for v in r[1:14]] for r in rows])
    for kind in ("log1p", "none"):
        meta = run([f], tmp_path / kind, dense=kind, split="sequential:1")
        assert meta["dense_transform"]["kind"] == kind
        got = read_split(tmp_path / kind, "train")[CRITEO_DENSE].to_numpy()
        want = apply_dense_transform(raw, kind, meta["dense_transform"]["params"], CRITEO_DENSE)
        assert np.allclose(got, want)
        assert meta["dense_transform"]["params"]["I2"]["missing"] == int(np.isnan(raw[:, 1]).sum())


# --------------------------------------------------------------------------- encodings


def test_min_count_and_hash_encodings(tmp_path):
    rows = criteo_rows(500, seed=10)
    f = write_text(tmp_path / "train.txt", rows)
    raw = pd.DataFrame(rows, columns=CRITEO_HEADER)
    k = 5
    meta = run([f], tmp_path / "mc", min_count=k, split="sequential:1")
    assert meta["categorical_encoding"] == {"kind": "min_count", "min_count": 5, "buckets": None}
    df = read_split(tmp_path / "mc", "train")
    for c in CRITEO_SPARSE:
        counts = raw[c][raw[c] != ""].value_counts()
        frequent = set(counts[counts >= k].index)
        assert meta["vocab_sizes"][c] == len(frequent) + 1
        is_freq = raw[c].isin(frequent).to_numpy()
        assert (df[c].to_numpy()[~is_freq] == 0).all() and (df[c].to_numpy()[is_freq] > 0).all()
    meta = run([f], tmp_path / "h", hash_buckets=16, split="sequential:1")
    assert meta["categorical_encoding"] == {"kind": "hash", "min_count": None, "buckets": 16}
    assert set(meta["vocab_sizes"].values()) == {17}
    df = read_split(tmp_path / "h", "train")
    for c in CRITEO_SPARSE:
        ids = df[c].to_numpy()
        assert ((ids == 0) == (raw[c] == "").to_numpy()).all()
        assert ids.max() <= 16
        assert (df[c].groupby(raw[c]).nunique() == 1).all()   # equal value -> equal id
    with pytest.raises(ValueError):
        run([f], tmp_path / "x", min_count=2, hash_buckets=4)


# --------------------------------------------------------------------------- bad input


def _bad_file(tmp_path, case):
    rows = criteo_rows(50, seed=11)
    f = tmp_path / f"{case}.txt"
    lines = ["\t".join(r) for r in rows]
    if case == "fields":
        lines[20] = "\t".join(rows[20][:37])                  # truncated line: 37 fields
        line = 21
    elif case == "nonnumeric":
        r = list(rows[30])
        r[3] = "12x"
        lines[30] = "\t".join(r)
        line = 31
    elif case == "label":
        r = list(rows[40])
        r[0] = "2"
        lines[40] = "\t".join(r)
        line = 41
    else:
        raise AssertionError(case)
    f.write_text("\n".join(lines) + "\n")
    return f, line


@pytest.mark.parametrize("case,problem", [("fields", "has 37 fields, expected 40"),
                                          ("nonnumeric", "integer field I3 is not a number: '12x'"),
                                          ("label", "label 2 is not 0 or 1")])
def test_bad_rows_raise_or_skip(tmp_path, capsys, case, problem):
    f, line = _bad_file(tmp_path, case)
    with pytest.raises(RawInputError) as e:
        run([f], tmp_path / "out")
    assert str(e.value) == f"{f}: line {line}: {problem}"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # CLI: message, no traceback, exit 2
    assert cli_main([str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{f}: line {line}: {problem}" in err and "Traceback" not in err
    assert "--skip-bad-rows" in err
    # skipped: counted and listed
    meta = run([f], tmp_path / "out", skip_bad_rows=True)
    assert meta["rows_total"] == 49
    assert meta["bad_rows"]["count"] == 1 and meta["bad_rows"]["first_lines"] == [line]
    assert meta["bad_rows"]["first"][0]["problem"] == problem
    assert cli_main([str(f), "--out", str(tmp_path / "out2"), "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad rows" in out and f"{f.name}:{line}" in out


def test_bad_rows_across_blocks_and_empty_lines(tmp_path):
    rows = criteo_rows(400, seed=12)
    lines = ["\t".join(r) for r in rows]
    bad_at = [7, 150, 151, 399]                    # 0-based rows made bad
    for i in bad_at[:3]:
        lines[i] = "\t".join(rows[i][:38])
    r = list(rows[399])
    r[0] = ""                                      # empty label
    lines[399] = "\t".join(r)
    lines.insert(200, "")                          # an empty line shifts later line numbers
    f = tmp_path / "day_3"
    f.write_text("\n".join(lines) + "\n")
    expect = [8, 151, 152, 401]
    with pytest.raises(RawInputError, match=r"day_3: line 8: has 38 fields"):
        run([f], tmp_path / "out", block_bytes=8192)
    meta = run([f], tmp_path / "out", block_bytes=8192, skip_bad_rows=True, dense="none",
               split="sequential:1")
    assert meta["bad_rows"]["first_lines"] == expect and meta["bad_rows"]["count"] == 4
    assert meta["bad_rows"]["first"][-1]["problem"] == "label is empty"
    got = read_split(tmp_path / "out", "train")["I1"].astype(int).tolist()
    assert got == [i for i in range(400) if i not in bad_at]


def test_bad_row_listing_is_capped(tmp_path):
    rows = criteo_rows(100, seed=13)
    lines = ["\t".join(r[:-1]) if i % 3 == 0 else "\t".join(r) for i, r in enumerate(rows)]
    f = tmp_path / "many.txt"
    f.write_text("\n".join(lines) + "\n")
    meta = run([f], tmp_path / "out", skip_bad_rows=True)
    assert meta["bad_rows"]["count"] == 34 and meta["rows_total"] == 66
    assert meta["bad_rows"]["first_lines"] == [1 + 3 * i for i in range(20)]


def test_empty_header_only_and_truncated_gzip(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(RawInputError, match=r"empty\.txt: line 1: empty file"):
        run([empty], tmp_path / "out")
    gz_empty = tmp_path / "empty.gz"
    gz_empty.write_bytes(gzip.compress(b""))
    with pytest.raises(RawInputError, match=r"empty\.gz: line 1: empty file"):
        run([gz_empty], tmp_path / "out")
    header = tmp_path / "header.csv"
    header.write_text(",".join(CRITEO_HEADER) + "\n")
    with pytest.raises(RawInputError, match=r"header\.csv: line 2: header but no data rows"):
        run([header], tmp_path / "out")
    rows = criteo_rows(3000, seed=14)
    data = gzip.compress(("\n".join("\t".join(r) for r in rows) + "\n").encode())
    trunc = tmp_path / "trunc.gz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RawInputError, match=r"trunc\.gz: line \d+: truncated gzip") as e:
        run([trunc], tmp_path / "out", skip_bad_rows=True)
    line = int(str(e.value).split("line ")[1].split(":")[0])
    assert 1 < line < 3000
    assert cli_main([str(trunc), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "truncated gzip" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert cli_main([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_existing_output_refused_and_overwrite(tmp_path, capsys):
    f = write_text(tmp_path / "train.txt", criteo_rows(50, seed=15))
    out = tmp_path / "out"
    assert cli_main([str(f), "--out", str(out), "--quiet"]) == 0
    before = (out / "meta.json").read_text()
    assert cli_main([str(f), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "meta.json").read_text() == before
    assert cli_main([str(f), "--out", str(out), "--quiet", "--overwrite", "--seed", "3"]) == 0
    assert read_meta(out)["seed"] == 3


def test_error_mid_run_leaves_nothing(tmp_path, monkeypatch):
    from ctr.data import dataset
    f = write_text(tmp_path / "train.txt", criteo_rows(300, seed=16))
    calls = {"n": 0}
    real = dataset.DatasetWriter.write

    def failing(self, split, table):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(self, split, table)

    monkeypatch.setattr(dataset.DatasetWriter, "write", failing)
    with pytest.raises(OSError, match="simulated"):
        run([f], tmp_path / "out", block_bytes=4096)
    assert calls["n"] == 3
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_killed_run_leaves_no_dataset(tmp_path):
    import os
    import signal
    import time
    f = write_text(tmp_path / "train.txt", criteo_rows(3000, seed=17))
    out = tmp_path / "out"
    code = ("import time, ctr.data.dataset as d\n"
            "real = d.DatasetWriter.write\n"
            "def slow(self, s, t):\n"
            "    real(self, s, t); print('WROTE', flush=True); time.sleep(60)\n"
            "d.DatasetWriter.write = slow\n"
            "from ctr.cli.preprocess import main\n"
            f"main([{str(f)!r}, '--out', {str(out)!r}, '--quiet'])\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert p.stdout.readline().strip() == "WROTE"
        assert any(q.name.startswith(".out.tmp-") for q in tmp_path.iterdir())
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    time.sleep(0.1)
    assert not out.exists()
    with pytest.raises(Exception):
        read_meta(out)


# --------------------------------------------------------------------------- CLI


def test_cli_summary_and_options(tmp_path, capsys):
    f = write_text(tmp_path / "train.txt", criteo_rows(120, seed=18))
    rc = cli_main([str(f), "--out", str(tmp_path / "o"), "--split", "random:0.8,0.1,0.1",
                   "--seed", "1", "--dense", "log1p", "--min-count", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train 96" in out and "valid 12" in out and "test 12" in out
    assert "positive rate" in out and "vocabularies (min_count=2" in out
    meta = read_meta(tmp_path / "o")
    assert meta["dense_transform"]["kind"] == "log1p" and meta["seed"] == 1
    assert cli_main([str(f), "--out", str(tmp_path / "p"), "--split", "random:0.5"]) == 2
    assert "sum to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([str(f), "--out", str(tmp_path / "q"), "--min-count", "2", "--hash-buckets", "8"])


def test_cli_synth_subcommand_wired(capsys):
    synth = pytest.importorskip("ctr.data.synth")
    if not hasattr(synth, "add_synth_arguments"):
        pytest.skip("ctr.data.synth has no add_synth_arguments yet")
    with pytest.raises(SystemExit) as e:
        cli_main(["synth", "--help"])
    assert e.value.code == 0
    assert "ctr-preprocess synth" in capsys.readouterr().out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "ctr.cli.preprocess", "--help"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0 and "--skip-bad-rows" in r.stdout and "--hash-buckets" in r.stdout


# --------------------------------------------------------------------------- real samples

# file -> (rows, positive rate to 3 decimals or None, format)
REAL = {
    "shichence__AutoInt/train_examples.txt": (10_000, 0.218, "criteo"),
    "ChenglongChen__kaggle-2014-criteo/tr.rx.csv": (1_999, 0.224, "csv"),
    "ChenglongChen__kaggle-2014-criteo/va.rx.csv": (1_999, 0.265, "csv"),
    "ChenglongChen__kaggle-2014-criteo/tr.r100000.csv": (403, 0.246, "csv"),
    "shenweichen__DeepCTR/examples/criteo_sample.txt": (200, 0.245, "csv"),
    "Lapis-Hong__Wide-ResDNN/data/sample.test": (10_000, None, "criteo-test"),
    "vmware-archive__hillview/data/criteo/criteoTab.csv": (1_000, 0.021, "criteo"),
    "Lapis-Hong__Wide-ResDNN/data/avazu/train": (8_999, 0.174, "avazu"),
    "Lapis-Hong__Wide-ResDNN/data/avazu/test": (1_000, 0.143, "avazu"),
    "aflaisler__kaggle-avazu-ctr/data/X_test_xsmall.csv": (15_000, 0.171, "avazu-x"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_samples(tmp_path, name):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    path = SHARED / name
    rows, rate, fmt = REAL[name]
    labels = [SHARED / "aflaisler__kaggle-avazu-ctr/data/y_test_xsmall.csv"] if fmt == "avazu-x" else None
    meta = run([path], tmp_path / "out", labels=labels)
    assert meta["rows_total"] == rows and meta["format"] == fmt
    assert meta["bad_rows"]["count"] == 0
    assert meta["splits"]["train"]["rows"] == round(0.9 * rows)
    if rate is None:
        assert meta["label"] is None and meta["positive_rate"] is None
    else:
        assert round(meta["positive_rate"], 3) == rate
    assert meta["dataset"] == ("avazu" if fmt.startswith("avazu") else "criteo")
    df = read_all(tmp_path / "out")
    for f, v in meta["vocab_sizes"].items():
        assert 0 <= df[f].min() and df[f].max() == v - 1
    if meta["dense_fields"]:
        x = df[meta["dense_fields"]].to_numpy()
        assert x.min() >= 0 and x.max() <= 1


def test_real_sample_round_trip_csv(tmp_path):
    """The DeepCTR sample (header, integers as floats): ids against a pandas reading."""
    path = SHARED / "shenweichen__DeepCTR/examples/criteo_sample.txt"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    meta = run([path], tmp_path / "out", split="sequential:1", dense="none")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = read_split(tmp_path / "out", "train")
    assert (df["label"].to_numpy() == raw["label"].astype(float).to_numpy()).all()
    want = raw[CRITEO_DENSE].replace("", np.nan).astype(float).fillna(0).to_numpy()
    assert np.allclose(df[CRITEO_DENSE].to_numpy(), want)
    for c in CRITEO_SPARSE:
        ids, vals = df[c].to_numpy(), raw[c].to_numpy()
        assert ((ids == 0) == (vals == "")).all()
        assert len(set(zip(ids.tolist(), vals.tolist()))) == len(set(vals.tolist()))
        assert meta["vocab_sizes"][c] == len(set(vals.tolist()) - {""}) + 1


def test_reader_blocks_line_numbers(tmp_path):
    rows = criteo_rows(500, seed=19)
    f = write_text(tmp_path / "train.txt", rows, gz=True)
    blocks = list(RawReader(detect_format(f), block_bytes=5000).blocks())
    assert len(blocks) > 3
    starts = [b.first_line for b in blocks]
    sizes = [b.num_rows for b in blocks]
    assert starts == [1 + sum(sizes[:i]) for i in range(len(blocks))]
    assert sum(sizes) == 500
    assert blocks[-1].raw_pos == f.stat().st_size


def test_labels_file_bad_value_and_gzip_members(tmp_path):
    rows = avazu_rows(60, seed=20)
    raw = pd.DataFrame(rows, columns=AVAZU_COLUMNS)
    xcols = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "device_ip")]
    xf = tmp_path / "X.csv.gz"
    # two concatenated gzip members (as `cat a.gz b.gz` makes)
    text = raw[xcols].to_csv(index=False).encode()
    cut = text.index(b"\n", len(text) // 2) + 1
    xf.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))
    y = raw["click"].tolist()
    y[9] = "7"
    yf = tmp_path / "y.txt"
    yf.write_text("\n".join(y) + "\n")                 # no header
    with pytest.raises(RawInputError, match=r"X\.csv\.gz: line 11: its label \(.*y\.txt line 10\) is 7"):
        run([xf], tmp_path / "out", labels=[yf])
    meta = run([xf], tmp_path / "out", labels=[yf], skip_bad_rows=True, split="sequential:1")
    assert meta["rows_total"] == 59 and meta["bad_rows"]["first_lines"] == [11]
    df = read_split(tmp_path / "out", "train")
    want = raw["click"].astype(float).drop(index=9).to_numpy()
    assert (df["label"].to_numpy() == want).all()
    assert meta["vocab_sizes"]["hour"] == raw["hour"].drop(index=9).nunique() + 1   # raw YYMMDDHH


def test_parquet_bad_label_names_row(tmp_path):
    rows = criteo_rows(30, seed=21)
    raw = pd.DataFrame(rows, columns=CRITEO_HEADER)
    raw.loc[12, "label"] = "3"
    f = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), f)   # all strings
    with pytest.raises(RawInputError, match=r"raw\.parquet: row 13: label 3 is not 0 or 1"):
        run([f], tmp_path / "out")
    meta = run([f], tmp_path / "out", skip_bad_rows=True)
    assert meta["rows_total"] == 29 and meta["bad_rows"]["first_lines"] == [13]


# --------------------------------------------------------------------------- split by files


def test_files_split_puts_exactly_the_last_day_in_test(tmp_path):
    """Criteo 1TB's protocol: day files in order, the last one the test split, whatever the
    days' sizes (ratios could not say it); valid aliases test; a 3-part split too."""
    sizes = [70, 50, 33]
    days = [write_text(tmp_path / f"day_{d}", criteo_rows(n, seed=d)) for d, n in enumerate(sizes)]
    meta = run(days, tmp_path / "out", split="files:2,1", min_count=2)
    assert {k: v["rows"] for k, v in meta["splits"].items()} == {"train": 120, "test": 33}
    assert meta["split_aliases"] == {"valid": "test"}
    assert meta["split"] == {"kind": "files", "seed": 0, "sizes": {"train": 120, "test": 33},
                             "files": {"train": ["day_0", "day_1"], "test": ["day_2"]}}
    test = read_split(tmp_path / "out", "test")
    want = pd.read_csv(days[2], sep="\t", header=None, names=CRITEO_HEADER, dtype=str,
                       keep_default_na=False)
    assert (test["label"].to_numpy() == want["label"].astype(float).to_numpy()).all()
    meta = run(days, tmp_path / "three", split="files:1,1,1", hash_buckets=100)
    assert {k: v["rows"] for k, v in meta["splits"].items()} == dict(zip(("train", "valid", "test"), sizes))


@pytest.mark.parametrize("split, inputs, message", [
    ("files:2,1", ["day_0", "day_1"], "add up to 3 files, but 2 input"),
    ("files:1,1", ["day_0", "day_10", "day_2"][:2], None),
    ("files:2,1", ["day_0", "day_10", "day_2"], "not in day order"),
    ("files:1.5,1", ["day_0", "day_1"], "whole numbers"),
    ("files:0,2", ["day_0", "day_1"], "each at least 1"),
    ("files:", ["day_0"], "each at least 1"),
    ("files:1,1,1,1", ["a", "b", "c", "d"], r"give 1 \(train\), 2"),
])
def test_files_split_refuses_bad_values_by_name(tmp_path, split, inputs, message):
    paths = [write_text(tmp_path / name, criteo_rows(5, seed=i)) for i, name in enumerate(inputs)]
    if message is None:
        run(paths, tmp_path / "out", split=split)        # day_0, day_10: in day order
        return
    with pytest.raises(ValueError, match=message):
        run(paths, tmp_path / "out", split=split)
    assert not (tmp_path / "out").exists()


def test_files_split_on_the_command_line(tmp_path, capsys):
    days = [write_text(tmp_path / f"day_{d}", criteo_rows(20, seed=d)) for d in range(3)]
    assert cli_main([*map(str, days), "--out", str(tmp_path / "o"), "--split", "files:2,1",
                     "--quiet"]) == 0
    assert read_meta(tmp_path / "o")["splits"]["test"]["rows"] == 20
    assert cli_main([str(days[0]), str(days[2]), str(days[1]), "--out", str(tmp_path / "p"),
                     "--split", "files:2,1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--split files:2,1" in err and "day order" in err
