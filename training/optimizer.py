"""The optimizer named by `train.optimizer`, set up the same way for training and for the benchmarks."""
from __future__ import annotations

from typing import Iterable

import torch

from ringtrain.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """`cfg.lr` here is one rank's rate; the loop sets the scaled, warmed-up rate before every step.

    On a GPU the fused implementation: one kernel for all parameters instead of several per parameter, and
    it can skip a step on the device when the loop flags non-finite gradients (`found_inf`), so no step
    waits for the device (training.loop._DeviceSteps). On the CPU the default (foreach) one."""
    fused = True if device.type == "cuda" else None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, fused=fused)
