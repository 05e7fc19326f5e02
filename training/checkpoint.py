"""Checkpoints: written by rank 0, read by every rank on resume.

A checkpoint is complete when its name is listed: each is one `atomic_write_bytes` (POSIX: a
temporary file renamed into place; S3: one PUT, visible whole or not at all; HDFS: a temporary file
moved into place), and temporary names never match ckpt-NNNNNNNNN.pt. So a rank killed while saving
leaves the previous checkpoint as the newest, and readers need no marker file.
"""
from __future__ import annotations

import io
import random
import re

import numpy as np
import torch

from ringtrain.publish import atomic_write_bytes
from ringtrain.store import exists, join, listdir, read_bytes, remove

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def save_checkpoint(folder: str, opt_step: int, state: dict, keep: int = 2) -> str:
    """Atomically write ckpt-<opt_step>.pt and keep the newest `keep` checkpoints."""
    state = {**state, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate(),
                              "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = join(folder, f"ckpt-{opt_step:09d}.pt")
    atomic_write_bytes(path, buffer.getvalue())
    for old in list_checkpoints(folder)[:-keep]:
        remove(old)
    return path


def list_checkpoints(folder: str) -> list[str]:
    return [join(folder, n) for n in listdir(folder) if _NAME.match(n)]


def load_latest(folder: str) -> dict | None:
    """The newest checkpoint, or None. Partial ones are never listed (module docstring)."""
    found = list_checkpoints(folder)
    if not found:
        return None
    state = torch.load(io.BytesIO(read_bytes(found[-1])), map_location="cpu", weights_only=False)
    rng = state.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state


BEST = "best.pt"


def save_best(folder: str, model_state: dict, epoch: int) -> str:
    """The weights of the best epoch so far (train.monitor); the model artifact is built from them."""
    buffer = io.BytesIO()
    torch.save({"model": model_state, "epoch": epoch}, buffer)
    path = join(folder, BEST)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_best(folder: str) -> dict | None:
    """{"model": state dict, "epoch": the best epoch (0-based)}, or None before the first epoch ended."""
    path = join(folder, BEST)
    if not exists(path):
        return None
    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=False)
