"""The training loop: the same on every rank and for either engine.

Per optimizer step: `grad_accumulation` forward/backward passes, gradients averaged by the
engine, a finiteness check of the averaged gradients (bit-identical on every rank, so a NaN on
any rank is seen by all with no extra collective, and every rank skips the same step or all
stop), clipping, warmup LR, step. The training loss is all-reduced once per epoch.
Mixed precision: bf16 autocast, or fp16 with a loss scaler whose overflow skips are expected
(every rank sees the same averaged gradients, so every rank skips them together).
Dropout masks are seeded from (seed, rank, step), so a resumed run draws the same masks.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ringtrain.config import TrainConfig
from ringtrain.training.checkpoint import load_latest, save_checkpoint
from ringtrain.training.data import prefetch
from ringtrain.training.engines import Engine, unwrap
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
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    skipped_steps: int = 0
    overflow_steps: int = 0     # fp16 only: steps the loss scaler skipped (and lowered its scale)
    history: list = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0  # this attempt: time in training steps (reading included, validation not)
    train_samples: int = 0      # this attempt: rows this rank trained on


class Hooks:
    """What the loop reports outward: heartbeats for the hang watchdog, and injected faults (tests)."""

    def __init__(self, heartbeat_path: str | None, fault: str | None, rank: int, attempt: int):
        self.heartbeat_path, self.rank, self.attempt = heartbeat_path, rank, attempt
        self.last_beat = 0.0
        self.fault = _parse_fault(fault)

    def beat(self) -> None:
        now = time.monotonic()
        if self.heartbeat_path and now - self.last_beat > 1.0:
            with open(self.heartbeat_path, "a"):
                os.utime(self.heartbeat_path)
            self.last_beat = now

    def fault_at(self, opt_step: int) -> str | None:
        """'crash', 'hang', 'nan' or 'overflow' when a fault was injected for this rank, step and attempt."""
        f = self.fault
        if f and f["rank"] == self.rank and f["step"] == opt_step and f["attempt"] in (None, self.attempt):
            return f["kind"]
        return None


def _parse_fault(spec: str | None) -> dict | None:
    """'kind:rank:opt_step[:attempt]', e.g. 'crash:1:30:0' (failure tests: spec['fault'] or RINGTRAIN_FAULT)."""
    if not spec:
        return None
    kind, rank, step, *attempt = spec.split(":")
    return {"kind": kind, "rank": int(rank), "step": int(step), "attempt": int(attempt[0]) if attempt else None}


def fit(cfg: TrainConfig, engine: Engine, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        train_reader, val_reader, device: torch.device, checkpoint_dir: str, hooks: Hooks,
        on_epoch=None) -> LoopState:
    state = LoopState()
    resumed = load_latest(checkpoint_dir)
    if resumed:
        unwrap(model).load_state_dict(resumed["model"])
    pipe = model if isinstance(model, PipelineModel) else None
    model, optimizer = engine.wrap(model, optimizer, cfg.grad_accumulation, pipelined=pipe is not None)
    precision = amp_dtype(cfg, device)
    # fp16 needs loss scaling (bf16 has fp32's range and does not); the scaler is part of the checkpoint.
    scaler = torch.amp.GradScaler(device.type) if precision == torch.float16 else None
    loss_scale = 1.0  # the fp16 scale as a float; read once per optimizer step, not per batch (a device sync)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("grad_scaler"):
            scaler.load_state_dict(resumed["grad_scaler"])
        for name in ("epoch", "step_in_epoch", "opt_step", "best_val_loss", "bad_epochs", "skipped_steps", "history"):
            setattr(state, name, resumed[name])
        state.overflow_steps = resumed.get("overflow_steps", 0)
    if scaler is not None:
        loss_scale = float(scaler.scale(torch.ones((), device=device)))  # also makes the scaler create its scale
        if engine.rank == 0:
            log.info("resumed from checkpoint at epoch %d, batch %d (optimizer step %d)",
                     state.epoch, state.step_in_epoch, state.opt_step)
    base_lr = cfg.lr * (engine.size if cfg.scale_lr else 1)

    def autocast():  # a fresh context each time: pipeline stages enter it in their own threads
        return torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext()

    steps = (train_reader.plan.steps_per_epoch // cfg.grad_accumulation) * cfg.grad_accumulation
    progress = _Progress(engine.rank, cfg.epochs, steps)

    def checkpoint() -> None:
        if engine.rank == 0:
            save_checkpoint(checkpoint_dir, state.opt_step, {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "opt_step": state.opt_step,
                "best_val_loss": state.best_val_loss, "bad_epochs": state.bad_epochs,
                "skipped_steps": state.skipped_steps, "overflow_steps": state.overflow_steps,
                "history": state.history})

    while state.epoch < cfg.epochs and not state.stopped_early:
        model.train()
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed over applied steps
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        epoch_steps = 0
        batches = prefetch(train_reader.epoch(state.epoch, skip=state.step_in_epoch), device)
        epoch_started = time.perf_counter()
        for batch in batches:
            if state.step_in_epoch >= steps:
                break
            hooks.beat()
            fault = hooks.fault_at(state.opt_step)
            if fault == "crash":
                os._exit(17)
            if fault == "hang":
                time.sleep(10**6)
            torch.manual_seed(cfg.seed * 1_000_003 + state.opt_step * 4099 + engine.rank * 7 + state.step_in_epoch)
            last_micro = (state.step_in_epoch + 1) % cfg.grad_accumulation == 0
            factor = loss_scale / cfg.grad_accumulation  # what backward() starts from
            if fault == "overflow":  # gradients overflow on this rank only (tests of the fp16 loss scaler)
                factor *= 1e38
            if pipe is not None:  # forward and backward run stage by stage, micro-batch by micro-batch
                loss = pipe.forward_backward(batch["num"], batch["cat"], batch["label"],
                                             F.binary_cross_entropy_with_logits, scale=factor,
                                             autocast=autocast, poison=fault == "nan")
            else:
                with (contextlib.nullcontext() if last_micro else engine.no_sync(model)), autocast():
                    logits = model(batch["num"], batch["cat"]).float()
                    loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
                    if fault == "nan":
                        loss = loss * float("nan")
                (loss * factor).backward()
            step_loss += loss.detach().double().to(device)
            state.step_in_epoch += 1
            state.batches_run += 1
            state.train_samples += batch["label"].shape[0]
            if not last_micro:
                continue
            engine.synchronize(optimizer)
            if scaler is not None:
                scaler.unscale_(optimizer)  # records whether the averaged gradients overflowed
            # The gradients are averaged now, so they are bit-identical on every rank, and each rank's own
            # check gives the same answer with no extra collective: a NaN loss on any rank made its
            # gradients, and so the average, non-finite.
            if not _grads_finite(model):
                # Rare, and every rank is here: one more collective may say where it started.
                bad_loss_ranks = int(engine.allreduce_sum((~torch.isfinite(step_loss)).double().reshape(1).cpu())[0])
                optimizer.zero_grad()
                if scaler is not None:
                    scaler.update()  # lowers the scale: the unscale_ above found the overflow
                    loss_scale = scaler.get_scale()
                if scaler is not None and bad_loss_ranks == 0:
                    # fp16 overflow: expected while the loss scale settles; every rank skips the step.
                    state.overflow_steps += 1
                    if engine.rank == 0:
                        log.info("fp16 overflow at step %d: skipped, loss scale now %g", state.opt_step, loss_scale)
                else:
                    state.skipped_steps += 1
                    what = (f"non-finite loss on {bad_loss_ranks} rank(s)" if bad_loss_ranks
                            else "non-finite gradients")
                    if cfg.on_nonfinite == "fail" or state.skipped_steps > cfg.max_nonfinite_steps:
                        raise NonFiniteError(
                            f"{what} at optimizer step {state.opt_step} (skipped so far: {state.skipped_steps}); "
                            f"every rank stops. Lower train.lr or check the data")
                    if engine.rank == 0:
                        log.warning("%s at step %d: every rank skips it", what, state.opt_step)
            else:
                if cfg.grad_clip_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * min(1.0, (state.opt_step + 1) / max(1, cfg.warmup_steps))
                engine.step(optimizer)
                if scaler is not None:
                    scaler.update()
                    loss_scale = scaler.get_scale()
                optimizer.zero_grad()
                epoch_loss += step_loss
                epoch_steps += 1
            step_loss.zero_()
            state.opt_step += 1
            progress.update(state.epoch, state.step_in_epoch, batch["label"].shape[0] * engine.size)
            if cfg.checkpoint_every_steps and state.opt_step % cfg.checkpoint_every_steps == 0:
                checkpoint()
        batches.close()
        state.train_seconds += time.perf_counter() - epoch_started
        # Every rank applied the same steps; one all-reduce per epoch gives the mean training loss.
        train_loss = float(engine.allreduce_sum(epoch_loss.reshape(1).cpu())[0]) / max(
            1, engine.size * cfg.grad_accumulation * epoch_steps)
        val = evaluate(pipe if pipe is not None else unwrap(model), val_reader, engine, device, cfg,
                       autocast())
        val["epoch"] = state.epoch
        val["train_loss"] = train_loss
        state.history.append(val)
        if engine.rank == 0:
            log.info("epoch %d/%d: train_loss %.4f val_loss %.4f %s", state.epoch + 1, cfg.epochs,
                     val["train_loss"], val["loss"], _headline(val))
        if val["loss"] < state.best_val_loss - 1e-6:
            state.best_val_loss, state.bad_epochs = val["loss"], 0
        else:
            state.bad_epochs += 1
        # Every rank saw the same all-reduced metrics, so every rank takes the same decision.
        if cfg.early_stopping_patience is not None and state.bad_epochs >= cfg.early_stopping_patience:
            state.stopped_early = True
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        checkpoint()
        if on_epoch and engine.rank == 0:
            on_epoch(state)
    return state


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


_BINS = 200


@torch.no_grad()
def evaluate(model: torch.nn.Module, reader, engine: Engine, device: torch.device, cfg: TrainConfig,
             amp) -> dict:
    """Loss, accuracy and AUC over the whole split, summed across ranks, plus trivial baselines."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)           # loss, correct, rows, positives
    hist = torch.zeros(2, _BINS, dtype=torch.float64)    # score histograms of negatives, positives
    for batch in prefetch(reader.all_rows(), device):
        with amp:
            logits = model(batch["num"], batch["cat"]).float()
        label = batch["label"]
        loss = F.binary_cross_entropy_with_logits(logits, label, reduction="sum")
        prob = torch.sigmoid(logits)
        sums += torch.stack([loss.double().cpu(), ((prob > 0.5).float() == label).sum().double().cpu(),
                             torch.tensor(float(label.numel()), dtype=torch.float64), label.sum().double().cpu()])
        bins = (prob.clamp(0, 1 - 1e-9) * _BINS).long().cpu()
        for cls in (0, 1):
            hist[cls] += torch.bincount(bins[label.cpu() == cls], minlength=_BINS).double()
    total = engine.allreduce_sum(torch.cat([sums, hist.flatten()]))
    loss_sum, correct, rows, positives = total[:4].tolist()
    neg, pos = total[4:].view(2, _BINS)
    prior = positives / max(rows, 1)
    return {
        "loss": loss_sum / max(rows, 1),
        "accuracy": correct / max(rows, 1),
        "auc": _auc_from_histograms(neg, pos),
        "rows": int(rows),
        "baseline_accuracy": max(prior, 1 - prior),
        "baseline_loss": -(prior * math.log(max(prior, 1e-12)) + (1 - prior) * math.log(max(1 - prior, 1e-12))),
    }


def _auc_from_histograms(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """P(score_pos > score_neg), ties within a bin counted half (exact up to the bin width)."""
    if neg.sum() == 0 or pos.sum() == 0:
        return float("nan")
    neg_below = torch.cumsum(neg, 0) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum()
    return float(wins / (pos.sum() * neg.sum()))


def _headline(val: dict) -> str:
    return (f"accuracy {val['accuracy']:.4f} (baseline {val['baseline_accuracy']:.4f}) auc {val['auc']:.4f}")


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
