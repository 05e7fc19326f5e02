"""The driver's side of a training: run attempts of one Spark barrier stage, name the root cause of a failed one.

Per attempt, one barrier stage of `train.num_workers` tasks, each running `training.task.run_task`:
the tasks form the engine's ring (training.rendezvous), each runs the worker as a child process, which
calls the run's training function (the built-in loop, `run_training`, or a user's, `run_function`), and
answers its `RankResult` or `FunctionResult` (training.spec). This module imports no torch: the driver only
starts them.

Before anything starts, `check_slots` and `check_gpus` refuse a cluster that cannot run the stage.
Spark does not retry a failed barrier result stage, so `launch` retries the whole stage up to
`max_attempts` times; the workers resume from the run's last checkpoint. Not every failure is
retried: after a failed stage the driver reads the ranks' failure records (training.failure) and
names the root cause. A user error on a rank (configuration, model contract, data) fails at once
(`RankRefused`, exit 2), and a user's interrupt (Ctrl-C, a job cancelled in the Spark UI) stops the
run (`TrainingInterrupted`, exit 130). Lost ranks or executors, hangs and other errors are retried.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import signal
import threading
import time
from typing import Any, Callable

from pyspark import SparkContext

from ringtrain.errors import ConfigError, NotEnoughSlots, RankRefused, TrainingFailed, TrainingInterrupted
from ringtrain.layout import RunStore
from ringtrain.training import failure
from ringtrain.training.spec import FunctionResult, RankResult, WorkerSpec
from ringtrain.training.task import RankFailed, run_task

log = logging.getLogger("ringtrain.launcher")
_RECORD_WAIT_S = 3.0  # how long the driver waits for a failed rank's record written by its Spark task
_CANCELLED = re.compile(r"Job \d+ cancelled")  # Spark's words for cancelAllJobs, the UI's kill, sc.stop()
# Spark's loggers that print a failed or killed task's Java stack trace on the driver's stderr (the executors'
# too in local mode, where they share the driver's JVM). After a user's interrupt those failures are the
# interrupt itself: the CLI's one line says what happened and how to resume.
_TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager",
                         "org.apache.spark.TaskContextImpl", "org.apache.spark.util.Utils",
                         "org.apache.spark.scheduler.TaskSchedulerImpl", "org.apache.spark.scheduler.DAGScheduler",
                         "org.apache.spark.api.python.PythonRunner", "org.apache.spark.api.python.PythonWorkerFactory",
                         "org.apache.spark.storage.BlockManager")


def run_training(spark, cfg, run: RunStore, dataset_dir: str, *, init_weights: str | None = None) -> list[RankResult]:
    """Train on `dataset_dir` into the run `run` (resuming from its checkpoints) with `cfg` (a Config); each
    rank's result. `init_weights`: a state_dict file to start from (a warm start), instead of train.seed's
    initialization. What `ringtrain train` and a retrain's training step both run."""
    run.prepare()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=run.paths(), run_id=run.run_id,
                      init_weights=init_weights)
    return launch(spark.sparkContext, spec)


def run_function(spark, cfg, function: Callable, *args, dataset_dir: str | None = None, **kwargs) -> list[Any]:
    """Run `function(ctx, *args, **kwargs)` once per rank in `cfg.train.num_workers` Spark barrier tasks; return
    each rank's return value, ordered by rank.

    Parameters: `spark`, a SparkSession; `cfg`, a Config (its `train` section: engine, num_workers,
    gpus_per_worker, max_attempts, hang_timeout_s, seed, batch_size; its `store`: where the run's folders go,
    and `store.run_id` to resume a run); `function`, any picklable callable (cloudpickle: a function of
    __main__ or a notebook travels by value, one of a module by reference, so that module must be importable on
    the executors); its first argument is a `training.context.TrainContext`; `args`/`kwargs` follow it, pickled
    with it. `dataset_dir`: a published dataset version whose shards the ranks read through `ctx.reader`.
    Returns: the ranks' return values (each picklable, at most spec.MAX_RETURN_BYTES pickled).
    Raises: RankRefused (exit 2) when the function raised on a rank (not retried; names the first rank that
    failed), or when it cannot be loaded or its value cannot come back; TrainingInterrupted (exit 130) on
    Ctrl-C or a cancel; TrainingFailed when every attempt failed for a reason worth retrying (a killed or lost
    rank, a hang, a transient I/O error); NotEnoughSlots and ConfigError before anything starts."""
    from ringtrain.training.spec import cloudpickle
    run = RunStore.create(cfg.store.root, cfg.store.run_id).prepare()
    payload = base64.b64encode(cloudpickle().dumps((function, args, kwargs))).decode()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=run.paths(), run_id=run.run_id, function=payload)
    return [r.load() for r in launch(spark.sparkContext, spec)]


def launch(sc: SparkContext, spec: WorkerSpec) -> list[RankResult] | list[FunctionResult]:
    """Run the worker on `spec.train.num_workers` barrier tasks; return each rank's result, ordered by rank: a
    RankResult per rank for the built-in loop, a FunctionResult for a user's function."""
    t = spec.train
    check_slots(sc, t.num_workers)
    check_gpus(sc, t.gpus_per_worker)
    log_dir = spec.paths["log_dir"]
    failure.clear_records(log_dir)  # records of an earlier launch of this run_id are not about this one
    last = None
    with _interrupt_cancels_jobs(sc) as interrupted:
        for attempt in range(t.max_attempts):
            if interrupted.is_set():  # a Ctrl-C between two attempts
                raise _interrupted(spec, attempt)
            started = time.time()
            try:
                results = _run_attempt(sc, spec.for_attempt(attempt))
                log.info("attempt %d finished in %.1fs", attempt + 1, time.time() - started)
                return results
            except KeyboardInterrupt:  # a second Ctrl-C while the first one's cancel was under way
                raise _interrupted(spec, attempt) from None
            except Exception as exc:  # a failed barrier stage: Spark will not retry it, so we may
                if interrupted.is_set() or _CANCELLED.search(str(exc)):
                    raise _interrupted(spec, attempt) from None
                cause = _root_cause(exc, log_dir, attempt)
                if cause.kind == "interrupted":  # a Ctrl-C that reached the Spark workers first
                    raise _interrupted(spec, attempt) from None
                log.warning("training attempt %d/%d failed after %.1fs: %s", attempt + 1, t.max_attempts,
                            time.time() - started, cause.describe())
                if cause.kind == "user":
                    raise RankRefused(f"{cause.describe()}. Not retried: the same settings would fail the same "
                                      f"way") from None
                last = cause
    raise TrainingFailed(f"training failed in all {t.max_attempts} attempt(s); last root cause: {last.describe()}. "
                         f"Per-rank logs: {log_dir}")


def _run_attempt(sc: SparkContext, spec: WorkerSpec) -> list[RankResult] | list[FunctionResult]:
    task_spec = spec.to_json()
    num_workers = spec.train.num_workers
    rdd = sc.parallelize(range(num_workers), num_workers)
    raw = rdd.barrier().mapPartitions(lambda _: run_task(task_spec)).collect()
    return sorted((spec.decode_result(r) for r in raw), key=lambda r: r.rank)


def _root_cause(exc: Exception, log_dir: str, attempt: int) -> failure.Failure:
    """The first rank to fail on its own, from the records; what Spark said when no rank left one."""
    deadline = time.time() + _RECORD_WAIT_S
    while True:
        cause = failure.root_cause(failure.read_records(log_dir, attempt))
        # A rank that died without a word gets its record from its Spark task, which may lag behind the
        # records of the peers it left alone (kind "ring"): give it a moment.
        if (cause is not None and cause.kind != "ring") or time.time() > deadline:
            break
        time.sleep(0.2)
    if cause is None:  # no rank failed: a lost executor, a Spark or cluster error
        return failure.Failure(rank=None, attempt=attempt, kind="error", message=_short_error(exc),
                               failed_at=time.time())
    return cause


def _interrupted(spec: WorkerSpec, attempt: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted during attempt {attempt + 1}: stopped, not retried. Resume from the "
                               f"last checkpoint with --set store.run_id={spec.run_id}")


@contextlib.contextmanager
def _interrupt_cancels_jobs(sc: SparkContext):
    """Ctrl-C cancels the running Spark job and marks the run interrupted (so the failed stage that follows
    is not retried); a second Ctrl-C raises KeyboardInterrupt at once. Signals reach the main thread only."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        log.warning("interrupted: cancelling the training job")
        # Not here: this handler runs on the main thread while it waits inside a py4j call (the job), and a
        # py4j call made from it reuses that thread's connection mid-answer (py4j: "reentrant call"), which
        # breaks the connection. Another thread has its own.
        threading.Thread(target=_quiet_and_cancel, args=(sc,), name="ringtrain-cancel", daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_and_cancel(sc: SparkContext) -> None:
    _silence_task_failures(sc)
    try:
        sc.cancelAllJobs()
    except Exception as exc:  # the context is stopping already: nothing left to cancel
        log.debug("cancelAllJobs: %s", exc)


def _silence_task_failures(sc: SparkContext) -> None:
    """Turn off the loggers of `_TASK_FAILURE_LOGGERS` for the rest of this Spark session (the run is stopping;
    a later launch in the same session would see its task failures in the ranks' records and logs)."""
    try:
        jvm = sc._jvm
        off = jvm.org.apache.logging.log4j.Level.OFF
        for name in _TASK_FAILURE_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, off)
    except Exception as exc:  # quieter logs are a nicety: never let them stand in the way of the cancel
        log.debug("could not quiet Spark's task-failure logs: %s", exc)


def check_slots(sc: SparkContext, num_workers: int) -> None:
    """Fail fast with a fix, instead of Spark's barrier check that retries for minutes."""
    master = sc.master
    match = re.match(r"local\[(\d+|\*)(?:,\d+)?\]$", master)
    if match:
        slots = os.cpu_count() if match.group(1) == "*" else int(match.group(1))
    elif master == "local":
        slots = 1
    elif (m := re.match(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]$", master)):
        slots = int(m.group(1)) * int(m.group(2))
    else:
        return  # YARN/standalone: executors may still be registering; Spark's own check applies
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    slots //= task_cpus
    if slots < num_workers:
        raise NotEnoughSlots(
            f"train.num_workers={num_workers} barrier tasks need {num_workers} task slots at once, but master "
            f"{master} with spark.task.cpus={task_cpus} has {slots}. Lower train.num_workers, or use a master "
            f"with more slots (e.g. local[{num_workers * task_cpus}])")


def check_gpus(sc: SparkContext, gpus_per_worker: int) -> None:
    """GPUs reach a task through Spark's resource scheduling, set when the application starts."""
    if not gpus_per_worker:
        return
    amount = sc.getConf().get("spark.task.resource.gpu.amount")
    if amount is None or float(amount) != gpus_per_worker:
        raise ConfigError(
            f"train.gpus_per_worker={gpus_per_worker} but spark.task.resource.gpu.amount is {amount}: start Spark with "
            f"--conf spark.task.resource.gpu.amount={gpus_per_worker} --conf spark.executor.resource.gpu.amount=N "
            f"(and a discovery script), or set train.gpus_per_worker=0")


def _short_error(exc: Exception) -> str:
    text = str(exc)
    found = re.findall(rf"{RankFailed.__name__}: ([^\n]+)", text)
    if found:
        return found[0]
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__
