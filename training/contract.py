"""The model contract, checked on the driver in seconds before any executor starts.

`dry_run` builds the configured model on CPU and runs it on one batch read from the dataset, the way
the training loop will. A user model that cannot be built, fails on real inputs, or returns the wrong
shape or dtype raises `ModelContractError` (exit 2, not retried) with the contract below, instead of
failing every rank of every launch attempt with a bare torch error.
"""
from __future__ import annotations

import torch
from torch import nn

from ringtrain.config import TrainConfig
from ringtrain.errors import ModelContractError
from ringtrain.manifest import Manifest
from ringtrain.training.assemble import assemble
from ringtrain.training.data import open_reader, plan_reading
from ringtrain.training.models import model_inputs
from ringtrain.training.pipeline import partition

DRY_RUN_ROWS = 16
CONTRACT = ("A model is called as model(num, cat), or model(num, cat, arr) when the dataset has array columns, "
            "with num: float32 [B, N] (numeric features), cat: int64 [B, C] (category indices) and arr: float32 "
            "[B, A] (array features side by side), and returns one output per row: a floating tensor of shape [B] "
            "or [B, 1] (binary, regression), or [B, K] logits for K classes (multiclass), that requires grad. "
            "With train.pipeline.stages > 1 it also has layers(): an ordered list of modules whose composition, "
            "applied to the tuple of its inputs, gives the same outputs")


def dry_run(cfg: TrainConfig, dataset_dir: str, manifest: Manifest) -> None:
    """Build the model and run one batch of the dataset's validation split through it, on CPU."""
    name = cfg.model.name
    model, cols, task = assemble(cfg, manifest)
    plan = plan_reading(dataset_dir, manifest, "val", 0, 1, DRY_RUN_ROWS, drop_last=False)
    batch = next(iter(open_reader("arrow", plan, cols, DRY_RUN_ROWS, cfg.seed, 0).all_rows()))
    inputs = tuple(torch.from_numpy(x) for x in model_inputs(batch))
    model.eval()
    try:
        output = model(*inputs)
    except Exception as exc:
        raise ModelContractError(f"train.model.name={name}: the model failed on a batch of {len(inputs[0])} rows "
                                 f"of the dataset ({type(exc).__name__}: {exc}). {CONTRACT}") from exc
    check_outputs(output, len(inputs[0]), task.num_outputs, f"train.model.name={name}")
    if cfg.pipeline.stages > 1:
        _check_layers(model, inputs, output, name, cfg.pipeline.stages, cfg.pipeline.balance)


def check_outputs(output: object, rows: int, num_outputs: int, who: str) -> None:
    """One floating output per row ([B] or [B, 1]; [B, K] for K classes) that training can differentiate."""
    if not isinstance(output, torch.Tensor):
        raise ModelContractError(f"{who}: the model returned a {type(output).__name__}, not a tensor. {CONTRACT}")
    shapes = [(rows,), (rows, 1)] if num_outputs == 1 else [(rows, num_outputs)]
    if tuple(output.shape) not in shapes or not output.is_floating_point():
        expected = " or ".join(str(list(shape)) for shape in shapes)
        raise ModelContractError(f"{who}: for a batch of {rows} rows the model returned a {output.dtype} tensor "
                                 f"of shape {list(output.shape)}; expected {expected}, floating. {CONTRACT}")
    if not output.requires_grad:
        raise ModelContractError(f"{who}: the model's output does not require grad (detached, or computed "
                                 f"without parameters), so training cannot change it. {CONTRACT}")


def _check_layers(model: nn.Module, inputs: tuple, output: torch.Tensor, name: str, stages: int,
                  balance: list[int] | None) -> None:
    who = f"train.model.name={name} with train.pipeline.stages>1"
    layers = model.layers() if callable(getattr(model, "layers", None)) else None
    if not isinstance(layers, (list, tuple)) or not all(isinstance(m, nn.Module) for m in layers):
        raise ModelContractError(f"{who}: the model has no layers() method returning a list of modules, which "
                                 f"layer splitting cuts into stages. {CONTRACT}")
    x = inputs
    try:
        for layer in layers:
            x = layer(x)
    except Exception as exc:
        raise ModelContractError(f"{who}: applying layers() in order failed ({type(exc).__name__}: {exc}). "
                                 f"{CONTRACT}") from exc
    partition(list(layers), stages, balance)  # a stage count or balance the layers cannot take: ConfigError
    same = (isinstance(x, torch.Tensor) and x.numel() == output.numel()
            and torch.allclose(x.reshape(output.shape), output, atol=1e-5))
    if not same:
        raise ModelContractError(f"{who}: the composition of layers() does not give the model's output. "
                                 f"{CONTRACT}")
