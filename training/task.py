"""What runs inside each Spark barrier task of a training attempt: set the rank's environment, run the worker, watch it.

Per task (the driver side, training.launcher, starts `num_workers` of them as one barrier stage):
  1. every task shares its host address (allGather), and the ranks are placed on their hosts
     (`rendezvous.place`: local rank and size, cross rank and size);
  2. task 0 starts the engine's rendezvous (training.rendezvous) bound to its cluster address, and
     shares where it is;
  3. every task sets its `RankEnvironment` (rank, world size, local rank and size, its Spark GPUs)
     and the rendezvous' variables, and runs `python -m ringtrain.training.worker` as a child;
  4. a watchdog kills the child when it stops reporting progress for `hang_timeout_s`; the child
     also dies with its parent (PR_SET_PDEATHSIG), so a killed task leaves no process behind.

The child's output goes to its rank's log; its result line is this task's answer. A rank that
fails without writing its own failure record (training.failure) gets one from here. Imports no torch:
the worker does, in its own process.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Iterator

from pyspark import BarrierTaskContext

from ringtrain import store
from ringtrain.training import failure
from ringtrain.training.environment import RankEnvironment
from ringtrain.training.rendezvous import for_engine, place
from ringtrain.training.spec import (ERROR_PREFIX, HEARTBEAT_ENV, RESULT_PREFIX, SPEC_ENV, FunctionResult, RankResult,
                                     WorkerSpec)

LOG_SYNC_S = 10.0  # how often a log bound for a non-POSIX store is uploaded while its worker runs
_INTERRUPT_GRACE_S = 2.0  # how long a Spark task hit by the terminal's Ctrl-C waits for the driver's cancel


class RankFailed(RuntimeError):
    """A rank's worker failed; the message (quoted by the driver when no record names a root cause) says how."""


def run_task(task_spec: str) -> Iterator[str]:
    """The barrier task of one rank (its partition id): its `RankResult` or `FunctionResult` as JSON, or
    RankFailed."""
    spec = WorkerSpec.from_json(task_spec)
    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    slots = place([json.loads(x)["host"] for x in ctx.allGather(json.dumps({"host": host}))])
    rendezvous = for_engine(spec.train.engine)
    try:
        message = json.dumps({"addr": host, "port": rendezvous.start(slots)}) if rank == 0 else ""
        address = json.loads(ctx.allGather(message)[0])
        gpus = ctx.resources().get("gpu")
        rank_env = RankEnvironment(rank=rank, size=len(slots), local_rank=slots[rank].local_rank,
                                   local_size=slots[rank].local_size,
                                   task_gpus=tuple(gpus.addresses) if gpus is not None else None)
        env = {**rank_env.to_environ(), **rendezvous.environ(slots, rank, address["addr"], address["port"])}
        result = run_worker_process(task_spec, env, spec=spec, rank=rank)
        ctx.barrier()  # rank 0 keeps the rendezvous up until every rank is done with it
    finally:
        rendezvous.stop()
    yield result.to_json()


def run_worker_process(task_spec: str, env: dict, *, spec: WorkerSpec, rank: int) -> RankResult | FunctionResult:
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
        return _run_worker(task_spec, env, local_log, hang_timeout_s, sync_log, fail, spec.decode_result)
    finally:
        sync_log()


def _local_log_path(run_id: str, name: str) -> str:
    """The executor's own copy of a log bound for a remote store: <tmp>/ringtrain-logs/<run_id>/<name>."""
    folder = os.path.join(tempfile.gettempdir(), "ringtrain-logs", run_id)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def child_pythonpath(path: list[str], pythonpath: str) -> str:
    """The worker child's PYTHONPATH: this Python worker's sys.path, less what every Python of this
    installation finds by itself (the folders under its prefixes), in its order; then the rest of its
    PYTHONPATH. So the child imports what Spark put on the task's sys.path alone: the files of spark-submit
    --py-files and SparkContext.addPyFile (ahead of PYTHONPATH, as in the task)."""
    prefixes = tuple(os.path.join(p, "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    entries = [p for p in path if p and not os.path.join(p, "").startswith(prefixes)]
    entries += [p for p in pythonpath.split(os.pathsep) if p and p not in entries]
    return os.pathsep.join(dict.fromkeys(entries))


def _run_worker(task_spec: str, env: dict, local_log: str, hang_timeout_s: float, sync_log, fail,
                decode) -> RankResult | FunctionResult:
    with tempfile.TemporaryDirectory(prefix="ringtrain-") as tmp:
        heartbeat = os.path.join(tmp, "heartbeat")
        open(heartbeat, "w").close()
        child_env = {**os.environ, **env, SPEC_ENV: task_spec, HEARTBEAT_ENV: heartbeat, "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": child_pythonpath(sys.path, os.environ.get("PYTHONPATH", ""))}
        proc = subprocess.Popen([sys.executable, "-m", "ringtrain.training.worker"], env=child_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        tail: deque[str] = deque(maxlen=40)
        result: list[str] = []
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
        try:
            return decode(result[0])
        except ValueError as exc:  # ConfigError too: a field the worker and the result disagree on (a bug)
            raise fail("error", f"its result line is not a result: {exc}") from None


def _pump(proc: subprocess.Popen, log_path: str, tail: deque, result: list, errors: list) -> None:
    with open(log_path, "a") as out:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(RESULT_PREFIX):
                result.append(line[len(RESULT_PREFIX):])
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
