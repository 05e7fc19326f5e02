"""The training loop: the same on every rank and for either engine.

Per optimizer step: `grad_accumulation` forward/backward passes, gradients averaged by the
engine, a finiteness check of the averaged gradients (bit-identical on every rank, so a NaN on
any rank is seen by all with no extra collective, and every rank skips the same step or all
stop), clipping, warmup LR, step. The training loss is all-reduced once per epoch.
On a GPU no step waits for the device: the finiteness check stays a device flag that the fused
optimizer reads to skip the update itself, and the host learns of a skipped step one step later,
while the next one runs (`_DeviceSteps`). On the CPU, where waiting costs nothing, the check is
read at once.
Mixed precision: bf16 autocast, or fp16 with a loss scaler whose overflow skips are expected
(every rank sees the same averaged gradients, so every rank skips them together).
Dropout masks are seeded from (seed, rank, step), so a resumed run draws the same masks (a model that
draws no random numbers, such as a built-in one without dropout, is not seeded: it would cost time only).
A resumed run is the uninterrupted one, bit for bit on the CPU (to rounding on a GPU, whose atomic adds make
even two uninterrupted runs differ): the checkpoint holds every piece of state that decides
what happens next (`_RESUMED`, plus the model, optimizer, loss scaler, RNG and a part-done epoch's sums), so a
run resumed after it stopped early, or finished, trains no further.

`fit` reads as the order of training: resume, then per batch a micro-step (forward, backward) and,
every `grad_accumulation` batches, an optimizer step; then the epoch end (validation, the best epoch,
early stopping, checkpoint). What depends on the task (loss, metrics) is the `task` object
(training.tasks). Faults for the failure tests come from a `FaultInjector` the worker installs only
when a test asks for one; production runs pass NO_FAULTS.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch

from ringtrain.config import TrainConfig
from ringtrain.training.checkpoint import load_latest, save_best, save_checkpoint
from ringtrain.training.data import prefetch
from ringtrain.training.engines import Engine, unwrap
from ringtrain.training.models import draws_random, model_inputs
from ringtrain.training.pipeline import PipelineModel

log = logging.getLogger("ringtrain.train")


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf on some rank, and the config says to stop (or too many were skipped)."""


@dataclass
class LoopState:
    epoch: int = 0
    step_in_epoch: int = 0      # next batch index within the epoch (the reader position)
    opt_step: int = 0
    batches_run: int = 0        # batches this attempt actually ran (for the equal-steps check)
    best_value: float | None = None  # of train.monitor.metric, at best_epoch
    best_epoch: int = -1
    bad_epochs: int = 0         # epochs since best_epoch
    skipped_steps: int = 0
    overflow_steps: int = 0     # fp16 only: steps the loss scaler skipped (and lowered its scale)
    history: list = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0  # this attempt: time in training steps (reading included, validation not)
    train_samples: int = 0      # this attempt: rows this rank trained on


# What a checkpoint restores of LoopState: everything that decides what happens next, so that a resumed
# run is the uninterrupted one bit for bit (stopped_early included: without it a run that stopped early
# and was resumed trained on). The rest (batches_run, train_seconds, train_samples) is per attempt.
# The trainer adds the running sums of a part-done epoch (its training loss), and the model, optimizer,
# loss scaler and RNG states.
_RESUMED = ("epoch", "step_in_epoch", "opt_step", "best_value", "best_epoch", "bad_epochs", "skipped_steps",
            "overflow_steps", "history", "stopped_early")


class Heartbeat:
    """Touches a file at most once a second: the launcher's hang watchdog reads its modification time."""

    def __init__(self, path: str | None):
        self.path, self.last = path, 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if self.path and now - self.last > 1.0:
            with open(self.path, "a"):
                os.utime(self.path)
            self.last = now


@dataclass(frozen=True)
class Fault:
    """What an injected fault does to one micro-step's loss."""
    poison_loss: bool = False      # the loss becomes NaN on this rank
    backward_factor: float = 1.0   # multiplies what backward starts from (1e38: an fp16 overflow)


class NoFaults:
    """Production: nothing is injected."""

    def at(self, opt_step: int) -> Fault | None:
        return None

    def at_epoch_end(self, epoch: int, point: str) -> None:
        pass


NO_FAULTS = NoFaults()


class FaultInjector:
    """Failure tests only: 'kind:rank:when[:attempt]', e.g. 'crash:1:30:0' (the spec's 'fault').
    At optimizer step `when`: crash exits the process, hang sleeps forever, nan
    poisons the loss, overflow makes the gradients overflow in fp16. At the end of epoch `when`
    (0-based), points that are not an optimizer step: crash_validating exits as the epoch's validation
    starts (before its checkpoint), crash_checkpointed right after the epoch's checkpoint is written
    (after the early stop or the last epoch: the run is complete on disk, its process is not)."""

    EPOCH_END = {"crash_validating": "validating", "crash_checkpointed": "checkpointed"}

    def __init__(self, spec: str, rank: int, attempt: int):
        kind, fault_rank, when, *fault_attempt = spec.split(":")
        if kind not in ("crash", "hang", "nan", "overflow", *self.EPOCH_END):
            raise ValueError(f"fault {spec!r}: unknown kind {kind!r}; one of crash, hang, nan, overflow, "
                             f"{', '.join(self.EPOCH_END)}")
        self.kind, self.step = kind, int(when)
        self.active = int(fault_rank) == rank and (not fault_attempt or int(fault_attempt[0]) == attempt)

    @classmethod
    def from_spec(cls, spec: str | None, rank: int, attempt: int):
        return cls(spec, rank, attempt) if spec else NO_FAULTS

    def at_epoch_end(self, epoch: int, point: str) -> None:
        if self.active and self.EPOCH_END.get(self.kind) == point and epoch == self.step:
            os._exit(17)

    def at(self, opt_step: int) -> Fault | None:
        if not self.active or opt_step != self.step or self.kind in self.EPOCH_END:
            return None
        if self.kind == "crash":
            os._exit(17)
        if self.kind == "hang":
            time.sleep(10**6)
        return Fault(poison_loss=self.kind == "nan", backward_factor=1e38 if self.kind == "overflow" else 1.0)


def fit(cfg: TrainConfig, engine: Engine, model: torch.nn.Module, optimizer: torch.optim.Optimizer, task,
        train_reader, val_reader, device: torch.device, checkpoint_dir: str, *, heartbeat: Heartbeat,
        faults=NO_FAULTS, on_epoch=None) -> LoopState:
    """Train until train.epochs or early stopping; rank 0 keeps the best epoch's weights (`save_best`)."""
    trainer = _Trainer(cfg, engine, model, optimizer, task, device, checkpoint_dir, faults)
    trainer.resume()
    state = trainer.state
    if on_epoch and engine.rank == 0 and state.history:
        # Resumed: the per-epoch outputs may predate the checkpoint (a run killed between the two, or one
        # that had finished and runs again); write them again from the restored history.
        on_epoch(state)
    steps = (train_reader.plan.steps_per_epoch // cfg.grad_accumulation) * cfg.grad_accumulation
    progress = _Progress(engine.rank, cfg.epochs, steps)
    while state.epoch < cfg.epochs and not state.stopped_early:
        trainer.start_epoch()
        batches = prefetch(train_reader.epoch(state.epoch, skip=state.step_in_epoch), device)
        started = time.perf_counter()
        for batch in batches:
            if state.step_in_epoch >= steps:
                break
            heartbeat.beat()
            if trainer.micro_step(batch):
                trainer.optimizer_step()
                progress.update(state.epoch, state.step_in_epoch, batch["label"].shape[0] * engine.size)
        batches.close()
        state.train_seconds += time.perf_counter() - started
        trainer.end_epoch(val_reader)
        if on_epoch and engine.rank == 0:
            on_epoch(state)
    return state


class _Trainer:
    """The steps of `fit`, sharing the model, optimizer, loss scaler and state."""

    def __init__(self, cfg: TrainConfig, engine: Engine, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 task, device: torch.device, checkpoint_dir: str, faults):
        self.cfg, self.engine, self.model, self.optimizer, self.task = cfg, engine, model, optimizer, task
        self.device, self.checkpoint_dir, self.faults = device, checkpoint_dir, faults
        self.pipe = model if isinstance(model, PipelineModel) else None
        self.precision = amp_dtype(cfg, device)
        # fp16 needs loss scaling (bf16 has fp32's range and does not); the scaler is part of the checkpoint.
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == torch.float16 else None
        self.loss_scale = 1.0  # host path: the fp16 scale as a float, read once per optimizer step (a sync)
        self.base_lr = cfg.lr * (engine.size if cfg.scale_lr else 1)
        self.state = LoopState()
        self.resumed_epoch_sums: tuple[float, int] | None = None  # this rank's, of an epoch resumed part-way
        self.device_steps = _DeviceSteps(self) if device.type == "cuda" else None
        self.draws_random = draws_random(unwrap(model))

    def autocast(self):  # a fresh context each time: pipeline stages enter it in their own threads
        return torch.autocast(self.device.type, dtype=self.precision) if self.precision else contextlib.nullcontext()

    def resume(self) -> None:
        """Load the newest checkpoint (if any), then wrap the model and optimizer for the engine."""
        resumed = load_latest(self.checkpoint_dir)
        if resumed:
            unwrap(self.model).load_state_dict(resumed["model"])
        self.model, self.optimizer = self.engine.wrap(self.model, self.optimizer, self.cfg.grad_accumulation,
                                                      pipelined=self.pipe is not None)
        if resumed:
            self.optimizer.load_state_dict(resumed["optimizer"])
            if self.scaler is not None and resumed.get("grad_scaler"):
                self.scaler.load_state_dict(resumed["grad_scaler"])
            for name in _RESUMED:
                if name in resumed:
                    setattr(self.state, name, resumed[name])
            if "stopped_early" not in resumed:  # a checkpoint from before it was saved: bad_epochs tells
                patience = self.cfg.early_stopping_patience
                self.state.stopped_early = patience is not None and self.state.bad_epochs >= patience
            sums = resumed.get("epoch_loss_sums")
            if self.state.step_in_epoch and sums is not None:
                # Each rank continues its own sum, so the epoch's all-reduce adds what it adds uninterrupted;
                # on another world size the epoch's loss can only be close: rank 0 carries the total.
                mine = sums[self.engine.rank] if len(sums) == self.engine.size else (
                    sum(sums) if self.engine.rank == 0 else 0.0)
                self.resumed_epoch_sums = (mine, resumed["epoch_steps"])
            if self.engine.rank == 0:
                log.info("resumed from checkpoint at epoch %d, batch %d (optimizer step %d)",
                         self.state.epoch, self.state.step_in_epoch, self.state.opt_step)
        if self.scaler is not None:  # also makes the scaler create its scale
            self.loss_scale = float(self.scaler.scale(torch.ones((), device=self.device)))
        if self.cfg.compile:
            # After the engine's wrapper (torch.compile knows DDP's buckets); unwrap() still finds the model.
            self.model = torch.compile(self.model)

    def start_epoch(self) -> None:
        self.model.train()
        # Summed over applied steps; an epoch resumed part-way continues its checkpoint's sums, so that its
        # training loss is the uninterrupted epoch's.
        loss_sum, self.epoch_steps = self.resumed_epoch_sums or (0.0, 0)
        self.resumed_epoch_sums = None
        self.epoch_loss = torch.tensor(loss_sum, dtype=torch.float64, device=self.device)
        self.step_loss = torch.zeros((), dtype=torch.float64, device=self.device)

    def micro_step(self, batch: dict) -> bool:
        """Forward and backward of one batch; True when it completes an accumulation (time to step)."""
        cfg, state = self.cfg, self.state
        fault = self.faults.at(state.opt_step)
        if self.draws_random:  # seeding costs a few percent of a small model's GPU step: only where it matters
            torch.manual_seed(cfg.seed * 1_000_003 + state.opt_step * 4099 + self.engine.rank * 7 + state.step_in_epoch)
        last_micro = (state.step_in_epoch + 1) % cfg.grad_accumulation == 0
        factor = 1.0 / cfg.grad_accumulation  # what backward() starts from, before loss scaling
        poison = False
        if fault is not None:
            factor *= fault.backward_factor
            poison = fault.poison_loss
        scale = self._backward_scale(factor)
        inputs, label = model_inputs(batch), batch["label"]
        if self.pipe is not None:  # forward and backward run stage by stage, micro-batch by micro-batch
            loss = self.pipe.forward_backward(inputs, label, self.task.loss, scale=scale, autocast=self.autocast,
                                              poison=poison)
        else:
            with (contextlib.nullcontext() if last_micro else self.engine.no_sync(self.model)), self.autocast():
                loss = self.task.loss(self.model(*inputs).float(), label)
                if poison:
                    loss = loss * float("nan")
            (loss * scale).backward()
        self.step_loss += loss.detach().double().to(self.device)
        state.step_in_epoch += 1
        state.batches_run += 1
        state.train_samples += label.shape[0]
        return last_micro

    def _backward_scale(self, factor: float):
        """What the loss is multiplied by before backward: `factor`, times the fp16 loss scale. On a GPU the
        scale stays a device tensor (reading it as a float would wait for the device)."""
        if self.scaler is None:
            return factor
        if self.device_steps is not None:
            return self.scaler.scale(torch.full((), factor, device=self.device))
        return factor * self.loss_scale

    def optimizer_step(self) -> None:
        """Averaged gradients: skip the step when they are not finite, else clip, set the LR and step."""
        cfg, state, optimizer = self.cfg, self.state, self.optimizer
        self.engine.synchronize(optimizer)
        if self.device_steps is not None:
            self.device_steps.step()
        else:
            self._step_checked_on_host()
        self.step_loss.zero_()
        state.opt_step += 1
        if cfg.checkpoint_every_steps and state.opt_step % cfg.checkpoint_every_steps == 0:
            self.checkpoint()

    def set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * min(1.0, (self.state.opt_step + 1) / max(1, self.cfg.warmup_steps))

    def _step_checked_on_host(self) -> None:
        cfg, optimizer = self.cfg, self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # records whether the averaged gradients overflowed
        # The gradients are averaged now, so they are bit-identical on every rank, and each rank's own
        # check gives the same answer with no extra collective: a NaN loss on any rank made its
        # gradients, and so the average, non-finite.
        if not _grads_finite(self.model):
            self.optimizer.zero_grad()
            if self.scaler is not None:
                self.scaler.update()  # lowers the scale: the unscale_ above found the overflow
                self.loss_scale = self.scaler.get_scale()
            self.skipped(self.state.opt_step, bool(~torch.isfinite(self.step_loss)))
        else:
            if cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.set_lr()
            self.engine.step(optimizer)
            if self.scaler is not None:
                self.scaler.update()
                self.loss_scale = self.scaler.get_scale()
            optimizer.zero_grad()
            self.epoch_loss += self.step_loss
            self.epoch_steps += 1

    def skipped(self, opt_step: int, bad_loss: bool) -> None:
        """Every rank is here (the averaged gradients are the same everywhere) and skipped `opt_step`: count it,
        or stop. `bad_loss`: this rank's own loss of that step was not finite."""
        cfg, state = self.cfg, self.state
        # Rare, and every rank is here: one more collective may say where it started.
        bad_loss_ranks = int(self.engine.allreduce_sum(torch.tensor([float(bad_loss)], dtype=torch.float64))[0])
        if self.scaler is not None and bad_loss_ranks == 0:
            # fp16 overflow: expected while the loss scale settles; every rank skips the step.
            state.overflow_steps += 1
            if self.engine.rank == 0:
                log.info("fp16 overflow at step %d: skipped, loss scale lowered", opt_step)
            return
        state.skipped_steps += 1
        what = f"non-finite loss on {bad_loss_ranks} rank(s)" if bad_loss_ranks else "non-finite gradients"
        if cfg.on_nonfinite == "fail" or state.skipped_steps > cfg.max_nonfinite_steps:
            raise NonFiniteError(
                f"{what} at optimizer step {opt_step} (skipped so far: {state.skipped_steps}); "
                f"every rank stops. Lower train.lr or check the data")
        if self.engine.rank == 0:
            log.warning("%s at step %d: every rank skips it", what, opt_step)

    def end_epoch(self, val_reader) -> None:
        """Training loss and validation metrics (all-reduced), the best epoch, early stopping, checkpoint."""
        cfg, state, engine = self.cfg, self.state, self.engine
        if self.device_steps is not None:
            self.device_steps.settle()
        self.faults.at_epoch_end(state.epoch, "validating")
        # Every rank applied the same steps; one all-reduce per epoch gives the mean training loss.
        train_loss = float(engine.allreduce_sum(self.epoch_loss.reshape(1).cpu())[0]) / max(
            1, engine.size * cfg.grad_accumulation * self.epoch_steps)
        net = self.pipe if self.pipe is not None else unwrap(self.model)
        val = evaluate(net, val_reader, engine, self.device, self.task, self.autocast())
        val["epoch"], val["train_loss"] = state.epoch, train_loss
        state.history.append(val)
        if engine.rank == 0:
            log.info("epoch %d/%d: train_loss %.4f val_loss %.4f %s", state.epoch + 1, cfg.epochs,
                     train_loss, val["loss"], self.task.headline(val))
        # Every rank saw the same all-reduced metrics, so every rank takes the same decisions.
        if is_better(val[cfg.monitor.metric], state.best_value, cfg.monitor.direction()):
            state.best_value, state.best_epoch, state.bad_epochs = val[cfg.monitor.metric], state.epoch, 0
            if engine.rank == 0:
                save_best(self.checkpoint_dir, unwrap(self.model).state_dict(), state.epoch)
        else:
            state.bad_epochs += 1
        if cfg.early_stopping_patience is not None and state.bad_epochs >= cfg.early_stopping_patience:
            state.stopped_early = True
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        self.checkpoint()
        self.faults.at_epoch_end(state.epoch - 1, "checkpointed")

    def checkpoint(self) -> None:
        if self.device_steps is not None:
            self.device_steps.settle()  # the skipped-step counts in the checkpoint must be final
        s = self.state
        # Part-way through an epoch (train.checkpoint_every_steps), the epoch's training-loss sums are every
        # rank's own; rank 0 writes them all. Every rank checkpoints at the same step, so all are here for the
        # one small collective (slots of zeros elsewhere: each sum comes back exactly).
        sums = None
        if s.step_in_epoch:
            slots = torch.zeros(self.engine.size, dtype=torch.float64)
            slots[self.engine.rank] = float(self.epoch_loss)
            sums = self.engine.allreduce_sum(slots).tolist()
        if self.engine.rank == 0:
            save_checkpoint(self.checkpoint_dir, s.opt_step, {
                "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch_loss_sums": sums, "epoch_steps": self.epoch_steps,
                **{name: getattr(s, name) for name in _RESUMED}})


class _DeviceSteps:
    """The optimizer step on a GPU, with no wait for the device.

    The finiteness of the averaged gradients is a device flag (from their total norm, which clipping needs
    anyway); the fused optimizer reads it (`optimizer.found_inf`, as torch's GradScaler hands it) and skips
    the update on the device. The flag reaches the host through pinned memory, and the host reads it one
    step later (`settle`), while the device already runs the next step: skipping, counting and stopping
    then happen as on the CPU, one step late on the host and never late on the device. Every rank reads
    the same flag at the same step (the averaged gradients are identical), so collectives stay in step."""

    def __init__(self, trainer: "_Trainer"):
        self.trainer = trainer
        self.pending: tuple[int, torch.Tensor, "torch.cuda.Event | None"] | None = None

    def step(self) -> None:
        t = self.trainer
        cfg, optimizer, device = t.cfg, t.optimizer, t.device
        if t.scaler is not None:
            t.scaler.unscale_(optimizer)  # records the overflow for scaler.update(), on the device
        params = [p for p in t.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads).to(device)
        found = (~torch.isfinite(norm)).float()
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip_norm, norm)
        t.set_lr()
        optimizer.found_inf = found  # the fused step leaves every parameter and its state as they were
        try:
            t.engine.step(optimizer)
        finally:
            del optimizer.found_inf
        if t.scaler is not None:
            t.scaler.update()
        optimizer.zero_grad()
        skipped = found.bool()
        t.epoch_loss += torch.where(skipped, torch.zeros_like(t.step_loss), t.step_loss)
        t.epoch_steps += 1  # taken back in settle() when the step turns out skipped
        flags = torch.stack([found.double(), (~torch.isfinite(t.step_loss)).double()])
        done = None
        if flags.is_cuda:
            host = torch.empty(2, dtype=torch.float64, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:  # the same logic on the CPU (tests): there the flags are ready when read
            host = flags
        previous, self.pending = self.pending, (t.state.opt_step, host, done)
        self._read(previous)

    def settle(self) -> None:
        """Read the last step's flag now (epoch end, checkpoint)."""
        previous, self.pending = self.pending, None
        self._read(previous)

    def _read(self, pending) -> None:
        if pending is None:
            return
        opt_step, host, done = pending
        if done is not None:
            done.synchronize()  # waits for that step only: the step after it stays queued on the device
        found, bad_loss = host.tolist()
        if found:
            self.trainer.epoch_steps -= 1
            self.trainer.skipped(opt_step, bool(bad_loss))


def is_better(value: float, best: float | None, direction: str) -> bool:
    """Whether `value` improves on `best` by more than a rounding error (NaN never does)."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - 1e-6 if direction == "min" else value > best + 1e-6


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: auto is bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, none on CPU."""
    if cfg.amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


def _grads_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient element is finite (one small reduction per device, one sync each)."""
    by_device: dict = {}
    for p in model.parameters():
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(torch.isfinite(p.grad).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


@torch.no_grad()
def evaluate(model: torch.nn.Module, reader, engine: Engine, device: torch.device, task, amp) -> dict:
    """The task's metrics over the whole split: per-batch sums, all-reduced once, then finalized."""
    model.eval()
    sums = task.zero_sums()
    for batch in prefetch(reader.all_rows(), device):
        with amp:
            outputs = model(*model_inputs(batch)).float()
        sums += task.metric_sums(outputs, batch["label"])
    return task.finalize(engine.allreduce_sum(sums))


class _Progress:
    """Rank 0 logs progress with throughput and an ETA, at most every 10 seconds."""

    def __init__(self, rank: int, epochs: int, steps: int):
        self.rank, self.epochs, self.steps = rank, epochs, steps
        self.started, self.last, self.samples, self.done = time.monotonic(), time.monotonic(), 0, 0

    def update(self, epoch: int, step: int, samples: int) -> None:
        self.samples += samples
        self.done += 1
        now = time.monotonic()
        if self.rank != 0 or now - self.last < 10:
            return
        self.last = now
        rate = self.done / (now - self.started)
        remaining = (self.epochs * self.steps - (epoch * self.steps + step)) / max(rate, 1e-9)
        log.info("epoch %d/%d batch %d/%d  %.0f samples/s  ETA %dm%02ds", epoch + 1, self.epochs, step,
                 self.steps, self.samples / (now - self.started), remaining // 60, remaining % 60)
