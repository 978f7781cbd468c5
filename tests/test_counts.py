"""CowClip's counts from TorchRec's sharded lookups (ctr.distributed.counts) at 2 gloo ranks.

The lookup-derived counts must equal, row for row, the counts from the global batch's ids under
every sharding type; and a streaming TorchRec run must not all-gather the [B, F] ids (the torch
backend still does: it is the control that the counting patch sees the calls)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("torchrec")

SHARDINGS = ("data_parallel", "table_wise", "row_wise", "auto")
WORLD = 2


def _set_rank_env(rank: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(WORLD)})


def _compare_worker(rank: int, data: str, out_dir: str) -> None:
    """Builds each sharding's model, runs training forwards and compares the counts."""
    from ctr.data.dataset import read_schema
    from ctr.data.loader import BatchLoader, SplitTensors
    from ctr.distributed.counts import IdCounter, LookupCounts
    from ctr.distributed.env import DistEnv
    from ctr.models import ModelConfig
    from ctr.train.build import build_model_parts

    torch.set_num_threads(1)
    _set_rank_env(rank)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD)
    result: dict[str, dict] = {}
    try:
        env = DistEnv(rank, WORLD, rank, torch.device("cpu"), "gloo")
        ds = read_schema(data)
        fields = list(ds.sparse_fields)
        split = SplitTensors.load(ds, "train")
        for sharding in SHARDINGS:
            parts = build_model_parts("deepfm", ModelConfig(embedding_dim=4, mlp=(8,)), ds, env,
                                      sharding, seed=0, embedding_backend="torchrec")
            reference = IdCounter(parts.groups, fields)
            loader = BatchLoader(split, 999, seed=1, rank=rank, world_size=WORLD)   # 500 / 499 rows
            checked, mismatches = 0, []
            for step, batch in enumerate(loader.epoch(0)):
                if step == 3:
                    break
                parts.module.train()
                parts.module(batch.dense, batch.ids)
                got = parts.row_counts(torch.empty((0, len(fields)), dtype=torch.int32))
                assert isinstance(got, LookupCounts)
                want = reference.of(batch.global_ids)
                for g in parts.groups:
                    tables = ",".join(s.table for s in g.shards)
                    rows, cnt = got.present(g)
                    rows_w, cnt_w = want.present(g)
                    if not (torch.equal(got.counts(g), want.counts(g)) and torch.equal(rows, rows_w)
                            and torch.equal(cnt, cnt_w)):
                        mismatches.append(f"step {step} group {tables}")
                    checked += 1
            parts.module.eval()
            with torch.no_grad():
                parts.module(batch.dense, batch.ids)   # an evaluation forward records nothing
            try:
                parts.row_counts(batch.global_ids).present(parts.groups[0])
                eval_recorded = True
            except RuntimeError:
                eval_recorded = False
            result[sharding] = {"checked": checked, "mismatches": mismatches,
                                "kinds": sorted({k for k, _ in parts.plan.values()}),
                                "eval_recorded": eval_recorded}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_lookup_counts_equal_the_global_batchs_under_every_sharding(small_dataset, tmp_path):
    mp.spawn(_compare_worker, args=(str(small_dataset), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for sharding in SHARDINGS:
            r = result[sharding]
            assert r["checked"] > 0, (rank, sharding)
            assert r["mismatches"] == [], (rank, sharding)
            assert not r["eval_recorded"], (rank, sharding)
            if sharding != "auto":
                assert r["kinds"] == [sharding]


def _train_worker(rank: int, data: str, out_dir: str) -> None:
    """Trains 3 streaming steps per backend, counting the calls of global_batch_ids."""
    import ctr.distributed.gather as gather
    from ctr.train.config import load_config
    from ctr.train.trainer import Trainer

    torch.set_num_threads(1)
    _set_rank_env(rank)
    calls: list[tuple[int, ...]] = []
    original = gather.global_batch_ids

    def counting(local_ids, sizes, device=None):
        calls.append(tuple(local_ids.shape))
        return original(local_ids, sizes, device)
    gather.global_batch_ids = counting    # type: ignore[assignment]  # this process only
    result = {}
    for backend, sharding in (("torchrec", "row_wise"), ("torchrec", "table_wise"),
                              ("torch", "data_parallel")):
        calls.clear()
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/rdv-{backend}-{sharding}",
                                rank=rank, world_size=WORLD)    # Trainer.run() destroys it
        cfg = load_config("deepfm", "synthetic", overrides={
            "batch": 1024, "data": data, "epochs": 1, "max_steps": 3, "mlp": [16], "loader": "stream",
            "device": "cpu", "embedding_backend": backend, "sharding": sharding, "eval_batch": 4096})
        summary = Trainer(cfg, quiet=True).run()
        result[f"{backend}/{sharding}"] = {"status": summary["status"], "gathers": len(calls),
                                           "steps": summary["global_steps"]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_a_streaming_torchrec_run_does_not_gather_the_ids(tmp_path):
    from ctr.data.synth import generate_dataset
    data = tmp_path / "synthetic-6k"
    generate_dataset(data, 6_000, seed=0, progress=False, rows_per_file=2700, row_group_rows=450)
    mp.spawn(_train_worker, args=(str(data), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert all(r["status"] == "ok" and r["steps"] == 3 for r in result.values()), result
        assert result["torchrec/row_wise"]["gathers"] == 0
        assert result["torchrec/table_wise"]["gathers"] == 0
        # the control: one per batch drawn (the step loop draws the 4th before it stops)
        assert result["torch/data_parallel"]["gathers"] >= 3
