"""What a training function receives on each rank: who it is, where its run's folders are, its share of the data.

The worker (training/worker.py) forms the ring, then calls the run's training function once per rank as
`function(ctx, *args, **kwargs)`: the built-in loop (training.worker.builtin_training) or a user's own,
given from Python (`launcher.run_function`) or by the config (`train.function: package.module:function`).
When it is called, torch.distributed's group is initialized (engine ddp) or Horovod is (engine horovod),
the rank's device is chosen from its task's GPUs, and the run's folders exist.

What the function owes the ring, because the Spark task watches it:
- a heartbeat at least every `train.hang_timeout_s`: `ctx.heartbeat()`, `ctx.report(...)` and every batch of
  `ctx.reader(...)` beat; a rank silent for longer is killed as hung, and the attempt retried;
- every rank the same number of collectives: `ctx.reader(...)` gives every rank the same number of batches;
- checkpoints to resume from: a retried attempt calls the function again from the start, with `ctx.attempt`
  one higher; `ctx.load_checkpoint()` returns what the last `ctx.save_checkpoint()` wrote (None at first).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ringtrain.config import Config
from ringtrain.errors import DatasetError
from ringtrain.manifest import Manifest, load_manifest
from ringtrain.training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from ringtrain.training.data import Columns, open_reader, plan_reading, to_tensors, verify_shards
from ringtrain.training.engines import Engine
from ringtrain.training.loop import Heartbeat
from ringtrain.training.spec import Placement, WorkerSpec

log = logging.getLogger("ringtrain.function")


class ShardReader:
    """This rank's share of one split, in seeded batches of numpy arrays: {"num": float32 [B, numeric columns],
    "cat": int64 [B, categorical columns], "label": float32 [B]} (and "arr" with array columns). Every batch
    beats the heartbeat."""

    def __init__(self, reader, heartbeat: Heartbeat):
        self._reader, self._heartbeat = reader, heartbeat
        self.files: list[str] = reader.plan.files
        """The shard files this rank reads (every rank reads row groups of all of them when there are fewer
        shards than ranks)."""
        self.steps_per_epoch: int = reader.plan.steps_per_epoch
        """Batches every rank yields per epoch: rows // (ranks x batch_size), the same on every rank."""

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        """Exactly `steps_per_epoch - skip` batches, in an order fixed by (train.seed, epoch, rank): a function
        resumed at batch `skip` of `epoch` sees the batches the interrupted attempt would have."""
        for batch in self._reader.epoch(epoch, skip):
            self._heartbeat.beat()
            yield batch

    def all_rows(self) -> Iterator[dict]:
        """One pass over this rank's rows in file order, the last batch partial (evaluation); not equal across
        ranks."""
        for batch in self._reader.all_rows():
            self._heartbeat.beat()
            yield batch


@dataclass(kw_only=True)
class TrainContext:
    rank: int
    world_size: int
    local_rank: int
    """Rank among the ranks on this host."""
    device: torch.device
    """This rank's device: its task's first GPU (cuda:0 under Spark, which shows a task only its own GPUs), or
    the CPU."""
    attempt: int
    """Launch attempt, from 0: above 0, an earlier attempt failed and this one should resume (load_checkpoint)."""
    run_id: str
    checkpoint_dir: str
    """The run's checkpoint folder (ctx.save_checkpoint writes there; a function may write its own files too)."""
    log_dir: str
    """The run's log folder: each rank's stdout and stderr go to attempt<A>-rank<R>.log there already."""
    model_dir: str | None
    """Where the run's model belongs (None: the run keeps no model); written by rank 0, typically at the end."""
    dataset_dir: str | None
    """The published dataset version given to the run (None: none was)."""
    config: Config
    """The run's whole config; `config.train` holds seed, batch_size, epochs, lr... for functions that use them."""
    engine: Engine
    """The ring (training.engines): allreduce_sum, broadcast_object, wrap. Besides it, torch.distributed (ddp)
    or horovod.torch (horovod) is initialized and may be used directly."""
    placement: Placement
    ring_init_s: float
    spec: WorkerSpec
    """The worker's whole spec (the built-in loop reads its init_weights and fault from it)."""
    heartbeat_file: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last report(): it comes back to the driver with the return value."""

    def __post_init__(self) -> None:
        self._heartbeat = Heartbeat(self.heartbeat_file)
        self._manifest: Manifest | None = None

    @property
    def engine_name(self) -> str:
        """'ddp' or 'horovod' (train.engine as the config resolved it)."""
        return self.config.train.engine

    @property
    def manifest(self) -> Manifest:
        """The dataset version's manifest: its splits, shards and features."""
        if self._manifest is None:
            if self.dataset_dir is None:
                raise DatasetError("this run was given no dataset: pass dataset_dir= to run_function (or train "
                                   "with `ringtrain train`, which uses the latest version of etl.dataset)")
            self._manifest = load_manifest(self.dataset_dir)
        return self._manifest

    def reader(self, split: str = "train", batch_size: int | None = None, *, drop_last: bool = True) -> ShardReader:
        """This rank's shards of `split` ('train', 'val', 'test'), checked against the manifest, in batches of
        `batch_size` (default train.batch_size). `drop_last`: every rank yields the same number of full batches
        per epoch (for training: the ranks' collectives stay matched); False for all_rows() only."""
        cfg, manifest = self.config.train, self.manifest
        batch_size = batch_size or cfg.batch_size
        plan = plan_reading(self.dataset_dir, manifest, split, self.rank, self.world_size, batch_size,
                            drop_last=drop_last)
        verify_shards(self.dataset_dir, manifest, split, plan.files, checksum=cfg.verify_shards == "full")
        reader = open_reader(cfg.reader, plan, Columns.from_manifest(manifest), batch_size, cfg.seed, self.rank)
        return ShardReader(reader, self._heartbeat)

    def tensors(self, batch: dict) -> dict:
        """A reader's numpy batch as tensors on this rank's device."""
        return to_tensors(batch, self.device)

    def heartbeat(self) -> None:
        """Tell the hang watchdog this rank is alive (cheap: touches a file at most once a second)."""
        self._heartbeat.beat()

    def report(self, **metrics: Any) -> None:
        """Record metrics (numbers or strings): logged to this rank's log, the last ones returned to the driver
        in the rank's FunctionResult.metrics. Beats the heartbeat."""
        self.metrics = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        log.info("metrics %s", " ".join(f"{k}={v}" for k, v in self.metrics.items()))
        self._heartbeat.beat()

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             accumulation: int = 1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The engine's data-parallel wrapping, whichever engine runs: DDP around the model (ddp), or Horovod's
        DistributedOptimizer (horovod); every rank starts from rank 0's parameters. Then train as usual:
        loss.backward(); optimizer.step(). Restore a checkpoint after wrap: Horovod's optimizer is a new one over
        the same parameters and does not carry the old one's state; the model's own weights are
        `getattr(model, "module", model)` (DDP wraps the model)."""
        return self.engine.wrap(model, optimizer, accumulation)

    def save_checkpoint(self, state: dict, step: int) -> str:
        """Call on every rank at the same step: rank 0 writes `state` (anything torch.save takes, with the RNG
        states added) atomically as <checkpoint_dir>/ckpt-<step>.pt, keeping the two newest; every rank returns
        its path once it is written (a collective), so a rank that dies after this call cannot leave a partial
        checkpoint as the newest one."""
        path = save_checkpoint(self.checkpoint_dir, step, state) if self.rank == 0 else None
        return self.engine.broadcast_object(path)

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint's path, or None."""
        found = list_checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    def load_checkpoint(self) -> dict | None:
        """The newest checkpoint's state (on the CPU), restoring the RNG states it saved; None when there is none
        (the first attempt of a fresh run)."""
        return load_latest(self.checkpoint_dir)
