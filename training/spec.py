"""The worker's contract: everything a training worker reads, and what it answers, as typed values that travel as JSON.

The driver builds a `WorkerSpec`; the Spark launcher hands it to every barrier task as text (workers
never receive driver objects), and a worker run by hand reads it from a file:

    text = spec.to_json()                  # the driver, or a user preparing a torchrun/horovodrun run
    spec = WorkerSpec.from_json(text)      # the worker: every value checked again, with its key

Besides the spec, a worker reads only who it is in the ring from its environment (`RankEnvironment`,
set by the Spark task, torchrun or horovodrun) and, under Spark, where to find its spec and heartbeat
(SPEC_ENV, HEARTBEAT_ENV). It answers with one `RankResult` line on its stdout (RESULT_PREFIX), which
the Spark task reads and the driver returns, checked by the same schema code as the config.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import pickle
from dataclasses import dataclass
from typing import Any

from ringtrain.config import Config, MonitorConfig, TrainConfig
from ringtrain.errors import FunctionContractError
from ringtrain.schema import absent_key, build, to_dict

# A worker's answer on its stdout, one line each, read by the launcher's task: its result, or its error.
RESULT_PREFIX = "RINGTRAIN_RESULT "
ERROR_PREFIX = "RINGTRAIN_ERROR "
# What the Spark task sets for the worker process it starts: the spec's JSON, and the file whose
# modification time the worker touches as it makes progress (the task's hang watchdog reads it).
SPEC_ENV = "RINGTRAIN_SPEC"
HEARTBEAT_ENV = "RINGTRAIN_HEARTBEAT"
COLLECTIVE_TIMEOUT_S = 1800.0  # a DDP rank's wait in a collective, unless its spec says otherwise
# The most a user function's return value may take, pickled, per rank: it travels as text through the task's
# pipe and Spark's collect (spark.driver.maxResultSize is 1 GiB by default, for all ranks together).
MAX_RETURN_BYTES = 16 << 20


@dataclass(kw_only=True)
class WorkerSpec:
    config: Config
    """The whole config: the worker acts on its `train` section; the model artifact records all of it."""
    dataset_dir: str | None
    """The published dataset version to read (a folder with manifest.json). None: a training function that reads
    no ringtrain dataset (the built-in loop needs one)."""
    paths: dict[str, str | None]
    """The run's folders and files (`RunStore.paths()`): run_dir, checkpoint_dir, log_dir, model_dir, metrics_path.
    model_dir or metrics_path None: no model artifact or no metrics file (benchmarks)."""
    run_id: str = ""
    """`store.run_id` of the run, quoted in messages that say how to resume it."""
    attempt: int = 0
    """Launch attempt, from 0: names the per-rank logs and failure records."""
    init_weights: str | None = None
    """A state_dict file (path or URI) to start from instead of train.seed's initialization: a warm start
    (scheduled retraining). A checkpoint of this run, when there is one, still wins."""
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S
    """DDP engine: how long a rank waits in a collective (and for the ring to form) before it fails
    (torch.distributed's `timeout`)."""
    fault: str | None = None
    """Tests only: 'kind:rank:when[:attempt]', a fault the loop injects at an optimizer step or an epoch's end
    (see training.loop.FaultInjector)."""
    function: str | None = absent_key()
    """A training function given from Python (`launcher.run_function`): base64 of the cloudpickled
    (function, args, kwargs). None: `train.function` of the config (an import path), or else the built-in loop."""

    @property
    def train(self) -> TrainConfig:
        """The `train` section: the only part of the config a worker acts on."""
        return self.config.train

    @property
    def builtin(self) -> bool:
        """Whether the ranks run the built-in loop (answering RankResult), not a user's function (FunctionResult)."""
        return self.function is None and self.train.function is None

    def decode_result(self, text: str) -> "RankResult | FunctionResult":
        """A rank's answer, as the kind of function this spec runs gives it."""
        return RankResult.from_json(text) if self.builtin else FunctionResult.from_json(text)

    def for_attempt(self, attempt: int) -> "WorkerSpec":
        return dataclasses.replace(self, attempt=attempt)

    def to_json(self) -> str:
        return json.dumps(to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return build(cls, json.loads(text), "spec")


@dataclass(kw_only=True)
class Placement:
    """Where a rank planned to run, from its environment alone, before it picked a device."""
    cuda_visible_devices: str | None
    """CUDA_VISIBLE_DEVICES as the rank saw it (under Spark: exactly its task's GPUs)."""
    task_gpus: str | None
    """The GPUs Spark gave the rank's task, comma-separated; None outside Spark or without GPUs."""
    stage_devices: list[str]
    """Per pipeline stage, its device ('cuda:i' among the visible GPUs, or 'cpu'): stage i on stage_devices[i]."""
    device: str
    """The rank's own device: its first stage's."""


@dataclass(kw_only=True)
class RankResult:
    """What one rank reports when it finishes: the `RINGTRAIN_RESULT` line, and each rank of a run's summary."""
    rank: int
    size: int
    """World size: the number of ranks."""
    engine: str
    reader: str
    device: str
    """The device it trained on (the CPU when its planned GPU had no CUDA: see `placement`)."""
    param_sha256: str
    """sha256 over the final parameters and buffers: equal on every rank of a correct run."""
    epochs_run: int
    opt_steps: int
    batches_run: int
    steps_per_epoch: int
    skipped_steps: int
    """Optimizer steps skipped for non-finite gradients."""
    overflow_steps: int
    """Of those, fp16 overflows (the loss scaler's)."""
    stopped_early: bool
    metrics: dict[str, Any]
    """The best epoch's validation metrics (by train.monitor): the model artifact holds its weights."""
    best_epoch: int
    monitor: MonitorConfig
    seconds: float
    """The whole training call, data set-up included."""
    train_seconds: float
    """The training steps alone, what throughput is measured over."""
    train_samples: int
    ring_init_s: float
    """How long the engine took to form the ring."""
    placement: Placement

    def to_json(self) -> str:
        return json.dumps(to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> "RankResult":
        return build(cls, json.loads(text), "result")


@dataclass(kw_only=True)
class FunctionResult:
    """What one rank of a user's training function answers: its return value, and the last metrics it reported."""
    rank: int
    size: int
    """World size: the number of ranks."""
    value: str
    """base64 of the pickled return value (`load()` gives it back)."""
    metrics: dict[str, Any]
    """The last `ctx.report(...)` of the rank ({} when it reported none)."""
    seconds: float
    """The function's call alone, from after the ring formed."""
    ring_init_s: float

    @classmethod
    def of(cls, value: Any, **fields) -> "FunctionResult":
        """Pickle `value` (cloudpickle: lambdas and classes of __main__ travel too), within MAX_RETURN_BYTES."""
        try:
            data = cloudpickle().dumps(value)
        except Exception as exc:
            raise FunctionContractError(f"the training function returned a {type(value).__name__} that cannot be "
                                        f"pickled ({type(exc).__name__}: {exc}): return plain values (numbers, "
                                        f"strings, dicts, tensors)") from exc
        if len(data) > MAX_RETURN_BYTES:
            raise FunctionContractError(
                f"the training function's return value pickles to {len(data):,} bytes, over the limit of "
                f"{MAX_RETURN_BYTES:,} per rank: return small values (metrics, a path) and write large ones (a "
                f"model, predictions) to ctx.model_dir or ctx.checkpoint_dir")
        return cls(value=base64.b64encode(data).decode(), **fields)

    def load(self) -> Any:
        return pickle.loads(base64.b64decode(self.value))

    def to_json(self) -> str:
        return json.dumps(to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> "FunctionResult":
        return build(cls, json.loads(text), "result")


def cloudpickle():
    """Spark's own copy of cloudpickle (both stacks have it; the same module whose `register_pickle_by_value`
    a user calls to ship a module's functions by value)."""
    from pyspark import cloudpickle as module
    return module
