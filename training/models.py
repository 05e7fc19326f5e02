"""Built-in models for tabular data, and loading a user model by import path.

Every model takes `(num, cat)`: float features [B, N] and category indices [B, C], and returns
one logit (or regression value) per row. Models also expose `layers()`, an ordered list of
modules whose composition is the forward pass: that list is what layer splitting cuts into
pipeline stages.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn


class _Embed(nn.Module):
    """Category embeddings concatenated with the numeric features."""

    def __init__(self, num_numeric: int, cardinalities: list[int], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(card, dim) for card in cardinalities)
        self.out_features = num_numeric + dim * len(cardinalities)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        num, cat = inputs
        parts = [num] + [table(cat[:, i]) for i, table in enumerate(self.tables)]
        return torch.cat(parts, dim=1)


class _Sequential(nn.Module):
    """forward = layers applied in order; the first takes the (num, cat) pair."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.body = nn.ModuleList(layers)

    def layers(self) -> list[nn.Module]:
        return list(self.body)

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        x = (num, cat)
        for layer in self.body:
            x = layer(x)
        return x.squeeze(-1)


class TabularMLP(_Sequential):
    def __init__(self, num_numeric: int, cardinalities: list[int], *, embedding_dim: int = 8,
                 hidden: list[int] = (128, 64), dropout: float = 0.0, **_: object):
        embed = _Embed(num_numeric, cardinalities, embedding_dim)
        layers: list[nn.Module] = [embed]
        width = embed.out_features
        for h in hidden:
            layers.append(nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)))
            width = h
        layers.append(nn.Linear(width, 1))
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

    def __init__(self, num_numeric: int, cardinalities: list[int], *, embedding_dim: int = 8,
                 width: int = 256, num_blocks: int = 4, dropout: float = 0.0, **_: object):
        embed = _Embed(num_numeric, cardinalities, embedding_dim)
        layers: list[nn.Module] = [nn.Sequential(embed, nn.Linear(embed.out_features, width))]
        layers += [_ResidualBlock(width, dropout) for _ in range(num_blocks)]
        layers.append(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1)))
        super().__init__(layers)


BUILT_IN = {"tabular_mlp": TabularMLP, "residual_mlp": ResidualMLP}


def build_model(model_cfg: dict, num_numeric: int, cardinalities: list[int]) -> nn.Module:
    """`model_cfg` is the plain `train.model` section; name is built in or 'package.module:factory'."""
    name = model_cfg["name"]
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    if name in BUILT_IN:
        return BUILT_IN[name](num_numeric, cardinalities, **params)
    if ":" not in name:
        raise ValueError(f"train.model.name {name!r} is neither built in ({', '.join(BUILT_IN)}) "
                         f"nor an import path 'package.module:factory'")
    module_name, factory_name = name.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"train.model.name {name!r}: cannot import it ({exc})") from exc
    return factory(num_numeric=num_numeric, cardinalities=cardinalities, **params)
