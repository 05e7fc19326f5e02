"""The optimizer named by `train.optimizer`, set up the same way for training and for the benchmarks."""
from __future__ import annotations

from typing import Iterable

import torch

from ringtrain.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`cfg.lr` here is one rank's rate; the loop sets the scaled, warmed-up rate before every step."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
