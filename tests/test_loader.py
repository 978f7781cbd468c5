"""The in-memory loader: coverage, determinism, rank slices, KJT layout, bad datasets."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from ctr.data.dataset import DatasetError, DatasetSchema, DatasetWriter, read_meta, read_schema
from ctr.data.loader import BatchLoader, SplitTensors

SPARSE = ["C1", "C2", "C3"]
DENSE = ["I1", "I2"]
VOCAB = {"C1": 5, "C2": 50, "C3": 1000}


def write_tiny(path, n_train=1000, n_test=100, seed=0, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    meta = {"dataset": "custom", "label": "label", "dense_fields": DENSE, "sparse_fields": SPARSE,
            "vocab_sizes": dict(vocab)}
    with DatasetWriter(path, rows_per_file=300) as w:
        for split, n in (("train", n_train), ("test", n_test)):
            cols = {"label": pa.array(rng.integers(0, 2, n).astype(np.float32))}
            for f in DENSE:
                cols[f] = pa.array(rng.random(n).astype(np.float32))
            for f in SPARSE:
                cols[f] = pa.array(rng.integers(0, VOCAB[f], n).astype(np.int32))
            w.write(split, pa.table(cols))
        w.commit(meta)
    return path


def test_dataset_layout_and_meta(tmp_path):
    d = write_tiny(tmp_path / "ds")
    meta = read_meta(d)
    assert meta["splits"]["train"]["rows"] == 1000
    assert len(meta["splits"]["train"]["files"]) == 4  # 300 rows per file
    assert meta["split_aliases"]["valid"] == "test"
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_schema_is_read_once_and_typed(tmp_path):
    d = write_tiny(tmp_path / "ds")
    ds = read_schema(d)
    assert isinstance(ds, DatasetSchema) and ds.path == d and ds.family == "custom"
    assert ds.label == "label" and ds.sparse_fields == tuple(SPARSE) and ds.dense_fields == tuple(DENSE)
    assert dict(ds.vocab_sizes) == VOCAB and ds.table_rows == sum(VOCAB.values())
    assert ds.rows("train") == 1000 and ds.rows("valid") == ds.rows("test") == 100
    assert ds.resolve_split("valid") == "test" and ds.same_split("valid", "test")
    assert [p.name for p in ds.split_files("train")] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert ds.oracle_test_auc is None and ds.meta["schema_version"] == read_meta(d)["schema_version"]
    with pytest.raises(TypeError):
        ds.vocab_sizes["C1"] = 7                      # read-only: one copy, nobody edits it
    with pytest.raises(DatasetError, match=r"split 'nope' not in dataset \(has \['test', 'train'\]\)"):
        ds.rows("nope")
    (d / ds.splits["train"].files[1]).unlink()
    with pytest.raises(DatasetError, match="lists missing files .*part-00001"):
        ds.split_files("train")
    # The loader takes the schema already read: nothing is parsed twice.
    assert SplitTensors.load(read_schema(write_tiny(tmp_path / "ds2")), "test").num_rows == 100


def test_unlabelled_dataset_refused_by_name(tmp_path):
    d = write_tiny(tmp_path / "ds")
    meta = json.loads((d / "meta.json").read_text())
    meta["label"] = None
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"{d}: dataset has no label column"):
        SplitTensors.load(d, "train")


def test_split_tensors_round_trip(tmp_path):
    d = write_tiny(tmp_path / "ds")
    data = SplitTensors.load(d, "train")
    assert data.ids.dtype == torch.int32 and data.ids.shape == (1000, 3)
    assert data.dense.dtype == torch.float32 and data.dense.shape == (1000, 2)
    import pyarrow.parquet as pq
    t = pa.concat_tables([pq.read_table(d / f) for f in read_meta(d)["splits"]["train"]["files"]])
    assert np.array_equal(data.ids[:, 2].numpy(), t.column("C3").to_numpy())
    assert np.allclose(data.dense[:, 0].numpy(), t.column("I1").to_numpy())
    valid = SplitTensors.load(d, "valid")  # alias of test
    assert valid.num_rows == 100


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_covers_every_row_once(tmp_path, drop_last):
    data = SplitTensors.load(write_tiny(tmp_path / "ds"), "train")
    loader = BatchLoader(data, batch_size=128, seed=3, drop_last=drop_last)
    seen = torch.cat([b.global_ids[:, 2] for b in loader.epoch(0)])
    assert len(loader) == (1000 // 128 if drop_last else 8)
    if not drop_last:
        assert sorted(seen.tolist()) == sorted(data.ids[:, 2].tolist())
    else:
        assert seen.numel() == 7 * 128


def test_shuffle_deterministic_by_seed_and_epoch(tmp_path):
    data = SplitTensors.load(write_tiny(tmp_path / "ds"), "train")
    a = BatchLoader(data, 100, seed=1).order(0)
    assert torch.equal(a, BatchLoader(data, 100, seed=1).order(0))
    assert not torch.equal(a, BatchLoader(data, 100, seed=1).order(1))
    assert not torch.equal(a, BatchLoader(data, 100, seed=2).order(0))
    # resuming mid-epoch replays the same batches
    full = list(BatchLoader(data, 100, seed=1).epoch(0))
    tail = list(BatchLoader(data, 100, seed=1).epoch(0, start_step=4))
    assert all(torch.equal(x.global_ids, y.global_ids) for x, y in zip(full[4:], tail))


def test_kjt_layout(tmp_path):
    data = SplitTensors.load(write_tiny(tmp_path / "ds"), "train")
    b = next(BatchLoader(data, 64, seed=0).epoch(0))
    kjt = b.sparse
    assert kjt.keys() == SPARSE
    for j, f in enumerate(SPARSE):
        assert torch.equal(kjt[f].values(), b.global_ids[:, j].long())
        assert torch.equal(kjt[f].lengths(), torch.ones(64, dtype=kjt[f].lengths().dtype))


@pytest.mark.parametrize("batch", [64, 63])
def test_rank_slices_partition_the_global_batch(tmp_path, batch):
    data = SplitTensors.load(write_tiny(tmp_path / "ds"), "train")
    world = 2
    per_rank = [list(BatchLoader(data, batch, seed=5, rank=r, world_size=world).epoch(0))
                for r in range(world)]
    for steps in zip(*per_rank):
        g = steps[0].global_ids
        assert all(torch.equal(s.global_ids, g) for s in steps)
        local = torch.cat([s.sparse["C2"].values() for s in steps])
        assert torch.equal(local, g[:, 1].long())
        assert sum(s.labels.numel() for s in steps) == steps[0].global_size


def test_bad_datasets_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no meta.json"):
        SplitTensors.load(tmp_path, "train")
    d = write_tiny(tmp_path / "ds")
    meta = json.loads((d / "meta.json").read_text())
    meta["vocab_sizes"]["C3"] = 10  # ids up to 999 no longer fit
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="C3"):
        SplitTensors.load(d, "train")
    with pytest.raises(DatasetError, match="split 'nope'"):
        SplitTensors.load(d, "nope")


def test_writer_refuses_existing_and_cleans_up_on_error(tmp_path):
    d = write_tiny(tmp_path / "ds")
    with pytest.raises(FileExistsError):
        DatasetWriter(d)
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "new") as w:
            w.write("train", pa.table({"label": pa.array([1.0], pa.float32())}))
            raise RuntimeError("killed")
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob(".new.tmp-*"))
