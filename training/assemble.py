"""The model a train config builds for a dataset, assembled in one place: training (`training.worker`), the
dry-run contract check (`training.contract`) and scoring (`ringtrain.training.scoring`, which loads the trained program
but reads the dataset's columns and task the same way)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ringtrain.config import TrainConfig
from ringtrain.manifest import Manifest
from ringtrain.schema import to_dict
from ringtrain.training.data import Columns
from ringtrain.training.models import build_model
from ringtrain.training.tasks import make_task


class Assembly(NamedTuple):
    model: torch.nn.Module
    cols: Columns
    task: object  # a training.tasks task: its loss, outputs and metrics


def columns_and_task(cfg: TrainConfig, manifest: Manifest) -> tuple[Columns, object]:
    """The dataset's columns as the model reads them, and its task under `cfg`, from the dataset's manifest."""
    return Columns.from_manifest(manifest), make_task(manifest.features, cfg)


def assemble(cfg: TrainConfig, manifest: Manifest) -> Assembly:
    """`cfg.model` built for the dataset of `manifest`, on the CPU, with its initial weights drawn from
    `cfg.seed` (the same on every rank, before any broadcast)."""
    cols, task = columns_and_task(cfg, manifest)
    torch.manual_seed(cfg.seed)
    cards = list(manifest.features.categorical_cardinalities.values())
    model = build_model(to_dict(cfg.model), len(cols.numeric), cards,
                        array_width=sum(length for _, length in cols.arrays), num_outputs=task.num_outputs)
    return Assembly(model, cols, task)
