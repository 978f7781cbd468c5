"""The streaming loader: coverage across ranks, determinism, bit-exact resume, world-size
independence, per-rank files, bounded memory, bad input named by file; the loader choice;
whole runs with --loader stream (resume, 2 ranks == 1 rank, ctr-eval)."""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ctr.data.dataset import DatasetError, DatasetWriter, read_meta, read_schema
from ctr.data.loader import BatchLoader, SplitTensors
from ctr.data.source import choose_loader, memory_need
from ctr.data.stream import SplitLayout, StreamLoader, StreamPlan, eval_loader
from ctr.distributed.env import DistEnv

SPARSE, DENSE = ["C1", "C2"], ["I1", "I2"]


def write_rows(path, n=1000, rows_per_file=300, row_group_rows=64, n_test=130, **writer):
    """C1 is the row's number (vocabulary n), I1 the same as a float, label its parity: every
    batch row says which row it is and that its columns belong together."""
    rng = np.random.default_rng(0)

    def table(k, offset):
        rid = np.arange(offset, offset + k)
        return pa.table({"label": pa.array((rid % 2).astype(np.float32)),
                         "I1": pa.array(rid.astype(np.float32)),
                         "I2": pa.array(rng.random(k).astype(np.float32)),
                         "C1": pa.array(rid.astype(np.int32)),
                         "C2": pa.array(rng.integers(0, 7, k).astype(np.int32))})
    meta = {"dataset": "custom", "label": "label", "dense_fields": DENSE, "sparse_fields": SPARSE,
            "vocab_sizes": {"C1": max(n, n_test), "C2": 7}}
    with DatasetWriter(path, rows_per_file=rows_per_file, row_group_rows=row_group_rows, **writer) as w:
        for lo in range(0, n, 97):                        # tables of any size: groups stay exact
            w.write("train", table(min(97, n - lo), lo))
        w.write("test", table(n_test, 0))
        w.commit(meta)
    return path


@pytest.fixture
def rows_ds(tmp_path):
    return read_schema(write_rows(tmp_path / "ds"))


def check_rows(b):
    """The columns of every row of a batch belong to the same source row."""
    rid = b.ids[:, 0].long()
    assert torch.equal(b.dense[:, 0].long(), rid)
    assert torch.equal(b.labels.long(), rid % 2)


def run_epoch(ls, epoch=0, start=0):
    """[(step's local batches per rank)] for one epoch of every rank's loader."""
    return list(zip(*[list(x.epoch(epoch, start)) for x in ls]))


# ---------------------------------------------------------------- the writer's row groups

def test_writer_writes_exact_row_groups_and_records_them(tmp_path):
    d = write_rows(tmp_path / "ds")
    meta = read_meta(d)
    assert meta["row_group_rows"] == 64
    train = meta["splits"]["train"]
    assert train["row_groups"] == 3 * 5 + 2 and train["rows"] == 1000 and len(train["files"]) == 4
    for i, f in enumerate(train["files"]):     # 300 rows per file: 4 x 64 + 44; the last file 100
        md = pq.ParquetFile(d / f).metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        assert sizes == ([64, 64, 64, 64, 44] if i < 3 else [64, 36]), sizes
    assert train["positives"] == 500 and read_schema(d).positive_rate("train") == 0.5


# ---------------------------------------------------------------- coverage, order, resume

@pytest.mark.parametrize("world,streams,batch,drop_last", [
    (1, 1, 128, False), (1, 1, 128, True), (2, 2, 128, False), (2, 2, 100, True),
    (3, 3, 128, False), (2, 4, 64, False), (1, 3, 333, False), (4, 4, 1000, False)])
def test_every_row_once_per_epoch_across_ranks(rows_ds, world, streams, batch, drop_last):
    layout = SplitLayout(rows_ds, "train")
    ls = [StreamLoader(layout, batch, seed=3, streams=streams, rank=r, world_size=world,
                       shuffle_buffer=150, drop_last=drop_last) for r in range(world)]
    assert len({len(x) for x in ls}) == 1                  # every rank: the same number of steps
    assert len(ls[0]) == (1000 // batch if drop_last else -(-1000 // batch))
    for epoch in (0, 1):
        seen = []
        for step, parts in enumerate(run_epoch(ls, epoch)):
            assert [b.labels.numel() for b in parts] == ls[0].rank_sizes(step)
            assert sum(b.labels.numel() for b in parts) == parts[0].global_size
            assert parts[0].global_size == (batch if step < 1000 // batch else 1000 % batch)
            for b in parts:
                check_rows(b)
                seen += b.ids[:, 0].tolist()
        assert len(seen) == len(set(seen))                  # never twice
        if drop_last:
            assert len(seen) == len(ls[0]) * batch
        else:
            assert sorted(seen) == list(range(1000))        # every row, exactly once


def test_order_is_fixed_by_seed_and_epoch_and_shuffled(rows_ds):
    layout = SplitLayout(rows_ds, "train")

    def order(seed, epoch, batch=100, **kw):
        return torch.cat([b.ids[:, 0] for b in StreamLoader(layout, batch, seed=seed, shuffle_buffer=200,
                                                            **kw).epoch(epoch)])
    a = order(1, 0)
    assert torch.equal(a, order(1, 0))
    assert not torch.equal(a, order(1, 1)) and not torch.equal(a, order(2, 0))
    first = a[:100]
    assert len({int(i) // 64 for i in first}) >= 2          # a batch mixes row groups
    assert not torch.equal(first.sort().values, torch.arange(100))
    dropped = [set(range(1000)) - set(order(1, e, batch=90, drop_last=True).tolist()) for e in (0, 1)]
    assert len(dropped[0]) == 10 and dropped[0] != dropped[1]   # other tail rows each epoch


@pytest.mark.parametrize("streams,buffer", [(1, 100), (2, 150), (3, 64), (1, 10**6)])
def test_resume_at_any_step_replays_the_same_batches_bit_for_bit(rows_ds, streams, buffer):
    layout = SplitLayout(rows_ds, "train")
    ld = StreamLoader(layout, 90, seed=7, streams=streams, shuffle_buffer=buffer)
    full = list(ld.epoch(2))
    for k in range(len(full) + 1):
        tail = list(StreamLoader(layout, 90, seed=7, streams=streams, shuffle_buffer=buffer).epoch(2, k))
        assert len(tail) == len(full) - k
        for x, y in zip(full[k:], tail):
            for f in ("ids", "dense", "labels", "global_ids"):
                assert torch.equal(getattr(x, f), getattr(y, f)), (k, f)


def test_the_global_batch_does_not_depend_on_the_world_size(rows_ds):
    """With 4 streams, 1, 2 and 4 ranks cut the same global batches in the same row order."""
    layout = SplitLayout(rows_ds, "train")
    runs = {}
    for world in (1, 2, 4):
        ls = [StreamLoader(layout, 128, seed=5, streams=4, rank=r, world_size=world, shuffle_buffer=100)
              for r in range(world)]
        runs[world] = [torch.cat([b.ids for b in parts]) for parts in run_epoch(ls, 1)]
    for world in (2, 4):
        assert len(runs[world]) == len(runs[1])
        assert all(torch.equal(a, b) for a, b in zip(runs[1], runs[world]))


def test_each_rank_reads_only_its_own_files(tmp_path, monkeypatch):
    ds = read_schema(write_rows(tmp_path / "ds", n=1024, rows_per_file=256, row_group_rows=64))
    read: dict[int, set] = {0: set(), 1: set()}
    real = SplitLayout.read_into

    def spy(self, piece, *a):
        read[self.rank].add(self.files[self.groups[piece.group].file].name)
        return real(self, piece, *a)
    monkeypatch.setattr(SplitLayout, "read_into", spy)
    for r in (0, 1):
        layout = SplitLayout(ds, "train")
        layout.rank = r
        ld = StreamLoader(layout, 256, seed=0, streams=2, rank=r, world_size=2, shuffle_buffer=128)
        for _ in ld.epoch(0):
            pass
        assert {p.name for p in ld.files()} == read[r]
    assert read[0] == {"part-00000.parquet", "part-00001.parquet"}
    assert read[1] == {"part-00002.parquet", "part-00003.parquet"}


def test_a_split_with_fewer_row_groups_than_streams_is_refused(tmp_path):
    ds = read_schema(write_rows(tmp_path / "ds", n=200, rows_per_file=1000, row_group_rows=100))
    layout = SplitLayout(ds, "train")
    with pytest.raises(DatasetError, match=r"split 'train' has 2 row group\(s\), fewer than the 3 "
                                           r"streams .*--row-group-rows .*--loader memory"):
        StreamLoader(layout, 60, streams=3, world_size=3)
    # evaluation reads in order and may share a row group between ranks
    env = DistEnv(1, 3, 1, torch.device("cpu"), "gloo")
    assert len(eval_loader(layout, 60, env)) == 4


def test_evaluation_reads_every_row_once_in_order(rows_ds):
    layout = SplitLayout(rows_ds, "test")
    envs = [DistEnv(r, 2, r, torch.device("cpu"), "gloo") for r in range(2)]
    ls = [eval_loader(layout, 64, e) for e in envs]
    steps = run_epoch(ls)
    assert len(steps) == -(-130 // 64)
    assert torch.equal(torch.cat([b.ids[:, 0] for b in (parts[0] for parts in steps)]), torch.arange(65))
    assert sorted(torch.cat([b.ids[:, 0] for parts in steps for b in parts]).tolist()) == list(range(130))
    assert steps[0][0].global_ids.numel() == 0               # evaluation gathers nothing


def test_leaving_an_epoch_early_stops_the_reader_thread(rows_ds):
    ld = StreamLoader(SplitLayout(rows_ds, "train"), 10, shuffle_buffer=64)
    it = ld.epoch(0)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("ctr-stream")]


def test_positions_are_recorded_and_checked(rows_ds):
    layout = SplitLayout(rows_ds, "train")
    ld = StreamLoader(layout, 128, seed=0, streams=2, shuffle_buffer=100)
    pos = ld.position(1, 3)
    assert pos["consumed"] == [192, 192] and pos["layout"] == layout.fingerprint
    ld.check_position(json.loads(json.dumps(pos)))
    with pytest.raises(ValueError, match="streams: checkpoint 2, now 1"):
        StreamLoader(layout, 128, streams=1, shuffle_buffer=100).check_position(pos)
    with pytest.raises(ValueError, match="loader: checkpoint 'stream', now 'memory'"):
        BatchLoader(SplitTensors.load(rows_ds, "train"), 128).check_position(pos)


# ---------------------------------------------------------------- bounded memory

def test_memory_held_is_bounded_by_the_window_not_the_split(rows_ds):
    layout = SplitLayout(rows_ds, "train")
    for streams, buffer in ((1, 100), (2, 64), (1, 300)):
        ld = StreamLoader(layout, 50, streams=streams, shuffle_buffer=buffer)
        for epoch in range(3):
            for _ in ld.epoch(epoch, start_step=epoch):
                pass
        assert 0 < ld.peak_resident_rows <= 2 * max(buffer, 64) * streams
        assert ld.peak_resident_rows + 5 * 50 <= ld.resident_bound_rows() < 1000
        # two buffers per stream, made once and reused by every window of every epoch
        assert [p.made for p in ld._pools.values()] == [2] * streams


MEASURE = textwrap.dedent('''
    import json, sys, psutil
    from ctr.data.dataset import read_schema
    from ctr.data.stream import SplitLayout, StreamLoader
    layout = SplitLayout(read_schema(sys.argv[1]), "train")
    loader = StreamLoader(layout, 4096, seed=0, shuffle_buffer=int(sys.argv[2]))
    proc = psutil.Process()
    it = loader.epoch(0)
    next(it)                                   # threads started, first window read
    base, peak, rows = proc.memory_info().rss, 0, 0
    for i, b in enumerate(it):
        rows += b.labels.numel()
        if i % 10 == 0:
            peak = max(peak, proc.memory_info().rss)
    print(json.dumps({"base": base, "peak": peak, "rows": rows, "resident_rows": loader.peak_resident_rows}))
''')


@pytest.mark.slow
def test_rss_stays_flat_over_an_epoch_much_larger_than_the_buffer(tmp_path):
    """800K Criteo-shaped rows (128 MB in memory) streamed with a 16K-row window: the process
    grows by a small fraction of the split over the whole epoch."""
    n, rng = 800_000, np.random.default_rng(0)
    dense = [f"I{i}" for i in range(1, 14)]
    sparse = [f"C{i}" for i in range(1, 27)]
    with DatasetWriter(tmp_path / "big", row_group_rows=8192, rows_per_file=200_000) as w:
        for lo in range(0, n, 100_000):
            cols = {"label": pa.array(rng.integers(0, 2, 100_000).astype(np.float32))}
            cols.update({f: pa.array(rng.random(100_000, dtype=np.float32)) for f in dense})
            cols.update({f: pa.array(rng.integers(0, 1000, 100_000).astype(np.int32)) for f in sparse})
            w.write("train", pa.table(cols))
        w.commit({"label": "label", "dense_fields": dense, "sparse_fields": sparse,
                  "vocab_sizes": {f: 1000 for f in sparse}})
    split_mb = n * 160 / 2**20
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "big"), "16384"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.splitlines()[-1])
    grown = (m["peak"] - m["base"]) / 2**20
    assert m["rows"] == n - 4096 and m["resident_rows"] <= 2 * 16384
    assert grown < 0.15 * split_mb, (grown, split_mb, m)


# ---------------------------------------------------------------- bad input, named by file

def test_bad_files_at_start_are_named(tmp_path):
    d = write_rows(tmp_path / "ds")
    ds = read_schema(d)
    f1 = d / ds.splits["train"].files[1]
    good = f1.read_bytes()
    f1.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=f"{re.escape(str(f1))}: cannot read this Parquet file"):
        SplitLayout(ds, "train")
    t = pq.read_table(pa.BufferReader(good)).rename_columns(["label", "I1", "I2", "C1", "X2"])
    pq.write_table(t, f1)                                    # another file's columns
    with pytest.raises(DatasetError, match=re.escape(f"{f1}: columns missing: ['C2']")):
        SplitLayout(ds, "train")
    pq.write_table(pq.read_table(pa.BufferReader(good)).slice(0, 10), f1)
    with pytest.raises(DatasetError, match="split 'train' has 710 rows in its Parquet files, meta.json says 1,000"):
        SplitLayout(ds, "train")
    f1.unlink()
    with pytest.raises(DatasetError, match="lists missing files .*part-00001"):
        SplitLayout(ds, "train")
    meta = json.loads((d / "meta.json").read_text())
    meta["schema_version"] = 99
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="meta.json: schema_version 99, this ctr reads 1"):
        read_schema(d)


@pytest.mark.parametrize("damage", ["truncate", "delete", "regroup", "vocab"])
def test_a_file_damaged_after_the_start_stops_the_epoch_naming_it(tmp_path, damage):
    """Nothing is skipped: the next batch that needs the file raises, naming it."""
    d = write_rows(tmp_path / "ds", n=1000, rows_per_file=500, row_group_rows=50)
    ds = read_schema(d)
    ld = StreamLoader(SplitLayout(ds, "train"), 20, seed=0, shuffle_buffer=50, prefetch=1)
    it = ld.epoch(0)
    next(it)                                   # the run has started
    for f in ds.splits["train"].files:         # every file: whichever the reader needs next
        p = d / f
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif damage == "delete":
            p.unlink()
        elif damage == "regroup":
            pq.write_table(pq.read_table(p), p, row_group_size=30)
        else:
            t = pq.read_table(p)
            pq.write_table(t.set_column(3, "C1", pa.array(np.full(t.num_rows, 5000, np.int32))), p,
                           row_group_size=50)
    match = {"truncate": "cannot be read", "delete": "cannot be read", "regroup": "the file changed since",
             "vocab": r"ids outside the vocabulary in fields \['C1'\]"}[damage]
    with pytest.raises(DatasetError, match=rf"{re.escape(str(d))}/train/part-0000[01].parquet: row group \d+: .*{match}"):
        for _ in it:
            pass


# ---------------------------------------------------------------- which loader

def test_auto_takes_memory_when_the_copies_fit_the_budget(rows_ds):
    need = memory_need(rows_ds)
    assert need == (1000 + 130) * rows_ds.row_bytes + 8 * 1000
    assert choose_loader(rows_ds, "auto", budget_gib=need / 2**30)[0] == "memory"
    kind, why = choose_loader(rows_ds, "auto", budget_gib=need / 2**30, local_ranks=2)
    assert kind == "stream" and "2 x" in why and "exceed" in why
    assert choose_loader(rows_ds, "auto", budget_gib=0)[0] == "stream"
    assert choose_loader(rows_ds, "memory", budget_gib=0) == ("memory", "asked for")
    assert choose_loader(rows_ds, "auto")[0] == "memory"     # half the free RAM: a few KB fit
    with pytest.raises(ValueError, match="loader must be one of"):
        choose_loader(rows_ds, "disk")


def test_stream_plan_gives_every_row_to_one_stream():
    for rows, batch, streams in ((1000, 128, 3), (10800, 1024, 2), (7, 7, 7), (100, 64, 8)):
        p = StreamPlan.make(rows, batch, streams, False)
        assert sum(p.stream_rows(v) for v in range(streams)) == rows
        assert [p.start[v] + p.stream_rows(v) for v in range(streams - 1)] == list(p.start[1:])
        assert sum(p.slot) == batch and sum(p.global_size(s) for s in range(p.steps)) == rows


# ---------------------------------------------------------------- whole runs

SMALL = ["--mlp", "32,32", "--eval-batch", "4096", "--quiet", "--device", "cpu", "--embedding-lr", "1e-2"]


@pytest.fixture(scope="module")
def stream_dataset(tmp_path_factory):
    """The 12k synthetic rows of ``small_dataset`` as 2 train files of 6 row groups each."""
    from ctr.data.synth import generate_dataset
    path = tmp_path_factory.mktemp("stream") / "synthetic-12k"
    generate_dataset(path, 12_000, seed=0, progress=False, rows_per_file=5400, row_group_rows=900)
    return path


def train(*args) -> int:
    from ctr.cli import train as train_cli
    return train_cli.main([str(a) for a in args] + SMALL)


def same_weights(a, b, exact=True):
    from tests.test_train import full_tables
    ta, da = full_tables(a)
    tb, db = full_tables(b)
    assert ta.keys() == tb.keys() and da.keys() == db.keys()
    for k in list(ta) + list(da):
        x, y = (ta[k], tb[k]) if k in ta else (da[k], db[k])
        if exact:
            assert torch.equal(x, y), k
        else:
            assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), (k, (x - y).abs().max())


def test_auto_streams_over_budget_and_ctr_eval_agrees(stream_dataset, tmp_path):
    from ctr.cli import eval as eval_cli
    out = tmp_path / "run"
    assert train("--model", "deepfm", "--batch", "2k", "--data", stream_dataset, "--epochs", 2,
                 "--loader-memory-budget", 0, "--out", out) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["loader"], cfg["loader_streams"]) == ("stream", 1)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["global_steps"] == 12
    for loader in ("stream", "memory"):       # either reader gives the run's own test metrics
        assert eval_cli.main(["--run", str(out), "--loader", loader]) == 0
        ev = json.loads((out / "eval-test.json").read_text())
        assert ev["loader"] == loader and ev["auc"] == pytest.approx(s["test_auc"], abs=1e-7)


def test_stream_resume_equals_the_uninterrupted_run_bit_for_bit(stream_dataset, tmp_path):
    common = ["--model", "dcn", "--batch", "2k", "--data", stream_dataset, "--epochs", 2,
              "--loader", "stream", "--shuffle-buffer", 2000]
    assert train(*common, "--out", tmp_path / "a") == 0
    assert train(*common, "--out", tmp_path / "b", "--max-steps", 8) == 0   # mid epoch 2
    info = json.loads((tmp_path / "b" / "checkpoint" / "latest.json").read_text())
    assert info["data"]["consumed"] == [4096] and info["data"]["loader"] == "stream"
    (tmp_path / "b" / "summary.json").unlink()
    # --loader auto on resume: the run's loader, not what the free memory would pick now
    resume = [a if a != "stream" else "auto" for a in common]
    assert train(*resume, "--out", tmp_path / "b", "--resume") == 0
    same_weights(tmp_path / "a", tmp_path / "b", exact=True)
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert sb["global_steps"] == 12 and sb["test_auc"] == sa["test_auc"]


def test_resume_over_a_rewritten_split_is_refused(tmp_path, capsys):
    from ctr.data.synth import generate_dataset
    data = tmp_path / "d"
    generate_dataset(data, 6000, seed=0, progress=False, row_group_rows=500)
    out = tmp_path / "run"
    assert train("--batch", "1k", "--data", data, "--loader", "stream", "--out", out, "--max-steps", 2) == 0
    (out / "summary.json").unlink()
    generate_dataset(data, 6000, seed=0, progress=False, row_group_rows=400, overwrite=True)
    capsys.readouterr()
    assert train("--batch", "1k", "--data", data, "--out", out, "--resume") == 2
    assert "layout: checkpoint" in capsys.readouterr().err


def test_two_streaming_ranks_on_different_files_equal_one_rank(stream_dataset, tmp_path):
    """gloo, 2 ranks, each reading its own file: the same weights after 6 CowClip steps as one
    process reading both streams (--loader-streams 2); the 2-rank checkpoint resumes in one
    process to the 1-process run's weights."""
    ds = read_schema(stream_dataset)
    files = [{p.name for p in StreamLoader(SplitLayout(ds, "train"), 1024, streams=2, rank=r,
                                           world_size=2).files()} for r in (0, 1)]
    assert files == [{"part-00000.parquet"}, {"part-00001.parquet"}]
    common = ["--model", "deepfm", "--batch", "1k", "--data", str(stream_dataset), "--loader", "stream",
              "--max-steps", "6", "--r", "1e-2", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "ctr.cli.train", *common, "--loader-streams", "2",
                          "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "ctr.cli.train", *common, "--nproc", "2", "--sharding",
                          "row_wise", "--max-steps", "3", "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["loader_streams"] == 2
    # every rank's peak RSS and table shards (row_wise: each holds part of every table, of the
    # embedding (dim 10) and the first-order (dim 1) tables)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["peak_rss_mb"] > 50 for r in ranks)
    assert all(0 < r["peak_rss_mb_before_eval"] <= r["peak_rss_mb"] for r in ranks)
    assert summary["steady_samples_per_second"] > 0     # steps 2 and 3, each from the one before
    assert sum(r["table_rows"] for r in ranks) == 2 * ds.table_rows
    assert sum(r["table_bytes"] for r in ranks) == (10 + 1) * 4 * ds.table_rows
    assert 0 < ranks[0]["table_rows"] < 2 * ds.table_rows
    (tmp_path / "two" / "summary.json").unlink()
    three = ["--model", "deepfm", "--batch", "1k", "--data", str(stream_dataset), "--max-steps", "6",
             "--r", "1e-2", *SMALL]
    assert train(*three[:-len(SMALL)], "--out", tmp_path / "two", "--resume") == 0   # 1 process, V = 2
    same_weights(tmp_path / "one", tmp_path / "two", exact=False)
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert s2["test_auc"] == pytest.approx(s1["test_auc"], abs=1e-4)
    assert [(r["rank"], r["table_rows"]) for r in s1["ranks"]] == [(0, 2 * ds.table_rows)]


def test_the_trainer_takes_any_run_data(stream_dataset, tmp_path):
    """make_loader: the trainer uses whatever RunData it is given, and asks it nothing else."""
    from dataclasses import replace

    from ctr.train.config import load_config
    from ctr.train.trainer import Trainer, default_loader
    epochs = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def epoch(self, e, start=0):
            epochs.append((e, start))
            return self.inner.epoch(e, start)

        def position(self, e, k):
            return {**self.inner.position(e, k), "loader": "recording"}

        def check_position(self, saved):
            pass

    def factory(ds, cfg, env):
        data = default_loader(ds, cfg, env)
        return replace(data, kind="recording", train=Recording(data.train))
    cfg = load_config("wd", "synthetic", overrides={"batch": 2048, "data": str(stream_dataset), "epochs": 2,
                                                    "out": str(tmp_path / "r"), "mlp": [16], "loader": "stream"})
    assert Trainer(cfg, quiet=True, make_loader=factory).run()["status"] == "ok"
    assert epochs == [(0, 0), (1, 0)]
    assert json.loads((tmp_path / "r" / "checkpoint" / "latest.json").read_text())["data"]["loader"] == "recording"
