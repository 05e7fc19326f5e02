"""The training worker: a plain function that reads its rank and world size from the environment.

The same function runs in every setting; only who sets the environment differs
(`training.environment.RankEnvironment` reads it):

    # alone, world size 1 (spec: a JSON file, `WorkerSpec.to_json()`, see training/spec.py)
    python -m ringtrain.training.worker spec.json
    # under torchrun (DDP engine) or horovodrun (Horovod engine)
    torchrun --nproc_per_node 2 -m ringtrain.training.worker spec.json
    horovodrun -np 2 python -m ringtrain.training.worker spec.json
    # under Spark: training.task sets the rank environment and the task's GPUs per barrier task

Everything it reads besides its rank environment is in its spec (training/spec.py). It forms the ring, then
calls the run's training function once (`run_worker`): the built-in loop (`builtin_training`) or a user's own
(training/context.py says what it receives). It prints one line `RINGTRAIN_RESULT {json}` at the end, its
`RankResult` (built-in) or `FunctionResult` (a user's function), which the Spark task collects. When it
fails it prints one line `RINGTRAIN_ERROR "<type>: <message>"` and writes its failure record
(training.failure) before it leaves the ring, so that the driver can tell its failure from the ones
it causes on other ranks.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import pickle
import sys
import time
import warnings
from typing import Callable

import torch

from ringtrain.errors import DatasetError, FunctionContractError
from ringtrain.manifest import load_manifest
from ringtrain.schema import to_dict
from ringtrain.store import read_bytes
from ringtrain.training import failure
from ringtrain.training.artifact import publish_model, write_metrics
from ringtrain.training.assemble import assemble
from ringtrain.training.data import open_reader, plan_reading, verify_shards
from ringtrain.training.engines import make_engine, unwrap
from ringtrain.training.checkpoint import load_best
from ringtrain.training.context import TrainContext
from ringtrain.training.environment import RankEnvironment, pin_to_cores
from ringtrain.training.loop import FaultInjector, Heartbeat, fit
from ringtrain.training.models import import_entry
from ringtrain.training.optimizer import make_optimizer
from ringtrain.training.pipeline import PipelineModel, stage_devices
from ringtrain.training.spec import (ERROR_PREFIX, HEARTBEAT_ENV, RESULT_PREFIX, SPEC_ENV, FunctionResult, Placement,
                                     RankResult, WorkerSpec)


def emit_line(line: str) -> None:
    """One line to stdout in a single write(2): ranks that share a pipe (torchrun, horovodrun) cannot cut into
    each other's lines (print writes the text and its newline separately when stdout is unbuffered). Atomic
    on a pipe up to PIPE_BUF (4 KiB on Linux); the result lines of the built-in tasks are under 1 KiB."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (line + "\n").encode())


log = logging.getLogger("ringtrain.worker")


def plan_placement(gpus_per_worker: int, stages: int, env: RankEnvironment) -> Placement:
    """Where this rank will run, from its environment alone, before any device is picked.

    Under Spark, CUDA_VISIBLE_DEVICES holds exactly this task's GPUs (env.task_gpus); under
    torchrun/horovodrun it is unset or lists the node's GPUs. The plan is reported in the result, so
    the placement can be checked where the GPUs are fake (tests on CPU-only torch).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus_per_worker:
        num_gpus = 0
    elif visible is not None:
        num_gpus = len([x for x in visible.split(",") if x.strip()])
    else:
        num_gpus = torch.cuda.device_count()
    devices = stage_devices(stages, num_gpus, env.local_rank, env.task_gpus is not None)
    # Stage i runs on devices[i % len(devices)]; the rank's own device is its first stage's.
    return Placement(cuda_visible_devices=visible, task_gpus=",".join(env.task_gpus) if env.task_gpus else None,
                     stage_devices=devices, device=devices[0])


def pick_device(placement: Placement) -> torch.device:
    """The planned device when CUDA is there; the CPU otherwise (CPU-only torch, or fake GPUs in tests),
    said in the log: a rank given GPUs never trains on the CPU without a word."""
    if placement.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device(placement.device)
        torch.cuda.set_device(device)
        return device
    log.warning("this rank was given GPU(s) %s but torch %s sees no CUDA device (a CPU build of torch, or no "
                "driver): training on the CPU. Install the GPU stack (make setup GPU=1; README \"GPU stack\") "
                "and check with `ringtrain doctor`", placement.cuda_visible_devices or placement.device,
                torch.__version__)
    return torch.device("cpu")


def run_worker(spec: WorkerSpec, env: RankEnvironment) -> RankResult | FunctionResult:
    """Form the ring on this rank's device, call the run's training function once, leave the ring.

    The function is the built-in loop (`builtin_training`, answering a RankResult) or a user's own (spec.function
    from Python, or train.function from the config), whose return value comes back in a FunctionResult."""
    cfg = spec.train
    function, args, kwargs = load_function(spec)  # before the ring: a function that cannot load fails alone
    pin = cfg.pin_cores == "always" or (cfg.pin_cores == "auto" and cfg.engine == "horovod")
    if pin and hasattr(os, "sched_setaffinity"):  # Linux; elsewhere (macOS) ranks run unpinned
        # Before torch and the engine start their threads: they inherit it.
        pin_to_cores(env.cores(os.sched_getaffinity(0)))
    torch.set_num_threads(cfg.threads_per_worker)
    placement = plan_placement(cfg.gpus_per_worker, cfg.pipeline.stages, env)
    device = pick_device(placement)
    ring_started = time.time()
    engine = make_engine(cfg.engine, device, env, collective_timeout_s=spec.collective_timeout_s)
    ring_init_s = round(time.time() - ring_started, 2)
    paths = spec.paths
    ctx = TrainContext(rank=engine.rank, world_size=engine.size, local_rank=engine.local_rank, device=device,
                       attempt=spec.attempt, run_id=spec.run_id, checkpoint_dir=paths["checkpoint_dir"],
                       log_dir=paths["log_dir"], model_dir=paths.get("model_dir"), dataset_dir=spec.dataset_dir,
                       config=spec.config, engine=engine, placement=placement, ring_init_s=ring_init_s, spec=spec,
                       heartbeat_file=os.environ.get(HEARTBEAT_ENV))
    finished = False
    try:
        ctx.heartbeat()
        started = time.time()
        value = function(ctx, *args, **kwargs)
        result = value if spec.builtin else FunctionResult.of(
            value, rank=ctx.rank, size=ctx.world_size, metrics=ctx.metrics, seconds=round(time.time() - started, 2),
            ring_init_s=ring_init_s)
        finished = True
        return result
    except Exception as exc:
        # Now, before shutdown() leaves the ring and fails the other ranks.
        report_failure(exc, spec, env, user_function=not spec.builtin)
        raise
    finally:
        engine.shutdown(clean=finished)


def load_function(spec: WorkerSpec) -> tuple[Callable, tuple, dict]:
    """The run's training function and its arguments: pickled from Python, named by train.function, or the
    built-in loop."""
    if spec.function is not None:
        try:
            return pickle.loads(base64.b64decode(spec.function))
        except Exception as exc:
            raise FunctionContractError(
                f"the training function cannot be unpickled on this executor ({type(exc).__name__}: {exc}). A "
                f"function is pickled by reference to its module unless it is defined in __main__: make its module "
                f"importable on every executor (installed in their Python, or --py-files), or ship it by value "
                f"with pyspark.cloudpickle.register_pickle_by_value(module) before run_function") from exc
    if spec.train.function is not None:
        function = import_entry(spec.train.function, "train.function", FunctionContractError, "on every executor "
                                "(installed in their Python, or shipped with spark-submit --py-files)")
        return function, (), {}
    return builtin_training, (), {}


def builtin_training(ctx: TrainContext) -> RankResult:
    """The built-in loop as a training function: the model of train.model on the dataset's train split,
    validated on val each epoch, the best epoch's model published by rank 0."""
    spec, engine, device, placement = ctx.spec, ctx.engine, ctx.device, ctx.placement
    if spec.dataset_dir is None:
        raise DatasetError("the built-in training loop needs a dataset: give the run a dataset_dir")
    started = time.time()
    cfg, paths = spec.train, spec.paths
    manifest = load_manifest(spec.dataset_dir)
    model, cols, task = assemble(cfg, manifest)
    model = model.to(device)
    train_plan = plan_reading(spec.dataset_dir, manifest, "train", engine.rank, engine.size, cfg.batch_size)
    val_plan = plan_reading(spec.dataset_dir, manifest, "val", engine.rank, engine.size, cfg.batch_size,
                            drop_last=False)
    for split, plan in (("train", train_plan), ("val", val_plan)):
        verify_shards(spec.dataset_dir, manifest, split, plan.files, checksum=cfg.verify_shards == "full")
    train_reader = open_reader(cfg.reader, train_plan, cols, cfg.batch_size, cfg.seed, engine.rank)
    val_reader = open_reader(cfg.reader, val_plan, cols, 4096, cfg.seed, engine.rank)

    if spec.init_weights:  # a warm start; a checkpoint of this run, if any, still wins in fit()
        model.load_state_dict(torch.load(io.BytesIO(read_bytes(spec.init_weights)), map_location=device))
    if cfg.pipeline.stages > 1:  # layer splitting inside this rank; data parallelism across ranks
        devices = [torch.device(d) for d in placement.stage_devices] if device.type == "cuda" else [device]
        model = PipelineModel(model, cfg.pipeline.stages, cfg.pipeline.micro_batches, devices, cfg.pipeline.balance)
        if engine.rank == 0:
            log.info("pipeline: %d stages over layers %s on %s, %d micro-batches (train.pipeline.micro_batches: %s)",
                     model.num_stages, model.bounds, [str(d) for d in model.devices], model.micro_batches,
                     cfg.pipeline.micro_batches)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    faults = FaultInjector.from_spec(spec.fault, engine.rank, spec.attempt)  # tests only
    on_epoch = (lambda state: write_metrics(paths, state.history)) if paths.get("metrics_path") else None
    state = fit(cfg, engine, model, optimizer, task, train_reader, val_reader, device, paths["checkpoint_dir"],
                heartbeat=Heartbeat(ctx.heartbeat_file), faults=faults, on_epoch=on_epoch)
    final = unwrap(model)
    best = state.history[state.best_epoch] if state.history else {}
    result = RankResult(
        rank=engine.rank, size=engine.size, engine=cfg.engine, reader=cfg.reader, device=str(device),
        param_sha256=param_digest(final), epochs_run=state.epoch, opt_steps=state.opt_step,
        batches_run=state.batches_run, steps_per_epoch=train_plan.steps_per_epoch,
        skipped_steps=state.skipped_steps, overflow_steps=state.overflow_steps, stopped_early=state.stopped_early,
        # The best epoch's (train.monitor): the artifact holds its weights.
        metrics=best, best_epoch=state.best_epoch, monitor=cfg.monitor,
        seconds=round(time.time() - started, 2), train_seconds=round(state.train_seconds, 3),
        train_samples=state.train_samples, ring_init_s=ctx.ring_init_s, placement=placement)
    if engine.rank == 0 and paths.get("model_dir"):
        example = next(iter(val_reader.all_rows()))
        kept = load_best(paths["checkpoint_dir"])
        if kept is not None:
            final.load_state_dict(kept["model"])  # after param_sha256: that one proves the ranks agree
        publish_model(paths, final, example, manifest, spec.dataset_dir, to_dict(spec.config), state, task)
    return result


def report_failure(exc: BaseException, spec: WorkerSpec | None, env: RankEnvironment, *,
                   user_function: bool = False) -> None:
    """Once per failure: the error line the launcher quotes, and the record the driver ranks. `user_function`:
    raised by a user's training function (training.failure.classify says which of those are retried)."""
    if getattr(exc, "_ringtrain_reported", False):
        return
    exc._ringtrain_reported = True
    log_dir, attempt = (spec.paths.get("log_dir"), spec.attempt) if spec else (None, 0)
    found = failure.from_exception(exc, rank=env.rank, attempt=attempt, user_function=user_function,
                                   log=failure.log_path(log_dir, attempt, env.rank) if log_dir else "")
    emit_line(ERROR_PREFIX + json.dumps({"kind": found.kind, "message": found.message}))
    if log_dir:
        try:
            failure.write_record(log_dir, found)
        except OSError as write_error:  # the error line above still reaches the launcher, which records it
            log.warning("could not write the failure record: %s", write_error)


def param_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(rank)s %(name)s: %(message)s",
                        stream=sys.stderr)
    rank = RankEnvironment.from_environ().rank
    old_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = old_factory(*args, **kwargs)
        record.rank = rank
        return record

    logging.setLogRecordFactory(factory)
    # petastorm warns on every open that our Parquet files carry no Unischema: expected, we read native Parquet.
    logging.getLogger("petastorm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    env, spec = RankEnvironment.from_environ(), None
    try:
        if argv:
            with open(argv[0]) as f:
                spec = WorkerSpec.from_json(f.read())
        else:
            spec = WorkerSpec.from_json(os.environ[SPEC_ENV])
        result = run_worker(spec, env)
    except Exception as exc:
        report_failure(exc, spec, env)  # a failure before the ring started (the spec, the engine, the device)
        raise
    emit_line(RESULT_PREFIX + result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
