"""The worker's contract: everything a training worker needs, as one typed value that travels as JSON.

The driver builds a `WorkerSpec`; the Spark launcher hands it to every barrier task as text (workers
never receive driver objects), and a worker run by hand reads it from a file:

    text = spec.to_json()                  # the driver, or a user preparing a torchrun/horovodrun run
    spec = WorkerSpec.from_json(text)      # the worker: every value checked again, with its key
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ringtrain.config import TrainConfig
from ringtrain.schema import build, to_dict

# A worker's answer on its stdout, one line each, read by the launcher's task: its result, or its error.
RESULT_PREFIX = "RINGTRAIN_RESULT "
ERROR_PREFIX = "RINGTRAIN_ERROR "

@dataclass(kw_only=True)
class WorkerSpec:
    train: TrainConfig
    """The `train` section: the only part of the config a worker acts on."""
    dataset_dir: str
    """The published dataset version to read (a folder with manifest.json)."""
    paths: dict[str, str | None]
    """The run's folders and files (`RunStore.paths()`): run_dir, checkpoint_dir, log_dir, model_dir, metrics_path.
    model_dir or metrics_path None: no model artifact or no metrics file (benchmarks)."""
    run_id: str = ""
    """`store.run_id` of the run, quoted in messages that say how to resume it."""
    attempt: int = 0
    """Launch attempt, from 0: names the per-rank logs and failure records."""
    config: dict[str, Any] = field(default_factory=dict)
    """The whole config as plain values, recorded in the model artifact (not read by the worker)."""
    init_weights: str | None = None
    """A state_dict file (path or URI) to start from instead of train.seed's initialization: a warm start
    (scheduled retraining). A checkpoint of this run, when there is one, still wins."""
    fault: str | None = None
    """Tests only: 'kind:rank:when[:attempt]', a fault the loop injects at an optimizer step or an epoch's end
    (see training.loop.FaultInjector)."""

    def for_attempt(self, attempt: int) -> "WorkerSpec":
        return dataclasses.replace(self, attempt=attempt)

    def to_json(self) -> str:
        return json.dumps(to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return build(cls, json.loads(text), "spec")
