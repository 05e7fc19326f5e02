"""Run the training worker in Spark barrier tasks: set each task's environment, then get out of the way.

Per attempt, one barrier stage of `train.num_workers` tasks:
  1. every task shares its host address (allGather);
  2. task 0 starts the rendezvous: Horovod's HTTP rendezvous server bound to its cluster address
     (not all interfaces), or a free port for torch.distributed's TCPStore;
  3. every task sets its `RankEnvironment` (rank, world size, local rank and size, its Spark GPUs)
     and the engine's rendezvous variables, and runs `python -m ringtrain.training.worker` as a child;
  4. a watchdog kills the child when it stops reporting progress for `hang_timeout_s`; the child
     also dies with its parent (PR_SET_PDEATHSIG), so a killed task leaves no process behind.

Spark does not retry a failed barrier result stage, so `launch` retries the whole stage up to
`max_attempts` times; the workers resume from the run's last checkpoint. Not every failure is
retried: after a failed stage the driver reads the ranks' failure records (training.failure) and
names the root cause. A user error on a rank (configuration, model contract, data) fails at once
(`RankRefused`, exit 2), and a user's interrupt (Ctrl-C, a job cancelled in the Spark UI) stops the
run (`TrainingInterrupted`, exit 130). Lost ranks or executors, hangs and other errors are retried.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from pyspark import BarrierTaskContext, SparkContext

from ringtrain import store
from ringtrain.errors import ConfigError, NotEnoughSlots, RankRefused, TrainingFailed, TrainingInterrupted
from ringtrain.schema import to_dict
from ringtrain.layout import RunStore
from ringtrain.training import failure
from ringtrain.training.environment import RankEnvironment, free_port
from ringtrain.training.spec import ERROR_PREFIX, RESULT_PREFIX, WorkerSpec

log = logging.getLogger("ringtrain.launcher")
_RECORD_WAIT_S = 3.0  # how long the driver waits for a failed rank's record written by its Spark task
_CANCELLED = re.compile(r"Job \d+ cancelled")  # Spark's words for cancelAllJobs, the UI's kill, sc.stop()
LOG_SYNC_S = 10.0  # how often a log bound for a non-POSIX store is uploaded while its worker runs
# Spark's loggers that print a failed or killed task's Java stack trace on the driver's stderr (the executors'
# too in local mode, where they share the driver's JVM). After a user's interrupt those failures are the
# interrupt itself: the CLI's one line says what happened and how to resume.
_TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager",
                         "org.apache.spark.TaskContextImpl", "org.apache.spark.util.Utils",
                         "org.apache.spark.scheduler.TaskSchedulerImpl", "org.apache.spark.scheduler.DAGScheduler",
                         "org.apache.spark.api.python.PythonRunner", "org.apache.spark.api.python.PythonWorkerFactory",
                         "org.apache.spark.storage.BlockManager")
_INTERRUPT_GRACE_S = 2.0  # how long a Spark task hit by the terminal's Ctrl-C waits for the driver's cancel


def run_training(spark, cfg, run: RunStore, dataset_dir: str, *, init_weights: str | None = None) -> list:
    """Train on `dataset_dir` into the run `run` (resuming from its checkpoints) with `cfg` (a Config); each
    rank's result. `init_weights`: a state_dict file to start from (a warm start), instead of train.seed's
    initialization. What `ringtrain train` and a retrain's training step both run."""
    run.prepare()
    spec = WorkerSpec(train=cfg.train, dataset_dir=dataset_dir, paths=run.paths(), run_id=run.run_id,
                      config=to_dict(cfg), init_weights=init_weights)
    return launch(spark.sparkContext, spec)


def launch(sc: SparkContext, spec: WorkerSpec) -> list[dict]:
    """Run the worker on `spec.train.num_workers` barrier tasks; return each rank's result, ordered by rank."""
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


def _run_attempt(sc: SparkContext, spec: WorkerSpec) -> list[dict]:
    task_spec = spec.to_json()
    num_workers = spec.train.num_workers
    rdd = sc.parallelize(range(num_workers), num_workers)
    raw = rdd.barrier().mapPartitions(lambda _: _run_task(task_spec)).collect()
    return sorted((json.loads(r) for r in raw), key=lambda r: r["rank"])


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
    found = re.findall(r"RankFailed: ([^\n]+)", text)
    if found:
        return found[0]
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


# ----------------------------------------------------------------------------- inside a barrier task

class RankFailed(RuntimeError):
    pass


def _run_task(task_spec: str):
    spec = WorkerSpec.from_json(task_spec)
    engine = spec.train.engine
    ctx = BarrierTaskContext.get()
    pid = ctx.partitionId()
    host = ctx.getTaskInfos()[pid].address.rsplit(":", 1)[0]
    hosts = [json.loads(x)["host"] for x in ctx.allGather(json.dumps({"host": host}))]
    placement = _placement(hosts)
    server = None
    try:
        if pid == 0:
            if engine == "horovod":
                server, port = _start_rendezvous(host, hosts, placement)
            else:
                port = free_port(host)
            message = json.dumps({"addr": host, "port": port})
        else:
            message = ""
        rendezvous = json.loads(ctx.allGather(message)[0])
        gpus = ctx.resources().get("gpu")
        local_rank, local_size, _, _ = placement[pid]
        rank_env = RankEnvironment(rank=pid, size=len(hosts), local_rank=local_rank, local_size=local_size,
                                   task_gpus=tuple(gpus.addresses) if gpus is not None else None)
        env = {**rank_env.to_environ(), **_rendezvous_env(engine, rank_env, hosts, placement, rendezvous)}
        result = run_worker_process(task_spec, env, spec=spec, rank=pid)
        ctx.barrier()  # rank 0 keeps the rendezvous up until every rank is done with it
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    yield json.dumps(result)


def _placement(hosts: list[str]) -> list[tuple[int, int, int, int]]:
    """Per task: (local_rank, local_size, cross_rank, cross_size), ranks grouped by host in task order."""
    order = list(dict.fromkeys(hosts))
    local_ranks, seen = [], {}
    for h in hosts:
        local_ranks.append(seen.get(h, 0))
        seen[h] = seen.get(h, 0) + 1
    out = []
    for h, lr in zip(hosts, local_ranks):
        cross = [x for x in order if seen[x] > lr]  # hosts that have a rank with this local rank
        out.append((lr, seen[h], cross.index(h), len(cross)))
    return out


def _start_rendezvous(host: str, hosts: list[str], placement):
    from horovod.runner.common.util.hosts import SlotInfo
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer
    plan = [SlotInfo(hostname=h, rank=r, local_rank=p[0], cross_rank=p[2], size=len(hosts),
                     local_size=p[1], cross_size=p[3]) for r, (h, p) in enumerate(zip(hosts, placement))]
    # Bound to the address Spark uses for this executor, not to every interface: the rendezvous
    # store has no authentication.
    server = RendezvousHTTPServer((host, 0), RendezvousHandler, 0)
    server.init(plan)
    threading.Thread(target=server.serve_forever, name="horovod-rendezvous", daemon=True).start()
    return server, server.server_address[1]


def _rendezvous_env(engine: str, rank_env: RankEnvironment, hosts: list[str], placement,
                    rendezvous: dict) -> dict:
    """What the engine's own library reads to join the ring (the rank environment is set apart)."""
    if engine != "horovod":
        return {"MASTER_ADDR": rendezvous["addr"], "MASTER_PORT": str(rendezvous["port"])}
    rank = rank_env.rank
    _, _, cross_rank, cross_size = placement[rank]
    return {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous["addr"], "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous["port"]),
        "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_HOSTNAME": hosts[rank],
        "HOROVOD_RANK": str(rank), "HOROVOD_SIZE": str(rank_env.size), "HOROVOD_LOCAL_RANK": str(rank_env.local_rank),
        "HOROVOD_LOCAL_SIZE": str(rank_env.local_size), "HOROVOD_CROSS_RANK": str(cross_rank),
        "HOROVOD_CROSS_SIZE": str(cross_size),
    }


def run_worker_process(task_spec: str, env: dict, *, spec: WorkerSpec, rank: int) -> dict:
    """Run `python -m ringtrain.training.worker` with `env`; return its result or raise RankFailed.

    When the worker fails without writing its own failure record (it crashed, was killed, hung, or
    could not write), this writes one from what the task saw.

    The worker's output goes to a local log file as it comes; on a store that is not POSIX (S3, HDFS:
    no appends) that local copy is uploaded to the log folder when the worker starts, every LOG_SYNC_S
    while it runs (Spark may kill this task when another rank fails, before it can upload), and when it ends."""
    log_dir, attempt, hang_timeout_s = spec.paths["log_dir"], spec.attempt, spec.train.hang_timeout_s
    store.makedirs(log_dir)
    log_path = failure.log_path(log_dir, attempt, rank)
    if store.is_posix(log_dir):
        local_log, sync_log = log_path, (lambda: None)
    else:
        local_log = _local_log_path(spec.run_id, log_path.rsplit("/", 1)[-1])
        open(local_log, "a").close()  # so that the first upload, at start, makes the log visible at once

        def sync_log() -> None:
            if os.path.exists(local_log):
                store.upload_file(local_log, log_path)

    def fail(kind: str, message: str) -> RankFailed:
        failure.write_record(log_dir, failure.Failure(rank=rank, attempt=attempt, kind=kind, message=message,
                                                      failed_at=time.time(), log=log_path))
        return RankFailed(f"rank {rank} failed: {message}. Log: {log_path}")

    try:
        return _run_worker(task_spec, env, local_log, hang_timeout_s, sync_log, fail)
    finally:
        sync_log()


def _local_log_path(run_id: str, name: str) -> str:
    """The executor's own copy of a log bound for a remote store: <tmp>/ringtrain-logs/<run_id>/<name>."""
    folder = os.path.join(tempfile.gettempdir(), "ringtrain-logs", run_id)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def _run_worker(task_spec: str, env: dict, local_log: str, hang_timeout_s: float, sync_log, fail) -> dict:
    with tempfile.TemporaryDirectory(prefix="ringtrain-") as tmp:
        heartbeat = os.path.join(tmp, "heartbeat")
        open(heartbeat, "w").close()
        child_env = {**os.environ, **env, "RINGTRAIN_SPEC": task_spec, "RINGTRAIN_HEARTBEAT": heartbeat,
                     "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "ringtrain.training.worker"], env=child_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        tail: deque[str] = deque(maxlen=40)
        result: list[dict] = []
        errors: list[dict] = []
        pump = threading.Thread(target=_pump, args=(proc, local_log, tail, result, errors), daemon=True)
        pump.start()
        synced = time.time()
        try:
            while proc.poll() is None:
                if time.time() - synced > LOG_SYNC_S:
                    sync_log()
                    synced = time.time()
                idle = time.time() - os.path.getmtime(heartbeat)
                if idle > hang_timeout_s:
                    _kill_group(proc)
                    raise fail("hang", f"made no progress for {idle:.0f}s (train.hang_timeout_s={hang_timeout_s:g}): "
                                       f"killed")
                time.sleep(0.1)
            pump.join(timeout=10)
        except KeyboardInterrupt:  # a Ctrl-C reached this Spark worker too (the terminal's process group)
            # The driver got it as well and is cancelling the job, after quieting the loggers that would print
            # this task's failure as a Java stack trace: give it that moment before failing (the cancel may
            # kill this task first, which ends it the same way).
            _kill_group(proc)
            try:
                time.sleep(_INTERRUPT_GRACE_S)
            except KeyboardInterrupt:
                pass
            raise fail("interrupted", "interrupted by the user") from None
        finally:
            _kill_group(proc)  # no-op after a clean exit; otherwise no orphan survives the task
        if proc.returncode != 0 or not result:
            if errors:
                raise fail(errors[0]["kind"], errors[0]["message"])
            last = " | ".join(line.strip() for line in list(tail)[-6:])
            code = proc.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise fail("exit", f"{how} without an error line; last lines: {last}")
        return result[0]


def _pump(proc: subprocess.Popen, log_path: str, tail: deque, result: list, errors: list) -> None:
    with open(log_path, "a") as out:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(RESULT_PREFIX):
                result.append(json.loads(line[len(RESULT_PREFIX):]))
                continue
            if line.startswith(ERROR_PREFIX):
                errors.append(json.loads(line[len(ERROR_PREFIX):]))
            out.write(line)
            out.flush()
            tail.append(line)
            sys.stderr.write(line)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the Spark task's process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass
