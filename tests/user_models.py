"""User model factories, as a user's own module would define them (`train.model.name: user_models:NAME`)."""
import torch
from torch import nn


class _Linear(nn.Module):
    def __init__(self, num_numeric: int, outputs: int):
        super().__init__()
        self.out = nn.Linear(num_numeric, outputs)

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.out(num)


def one_logit_column(num_numeric, cardinalities, **_):
    """One logit per row as [B, 1]: accepted."""
    return _Linear(num_numeric, 1)


def two_logits(num_numeric, cardinalities, **_):
    """[B, 2]: not one logit per row."""
    return _Linear(num_numeric, 2)
