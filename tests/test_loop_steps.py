"""The loop's two ways to check and skip an optimizer step give the same training, bit for bit.

On a GPU the loop never waits for the device (training.loop._DeviceSteps): the finiteness flag stays on the
device, the fused optimizer skips a bad step there, and the host counts it one step later. On the CPU it
reads the flag at once. Here both run on the CPU over the same batches, with a NaN injected, in one
process with a real torch.distributed group of one (gloo); the GPU tests run the device path on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from ringtrain.config import TrainConfig
from ringtrain.schema import build
from ringtrain.training.engines import make_engine
from ringtrain.training.environment import RankEnvironment
from ringtrain.training.loop import FaultInjector, NonFiniteError, _DeviceSteps, _Trainer
from ringtrain.training.models import TabularMLP
from ringtrain.training.tasks import BinaryTask


@pytest.fixture(scope="module")
def engine():
    import os
    saved = {k: os.environ.pop(k, None) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                   "MASTER_ADDR", "MASTER_PORT")}
    eng = make_engine("ddp", torch.device("cpu"), RankEnvironment())
    yield eng
    eng.shutdown()
    for key, value in saved.items():
        if value is not None:
            os.environ[key] = value


def batches(n: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    return [{"num": torch.randn(32, 3, generator=g), "cat": torch.randint(0, 4, (32, 2), generator=g),
             "label": (torch.rand(32, generator=g) > 0.5).float()} for _ in range(n)]


def train(engine, folder, *, on_device: bool, fault: str | None, until: int | None = None, **settings) -> _Trainer:
    """One epoch of `batches()` through the host or the device step path, resuming from `folder`'s newest
    checkpoint if it has one; with `until`, leaving (as a killed rank does) after that optimizer step without
    ending the epoch."""
    cfg = build(TrainConfig, {"engine": "ddp", "reader": "arrow", "batch_size": 32, "warmup_steps": 3,
                              "grad_clip_norm": 0.5, **settings}, "train")
    torch.manual_seed(0)
    model = TabularMLP(3, [4, 4], hidden=[16, 8], embedding_dim=3)
    # The fused optimizer in both: the device path needs it (it reads found_inf), and the comparison is then
    # of the skipping alone.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)
    trainer = _Trainer(cfg, engine, model, optimizer, BinaryTask(), torch.device("cpu"), str(folder),
                       FaultInjector.from_spec(fault, 0, 0))
    if on_device:
        trainer.device_steps = _DeviceSteps(trainer)
    trainer.resume()
    trainer.start_epoch()
    for batch in batches()[trainer.state.step_in_epoch:]:
        if trainer.micro_step(batch):
            trainer.optimizer_step()
            if trainer.state.opt_step == until:
                return trainer
    if trainer.device_steps is not None:
        trainer.device_steps.settle()
    return trainer


@pytest.mark.parametrize("fault, skipped", [(None, 0), ("nan:0:4", 1)])
def test_the_device_path_skips_and_counts_exactly_as_the_host_path(engine, tmp_path, fault, skipped):
    host = train(engine, tmp_path / "host", on_device=False, fault=fault)
    device = train(engine, tmp_path / "device", on_device=True, fault=fault)
    assert host.state.skipped_steps == device.state.skipped_steps == skipped
    assert host.state.opt_step == device.state.opt_step == 12
    assert host.epoch_steps == device.epoch_steps == 12 - skipped
    assert torch.equal(host.epoch_loss, device.epoch_loss) and torch.isfinite(device.epoch_loss)
    for (name, a), b in zip(host.model.named_parameters(), device.model.parameters()):
        assert torch.equal(a, b), name
    step_counts = {int(s["step"]) for s in device.optimizer.state.values()}
    assert step_counts == {12 - skipped}  # a skipped step leaves the optimizer's state as it was


def test_the_device_path_stops_on_a_bad_step_when_told_to(engine, tmp_path):
    with pytest.raises(NonFiniteError, match="non-finite loss on 1 rank\\(s\\) at optimizer step 4"):
        train(engine, tmp_path, on_device=True, fault="nan:0:4", on_nonfinite="fail")


@pytest.mark.parametrize("on_device", [False, True])
def test_an_epoch_resumed_part_way_continues_its_sums_on_either_path(engine, tmp_path, on_device):
    """Killed at step 7 of 12 (checkpoint at step 5, after a skipped step 4): the resumed epoch's loss sum, its
    applied and skipped steps, and the weights are the uninterrupted epoch's, bit for bit."""
    every = {"checkpoint_every_steps": 5}
    whole = train(engine, tmp_path / "whole", on_device=on_device, fault="nan:0:4", **every)
    train(engine, tmp_path / "killed", on_device=on_device, fault="nan:0:4", until=7, **every)
    resumed = train(engine, tmp_path / "killed", on_device=on_device, fault=None, **every)
    assert resumed.state.opt_step == whole.state.opt_step == 12 and resumed.state.batches_run == 7
    assert resumed.state.skipped_steps == whole.state.skipped_steps == 1
    assert resumed.epoch_steps == whole.epoch_steps == 11
    assert torch.equal(resumed.epoch_loss, whole.epoch_loss)
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
