"""The training run: data -> sharded model -> steps with CowClip -> metrics, checkpoints.

::

    TrainConfig ──▶ Trainer.setup()   process group, loader (ctr.data.source: the splits in
                                      memory, or streamed per rank), model, DMP plan,
                                      deterministic table init, CTROptimizer, --resume
                ──▶ Trainer.fit()     per epoch: steps (progress bar: loss, samples/s),
                                      valid AUC/logloss -> metrics.jsonl, checkpoint
                                      end: test metrics -> summary.json (status ok | diverged
                                      | interrupted)

The loss on each rank is ``sum of its BCE terms * world / global batch``: TorchRec averages
embedding gradients over ranks like DDP does for dense ones (the torch embedding backend:
:meth:`~ctr.train.build.ModelParts.sync_gradients` averages both), so every gradient is that
of the mean loss over the global batch, whatever the world size or the split of a last
partial batch. ``--embedding-backend auto`` is resolved here, at start, to the concrete
backend that runs (logged, and recorded in ``config.json``).

Example::

    summary = Trainer(load_config("deepfm", overrides={"batch": 8192})).run()
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ctr import numerics
from ctr.allocator import active_allocator, describe_active
from ctr.data.dataset import DatasetError, DatasetSchema, read_schema
from ctr.data.loader import BatchSource
from ctr.data.source import RunData, open_run_data, resolve_loader
from ctr.distributed.choices import check_backend_sharding, resolve_embedding_backend
from ctr.distributed.env import DistEnv, init_distributed, shutdown_distributed
from ctr.optim.scaling import describe, format_batch
from ctr.faults import fault_point
from ctr.fsutil import write_bytes_atomic, write_json_atomic
from ctr.progress import progress_bar
from ctr.train import checkpoint as ckpt
from ctr.train.build import build_model_parts, build_optimizer
from ctr.train.config import ConfigError, TrainConfig
from ctr.train.divergence import Diverged, LossGuard
from ctr.train.metrics import click_metrics, peak_memory_mb
from ctr.train.rundir import hold_run_lock, read_summary, release_run_lock
from ctr.train.signals import StopSignals

__all__ = ["Diverged", "Trainer", "predict"]


class _StopRequested(Exception):
    """Every rank finished the same step after a SIGINT/SIGTERM: save and stop."""


@torch.no_grad()
def predict(model: torch.nn.Module, source: BatchSource, env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float32) and 0/1 labels (uint8) of a whole split (``source``: every row
    once, e.g. ``RunData.evaluation(split, batch)``), gathered on every rank; every rank takes
    part (sharded tables). 5 bytes a row, for :func:`ctr.metrics.click_metrics`."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for b in source.epoch(0):
        b = b.to(env.device)
        probs.append(torch.sigmoid(model(b.dense, b.ids)).float().cpu())
        labels.append((b.labels > 0.5).to(torch.uint8).cpu())
    model.train(was_training)
    p = torch.cat(probs) if probs else torch.empty(0)
    y = torch.cat(labels) if labels else torch.empty(0, dtype=torch.uint8)
    if env.world_size > 1:  # local slices are interleaved per batch; order does not matter for AUC
        return _gather_rows(p, env).numpy(), _gather_rows(y, env).numpy()
    return p.numpy(), y.numpy()


def _gather_rows(local: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Every rank's 1-D ``local`` concatenated in rank order, on every rank: one tensor
    all-gather padded to the longest (``all_gather_object`` would pickle a split's predictions
    and hold them several times over)."""
    dev = env.device if env.backend == "nccl" else torch.device("cpu")
    sizes_t = torch.zeros(env.world_size, dtype=torch.long, device=dev)
    sizes_t[env.rank] = local.numel()
    dist.all_reduce(sizes_t)
    sizes = sizes_t.tolist()
    buf = torch.zeros(max(sizes), dtype=local.dtype, device=dev)
    buf[:local.numel()] = local.to(dev)
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    del buf
    return torch.cat([t[:n].cpu() for t, n in zip(parts, sizes)])


LoaderFactory = Callable[[DatasetSchema, TrainConfig, DistEnv], RunData]


def default_loader(dataset: DatasetSchema, cfg: TrainConfig, env: DistEnv) -> RunData:
    """The loader ``cfg.loader`` names (memory or stream, resolved at start; ctr.data.source)."""
    return open_run_data(dataset, cfg, env)


class Trainer:
    """One training run of one model at one batch size; see the module docstring."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False,
                 make_loader: LoaderFactory | None = None):
        self.cfg, self.resume, self.quiet = cfg.validate(), resume, quiet
        self.make_loader = make_loader   # how the dataset becomes batches (default_loader)
        self.run_dir = Path(cfg.out) if cfg.out else None
        self._stop = StopSignals()   # its handlers are installed only inside fit()

    # ------------------------------------------------------------------ set-up
    def log(self, msg: str) -> None:
        if self.env.is_main and not self.quiet:
            tqdm.write(msg)

    def setup(self) -> None:
        cfg = self.cfg
        if not cfg.data:
            raise DatasetError("no dataset given (TrainConfig.data is empty)")
        data: str = cfg.data
        try:  # before anything is read or written: the concrete backend, or a clear refusal
            cfg.embedding_backend = resolve_embedding_backend(cfg.embedding_backend)
            check_backend_sharding(cfg.embedding_backend, cfg.sharding)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(str(e)) from e
        self.env = env = init_distributed(cfg.device)
        if self.run_dir and env.is_main:
            hold_run_lock(self.run_dir)  # before anything is read or written there
        if env.device.type == "cpu":
            # In the paper's regime a row absent from many batches sees only its L2 gradient and
            # Adam shrinks it geometrically toward 0: millions of denormal floats appear in its
            # moments within ~1000 steps and make every step ~7x slower on x86. Flushing values
            # below 1.2e-38 to zero changes nothing measurable (GPUs do the same).
            torch.set_flush_denormal(True)
        self.dataset = dataset = read_schema(data)   # meta.json, read and checked once
        self.hp = cfg.resolved_hparams()
        self.train_rows = train_rows = dataset.rows("train")
        if train_rows == 0:
            raise DatasetError(f"{cfg.data}: the train split has no rows")
        if cfg.batch > train_rows:
            raise DatasetError(f"batch {format_batch(cfg.batch)} is larger than the train split of "
                               f"{cfg.data} ({train_rows:,} rows): every epoch would be "
                               "one partial step; use a smaller --batch or more data")
        # memory or stream (recorded in config.json); on --resume, what the run used
        why = resolve_loader(cfg, dataset, env, self._saved_config())
        t0 = time.time()
        self.data = (self.make_loader or default_loader)(dataset, cfg, env)
        # The paper's protocol has no separate validation split (valid is an alias of test).
        self.log(f"data {cfg.data}: train {train_rows:,} / valid {dataset.rows('valid'):,} / test "
                 f"{dataset.rows('test'):,} rows; loader {self.data.kind} ({why}): {self.data.note} "
                 f"({time.time() - t0:.1f}s to open)")
        self.parts = parts = build_model_parts(cfg.model, cfg.model_settings(), dataset, env, cfg.sharding,
                                               seed=cfg.seed, embedding_backend=cfg.embedding_backend)
        self.dmp, self.groups = parts.module, parts.groups
        self.log(parts.describe_plan(env.world_size))
        self.loader = self.data.train
        self.steps_per_epoch = len(self.loader)
        self.opt = build_optimizer(cfg, self.hp, parts, self.steps_per_epoch, train_rows,
                                   list(dataset.sparse_fields))
        self.guard = LossGuard(self.data.positive_rate)
        self.log(f"{cfg.model} batch {format_batch(cfg.batch)} (base {format_batch(cfg.base_batch)}), "
                 f"scaling {cfg.scaling}: {describe(self.hp)}; {self.steps_per_epoch} steps/epoch, "
                 f"warmup {self.opt.warmup_steps} steps; {env.world_size} rank(s) on {env.device} ({env.backend}), "
                 f"embedding backend {cfg.embedding_backend}, {self._update_text()} table update, "
                 f"allocator {describe_active()}")
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.done_seconds, self.done_samples = 0.0, 0   # training time and samples before a resume
        self.metrics_log: list[dict[str, Any]] = []
        if self.resume:
            self._resume()  # refuses another configuration before anything is written
        if self.run_dir and env.is_main:
            write_json_atomic(self.run_dir / "config.json", {**cfg.to_dict(),
                                                           "resolved_hparams": self.hp.__dict__})


    def _update_text(self) -> str:
        cfg, hp = self.cfg, self.hp
        if cfg.update != "sparse" or hp.l2_batch_ratio == 1.0:
            return cfg.update
        if cfg.sparse_l2 == "count":
            return (f"sparse (L2 of a present row: {hp.l2 / hp.l2_batch_ratio:.4g} x min(count, "
                    f"{hp.l2_batch_ratio:.4g}))")
        return f"sparse (L2 {hp.l2:.4g} on every present row)"

    def _saved_config(self) -> dict[str, Any] | None:
        """The run's config.json on --resume (what it resolved at its start), else None."""
        f = self.run_dir / "config.json" if self.run_dir else None
        if not self.resume or f is None or not f.is_file():
            return None
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ckpt.CheckpointError(f"{f}: unreadable ({e})") from e
        return saved if isinstance(saved, dict) else None

    def _resume(self) -> None:
        if not self.run_dir or not ckpt.has_checkpoint(self.run_dir):
            self.log("--resume: no checkpoint found, starting from scratch")
            return
        state = ckpt.load_checkpoint(self.run_dir)
        ckpt.check_compatible(state.get("config", {}), self.cfg.to_dict(), self.run_dir)
        ckpt.restore_(state, self.dmp, self.groups, self.opt)
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        p = state["progress"]
        if isinstance(p.get("data"), dict):   # the batches consumed: this loader must replay them
            try:
                self.loader.check_position(p["data"])
            except ValueError as e:
                raise ckpt.CheckpointError(f"{self.run_dir}: {e}") from e
        self.start_epoch, self.start_step, self.global_step = p["epoch"], p["step"], p["global_step"]
        self.done_seconds, self.done_samples = float(p.get("train_seconds", 0.0)), int(p.get("samples", 0))
        # (e, steps_per_epoch): epoch e's steps are done but not its validation; fit() does that.
        if self.env.is_main:
            ckpt.clean_checkpoint_dir(self.run_dir)
        self.metrics_log = self._metrics_up_to(self.start_epoch)
        self.log(f"resumed from {self.run_dir}/checkpoint at epoch {self.start_epoch} "
                 f"step {self.start_step} (global step {self.global_step})")

    def _metrics_up_to(self, epochs_done: int) -> list[dict[str, Any]]:
        """metrics.jsonl rows of the epochs the checkpoint has completed, once each. A kill
        between a row and its checkpoint, or a stop mid-epoch, leaves rows the resumed run
        writes again; they are dropped here."""
        assert self.run_dir is not None
        mfile = self.run_dir / "metrics.jsonl"
        if not mfile.is_file():
            return []
        rows: dict[int, dict[str, Any]] = {}
        lines = mfile.read_text().splitlines()
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write
            if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epochs_done:
                rows[row["epoch"]] = row
        kept = [rows[e] for e in sorted(rows)]
        if self.env.is_main and len(kept) != len(lines):
            write_bytes_atomic(mfile, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept

    # ------------------------------------------------------------------ running
    def evaluate(self, split: str) -> dict[str, Any]:
        probs, labels = predict(self.dmp, self.data.evaluation(split, self.cfg.eval_batch), self.env)
        return click_metrics(labels, probs)

    def _save(self, epoch: int, step: int, train_seconds: float, samples: int) -> None:
        if self.run_dir:
            ckpt.save_checkpoint(self.run_dir, self.env, self.dmp, self.groups, self.opt,
                                 {"epoch": epoch, "step": step, "global_step": self.global_step,
                                  "train_seconds": train_seconds, "samples": samples,
                                  "data": self.loader.position(epoch, step)},
                                 self.cfg.to_dict())

    def _append_metrics(self, row: dict[str, Any]) -> None:
        self.metrics_log.append(row)
        if self.run_dir and self.env.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _agree(self, loss_sum: float, rows: int) -> tuple[float, bool]:
        """(mean loss over the global batch, whether any rank was asked to stop). One small
        all-reduce carries both, so every rank takes the same decision after the same step."""
        stop = self._stop.requested is not None
        if self.env.world_size == 1:
            return loss_sum / max(1, rows), stop
        t = torch.tensor([loss_sum, float(rows), float(stop)], dtype=torch.float64)
        if self.env.backend == "nccl":
            t = t.to(self.env.device)
        dist.all_reduce(t)
        total, n, stops = t.tolist()
        return total / max(1.0, n), stops > 0

    def train_step(self, batch, where: str = "") -> float:
        """Forward, backward, optimizer step on one batch; returns the global batch's mean loss.

        Raises :class:`Diverged` (before updating anything) when the loss is not finite or has
        stayed above the threshold of :mod:`ctr.train.divergence`, and :class:`_StopRequested`
        after a complete step when a rank received SIGINT/SIGTERM."""
        batch = batch.to(self.env.device)
        logits = self.dmp(batch.dense, batch.ids)
        loss_sum = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
        loss, stop = self._agree(loss_sum.item(), batch.labels.numel())  # the step's one host read
        self.guard.update(loss, f"{where} (global step {self.global_step})")
        self.opt.zero_grad()
        (loss_sum * (self.env.world_size / batch.global_size)).backward()
        self.parts.sync_gradients(batch.global_ids)   # torch backend, N ranks; DMP syncs itself
        fault_point("train.mid_step")
        self.opt.step(self.parts.row_counts(batch.global_ids))   # CowClip's counts of this batch
        self.global_step += 1
        # Alone, stop right after the step the signal came in; with peers, after the step
        # whose all-reduce carried it (so all ranks stop after the same one).
        if stop or (self.env.world_size == 1 and self._stop.requested):
            raise _StopRequested
        return loss

    def fit(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        world = env.world_size
        status, message = "ok", ""
        t_start = time.time()
        train_seconds, samples = self.done_seconds, self.done_samples
        epoch, step = self.start_epoch, self.start_step
        finished_before = (self.resume and self.start_epoch >= cfg.epochs and self.run_dir is not None
                           and (read_summary(self.run_dir) or {}).get("status") == "ok")
        if finished_before:  # nothing left to train: keep the finished run's summary as it is
            assert self.run_dir is not None
            self.log(f"{self.run_dir}: already trained {cfg.epochs} epoch(s); nothing to do")
            return read_summary(self.run_dir) or {}
        self.dmp.train()
        t_epoch, n_epoch = time.time(), 0
        # The steps after each epoch's first, each timed from the end of the one before: the
        # step rate without the loader's first window, one-time allocations and evaluation.
        steady_s, steady_n, last_end = 0.0, 0, None
        peak_before_eval: float | None = None   # peak RSS of the steps, before any evaluation
        try:
            with self._stop:
                for epoch in range(self.start_epoch, cfg.epochs):
                    first = self.start_step if epoch == self.start_epoch else 0
                    bar = progress_bar(total=self.steps_per_epoch, initial=first,
                                       disable=not env.is_main or self.quiet,
                                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
                    t_epoch, n_epoch, loss_acc, loss_n = time.time(), 0, 0.0, 0
                    step, last_end = first, None
                    for batch in self.loader.epoch(epoch, first):
                        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                            break
                        try:
                            loss = self.train_step(batch, where=f"epoch {epoch + 1} step {step}")
                        except _StopRequested:  # the step itself completed
                            step, n_epoch = step + 1, n_epoch + batch.global_size
                            raise
                        step, n_epoch = step + 1, n_epoch + batch.global_size
                        now = time.time()
                        if last_end is not None:
                            steady_s, steady_n = steady_s + now - last_end, steady_n + batch.global_size
                        last_end = now
                        loss_acc, loss_n = loss_acc + loss, loss_n + 1
                        if step % cfg.log_every == 0 or step == self.steps_per_epoch:
                            el = time.time() - t_epoch
                            bar.set_postfix(loss=f"{loss_acc / loss_n:.4f}", sps=f"{n_epoch / max(el, 1e-9):,.0f}",
                                            clip=f"{self.opt.last_clip_fraction:.3f}", refresh=False)
                            bar.update(step - bar.n)
                            loss_acc, loss_n = 0.0, 0
                    bar.update(step - bar.n)
                    bar.close()
                    el = time.time() - t_epoch
                    train_seconds += el
                    samples += n_epoch
                    stopped_early = cfg.max_steps is not None and self.global_step >= cfg.max_steps
                    if peak_before_eval is None:
                        peak_before_eval = peak_memory_mb()["peak_rss_mb"]
                    valid = self.evaluate("valid")
                    row = {"epoch": epoch + 1, "global_step": self.global_step, "train_seconds": el,
                           "samples_per_second": n_epoch / max(el, 1e-9),
                           **{f"valid_{k}": v for k, v in valid.items()}}
                    self._append_metrics(row)
                    self.log(f"epoch {epoch + 1}: valid AUC {valid.get('auc', float('nan')):.4f} "
                             f"logloss {valid.get('logloss', float('nan')):.4f} "
                             f"({row['samples_per_second']:,.0f} samples/s)")
                    self.guard.check_validation(valid.get("logloss"), f"after epoch {epoch + 1}")
                    if stopped_early and step < self.steps_per_epoch:
                        self._save(epoch, step, train_seconds, samples)
                        break
                    self._save(epoch + 1, 0, train_seconds, samples)
                    self.start_step = 0
                    t_epoch, n_epoch = time.time(), 0
                    if stopped_early:
                        break
        except Diverged as e:
            status, message = "diverged", str(e)
            self.log(f"DIVERGED: {e}")
        except _StopRequested:
            train_seconds += time.time() - t_epoch
            samples += n_epoch
            status = "interrupted"
            message = f"{self._stop.requested} at epoch {epoch + 1} step {step}"
            self.log(f"{message}: saving a checkpoint after global step {self.global_step}; "
                     "continue with --resume")
            try:
                # The handlers again for the save (the stop left their block): a second Ctrl-C
                # must abort it even where SIGINT was inherited ignored (`ctr-train ... &` in a script).
                with self._stop:
                    self._save(epoch, step, train_seconds, samples)
            except KeyboardInterrupt:  # a second Ctrl-C: the previous checkpoint stays the latest
                message += "; aborted while saving (no checkpoint of this step)"
                self.log("aborted while saving; --resume continues from the previous checkpoint")
        except KeyboardInterrupt:
            status, message = "interrupted", f"aborted at epoch {epoch + 1} step {step} (no checkpoint saved)"
            self.log(f"{message}; --resume continues from the last checkpoint")
        summary: dict[str, Any] = {"status": status, "message": message, "model": cfg.model,
                                   "batch": cfg.batch, "scaling": cfg.scaling, "update": cfg.update,
                                   "sparse_l2": cfg.sparse_l2,
                                   "epochs": cfg.epochs,
                                   "global_steps": self.global_step, "world_size": world,
                                   "device": str(env.device), "allocator": active_allocator(),
                                   "numerics": numerics.describe(), "hparams": self.hp.__dict__}
        oracle = self.dataset.oracle_test_auc
        if status == "ok":
            test = self.evaluate("test")
            summary.update({f"test_{k}": v for k, v in test.items()})
            self.log(f"test AUC {test.get('auc', float('nan')):.4f} logloss "
                     f"{test.get('logloss', float('nan')):.4f}"
                     + (f" (oracle AUC {oracle:.4f})" if oracle is not None else ""))
        if oracle is not None:
            summary["oracle_test_auc"] = oracle
        summary.update({"wall_seconds": time.time() - t_start, "train_seconds": train_seconds,
                        "samples_per_second": samples / train_seconds if train_seconds else 0.0,
                        **peak_memory_mb(env.device)})
        if steady_s > 0:
            summary["steady_samples_per_second"] = steady_n / steady_s
        if status == "ok":   # every rank is here, in step (the test pass above was collective)
            summary["ranks"] = self._rank_memory(summary["peak_rss_mb"], peak_before_eval)
        if self.run_dir and env.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def _rank_memory(self, peak_rss_mb: float, before_eval: float | None) -> list[dict[str, Any]]:
        """Per rank (gathered to every rank): its peak RSS (over the run, and when the first
        evaluation began: the steps alone when that is the first epoch's end) and the rows and
        bytes of the table shards it holds, so a memory report can split each rank's RSS into
        its tables (with their gradient and Adam moments, each as large again) and everything
        else; rank 0's peak alone hides the other ranks' shards."""
        mine = {"rank": self.env.rank, "peak_rss_mb": peak_rss_mb,
                "peak_rss_mb_before_eval": before_eval,
                "table_rows": sum(g.rows for g in self.groups),
                "table_bytes": sum(g.weight.numel() * g.weight.element_size() for g in self.groups)}
        if self.env.world_size == 1:
            return [mine]
        ranks: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(ranks, mine)
        return ranks

    def run(self) -> dict[str, Any]:
        try:
            self.setup()
            return self.fit()
        finally:
            if self.run_dir:
                release_run_lock(self.run_dir)
            shutdown_distributed()
