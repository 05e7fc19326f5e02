"""Built-in models for tabular data, and loading a user model by import path.

Every model takes `(num, cat)`: float features [B, N] and category indices [B, C], and, when the
dataset has role 'array' columns, a third argument `arr`: float32 [B, sum of array_length], the array
columns side by side in the manifest's order (`model_inputs`). It returns one output per row ([B] or
[B, 1]: a logit, or a regression value), or [B, K] logits for a K-class task. Models also expose `layers()`, an ordered list of
modules whose composition is the forward pass: that list is what layer splitting cuts into
pipeline stages.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from ringtrain.config import BUILT_IN_MODELS
from ringtrain.errors import ModelContractError


def model_inputs(batch: dict) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs from a batch: (num, cat), plus arr when the dataset has array columns."""
    return (batch["num"], batch["cat"], batch["arr"]) if "arr" in batch else (batch["num"], batch["cat"])


class _Embed(nn.Module):
    """Category embeddings concatenated with the numeric features and the array features."""

    def __init__(self, num_numeric: int, cardinalities: list[int], dim: int, array_width: int = 0):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(card, dim) for card in cardinalities)
        self.out_features = num_numeric + array_width + dim * len(cardinalities)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        num, cat, *arr = inputs
        parts = [num, *arr] + [table(cat[:, i]) for i, table in enumerate(self.tables)]
        return torch.cat(parts, dim=1)


class _Sequential(nn.Module):
    """forward = layers applied in order; the first takes the tuple (num, cat[, arr])."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.body = nn.ModuleList(layers)

    def layers(self) -> list[nn.Module]:
        return list(self.body)

    def forward(self, num: torch.Tensor, cat: torch.Tensor, arr: torch.Tensor | None = None) -> torch.Tensor:
        x = (num, cat) if arr is None else (num, cat, arr)
        for layer in self.body:
            x = layer(x)
        return x.squeeze(-1)


class TabularMLP(_Sequential):
    name = "tabular_mlp"

    def __init__(self, num_numeric: int, cardinalities: list[int], *, embedding_dim: int = 8,
                 hidden: list[int] = (128, 64), dropout: float = 0.0, array_width: int = 0, num_outputs: int = 1,
                 **_: object):
        embed = _Embed(num_numeric, cardinalities, embedding_dim, array_width)
        layers: list[nn.Module] = [embed]
        width = embed.out_features
        for h in hidden:
            layers.append(nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(layers)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


class ResidualMLP(_Sequential):
    """A deeper model: embeddings, then `num_blocks` pre-norm residual feed-forward blocks."""

    name = "residual_mlp"

    def __init__(self, num_numeric: int, cardinalities: list[int], *, embedding_dim: int = 8,
                 width: int = 256, num_blocks: int = 4, dropout: float = 0.0, array_width: int = 0,
                 num_outputs: int = 1, **_: object):
        embed = _Embed(num_numeric, cardinalities, embedding_dim, array_width)
        layers: list[nn.Module] = [nn.Sequential(embed, nn.Linear(embed.out_features, width))]
        layers += [_ResidualBlock(width, dropout) for _ in range(num_blocks)]
        layers.append(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_outputs)))
        super().__init__(layers)


BUILT_IN = {cls.name: cls for cls in (TabularMLP, ResidualMLP)}
assert tuple(BUILT_IN) == BUILT_IN_MODELS, "ringtrain.config.BUILT_IN_MODELS names the classes above"


def draws_random(model: nn.Module) -> bool:
    """Whether a training forward pass may draw random numbers: a built-in model only through dropout with
    p > 0; a user's model may do anything, so it counts as drawing."""
    if not isinstance(model, tuple(BUILT_IN.values())):
        return True
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def import_entry(path: str, key: str, error: type[Exception], where: str):
    """The object that config key `key` names as 'package.module:name' (the config checked the form); `error`
    naming the key and where the module must be importable when it cannot be imported."""
    module_name, name = path.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise error(f"{key} {path!r}: cannot import it ({exc}). The module must be importable {where}") from exc


def build_model(model_cfg: dict, num_numeric: int, cardinalities: list[int], *, array_width: int = 0,
                num_outputs: int = 1) -> nn.Module:
    """`model_cfg` is the plain `train.model` section; name is built in or 'package.module:factory'.

    A user factory is called as factory(num_numeric=, cardinalities=, **model keys), plus
    array_width= (the width of `arr`) when the dataset has array columns and num_outputs= (the number
    of classes) for multiclass: factories written for numeric and categorical binary data keep working."""
    name = model_cfg["name"]
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    if name in BUILT_IN:
        return BUILT_IN[name](num_numeric, cardinalities, array_width=array_width, num_outputs=num_outputs,
                              **params)
    if array_width:
        params["array_width"] = array_width
    if num_outputs != 1:
        params["num_outputs"] = num_outputs
    factory = import_entry(name, "train.model.name", ModelContractError, "on the driver and on every executor (e.g. "
                           "spark-submit --py-files, or installed in the shipped environment)")
    try:
        model = factory(num_numeric=num_numeric, cardinalities=cardinalities, **params)
    except Exception as exc:
        raise ModelContractError(
            f"train.model.name {name!r}: the factory failed ({type(exc).__name__}: {exc}). It is called as "
            f"factory(num_numeric=int, cardinalities=list[int], **train.model settings) (plus array_width and "
            f"num_outputs when the dataset needs them) and returns an nn.Module") from exc
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"train.model.name {name!r}: the factory returned a {type(model).__name__}, "
                                 f"not a torch.nn.Module")
    return model
