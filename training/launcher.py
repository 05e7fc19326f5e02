"""Run the training worker in Spark barrier tasks: set each task's environment, then get out of the way.

Per attempt, one barrier stage of `num_workers` tasks:
  1. every task shares its host address (allGather);
  2. task 0 starts the rendezvous: Horovod's HTTP rendezvous server bound to its cluster address
     (not all interfaces), or a free port for torch.distributed's TCPStore;
  3. every task sets HOROVOD_* or RANK/WORLD_SIZE/MASTER_*, and CUDA_VISIBLE_DEVICES from its
     Spark GPU resources, and runs `python -m ringtrain.training.worker` as a child process;
  4. a watchdog kills the child when it stops reporting progress for `hang_timeout_s`; the child
     also dies with its parent (PR_SET_PDEATHSIG), so a killed task leaves no process behind.

Spark does not retry a failed barrier result stage, so `launch` retries the whole stage up to
`max_attempts` times; the workers resume from the run's last checkpoint.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from pyspark import BarrierTaskContext, SparkContext

from ringtrain.errors import ConfigError, NotEnoughSlots, TrainingFailed
from ringtrain.store import is_posix, join, makedirs, upload_file
from ringtrain.training.worker import ERROR_PREFIX, RESULT_PREFIX

log = logging.getLogger("ringtrain.launcher")
LOG_SYNC_S = 10.0  # how often a log bound for a non-POSIX store is uploaded while its worker runs


def launch(sc: SparkContext, spec: dict, *, num_workers: int, engine: str, gpus_per_worker: int,
           max_attempts: int, hang_timeout_s: float) -> list[dict]:
    """Run the worker on `num_workers` barrier tasks; return each rank's result, ordered by rank."""
    check_slots(sc, num_workers)
    check_gpus(sc, gpus_per_worker)
    last_error = None
    for attempt in range(max_attempts):
        task_spec = json.dumps({**spec, "attempt": attempt})
        settings = {"engine": engine, "gpus": gpus_per_worker, "hang_timeout_s": hang_timeout_s,
                    "log_dir": spec["paths"]["log_dir"], "attempt": attempt}
        started = time.time()
        try:
            rdd = sc.parallelize(range(num_workers), num_workers)
            raw = rdd.barrier().mapPartitions(lambda _: _run_task(task_spec, settings)).collect()
            results = sorted((json.loads(r) for r in raw), key=lambda r: r["rank"])
            log.info("attempt %d finished in %.1fs", attempt + 1, time.time() - started)
            return results
        except Exception as exc:  # a failed barrier stage: Spark will not retry it, so we do
            last_error = _short_error(exc)
            log.warning("training attempt %d/%d failed after %.1fs: %s", attempt + 1, max_attempts,
                        time.time() - started, last_error)
    raise TrainingFailed(f"training failed in all {max_attempts} attempt(s); last error: {last_error}. "
                         f"Per-rank logs: {spec['paths']['log_dir']}")


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


def _run_task(task_spec: str, settings: dict):
    ctx = BarrierTaskContext.get()
    pid = ctx.partitionId()
    host = ctx.getTaskInfos()[pid].address.rsplit(":", 1)[0]
    hosts = [json.loads(x)["host"] for x in ctx.allGather(json.dumps({"host": host}))]
    size = len(hosts)
    placement = _placement(hosts)
    server = None
    try:
        if pid == 0:
            if settings["engine"] == "horovod":
                server, port = _start_rendezvous(host, hosts, placement)
            else:
                port = _free_port(host)
            message = json.dumps({"addr": host, "port": port})
        else:
            message = ""
        rendezvous = json.loads(ctx.allGather(message)[0])
        env = _worker_env(settings["engine"], pid, size, hosts, placement, rendezvous)
        gpus = ctx.resources().get("gpu")
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
            env["RINGTRAIN_TASK_GPUS"] = env["CUDA_VISIBLE_DEVICES"]
        result = run_worker_process(task_spec, env, rank=pid, log_dir=settings["log_dir"],
                                    attempt=settings["attempt"], hang_timeout_s=settings["hang_timeout_s"])
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


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker_env(engine: str, rank: int, size: int, hosts: list[str], placement, rendezvous: dict) -> dict:
    local_rank, local_size, cross_rank, cross_size = placement[rank]
    env = {"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local_rank),
           "LOCAL_WORLD_SIZE": str(local_size)}
    if engine == "horovod":
        env.update({
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous["addr"], "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous["port"]),
            "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_HOSTNAME": hosts[rank],
            "HOROVOD_RANK": str(rank), "HOROVOD_SIZE": str(size), "HOROVOD_LOCAL_RANK": str(local_rank),
            "HOROVOD_LOCAL_SIZE": str(local_size), "HOROVOD_CROSS_RANK": str(cross_rank),
            "HOROVOD_CROSS_SIZE": str(cross_size),
        })
    else:
        env.update({"MASTER_ADDR": rendezvous["addr"], "MASTER_PORT": str(rendezvous["port"])})
    return env


def run_worker_process(task_spec: str, env: dict, *, rank: int, log_dir: str, attempt: int,
                       hang_timeout_s: float) -> dict:
    """Run `python -m ringtrain.training.worker` with `env`; return its result or raise RankFailed.

    The worker's output goes to a local log file as it comes; on a store that is not POSIX (S3, HDFS:
    no appends) that local copy is uploaded to `log_dir` when the worker starts, every LOG_SYNC_S while it
    runs (Spark may kill this task when another rank fails, before it can upload), and when it ends."""
    name = f"attempt{attempt}-rank{rank}.log"
    log_path = join(log_dir, name)
    makedirs(log_dir)
    if is_posix(log_dir):
        return _run_worker(task_spec, env, rank, log_path, log_path, hang_timeout_s, lambda: None)
    local_log = _local_log_path(log_dir, name)
    open(local_log, "a").close()  # so that the first upload, at start, makes the log visible at once

    def sync_log() -> None:
        if os.path.exists(local_log):
            upload_file(local_log, log_path)

    try:
        return _run_worker(task_spec, env, rank, log_path, local_log, hang_timeout_s, sync_log)
    finally:
        sync_log()


def _local_log_path(log_dir: str, name: str) -> str:
    """The executor's own copy of a log bound for a remote store: <tmp>/ringtrain-logs/<run_id>/<name>."""
    run_id = os.path.basename(os.path.dirname(log_dir.rstrip("/")))
    folder = os.path.join(tempfile.gettempdir(), "ringtrain-logs", run_id)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def _run_worker(task_spec: str, env: dict, rank: int, log_path: str, local_log: str,
                hang_timeout_s: float, sync_log) -> dict:
    with tempfile.TemporaryDirectory(prefix="ringtrain-") as tmp:
        heartbeat = os.path.join(tmp, "heartbeat")
        open(heartbeat, "w").close()
        child_env = {**os.environ, **env, "RINGTRAIN_SPEC": task_spec, "RINGTRAIN_HEARTBEAT": heartbeat,
                     "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "ringtrain.training.worker"], env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        tail: deque[str] = deque(maxlen=40)
        result: list[dict] = []
        errors: list[str] = []
        pump = threading.Thread(target=_pump, args=(proc, local_log, tail, result, errors), daemon=True)
        pump.start()
        synced = 0.0
        try:
            while proc.poll() is None:
                if time.time() - synced > LOG_SYNC_S:
                    sync_log()
                    synced = time.time()
                idle = time.time() - os.path.getmtime(heartbeat)
                if idle > hang_timeout_s:
                    _kill_group(proc)
                    raise RankFailed(f"rank {rank} made no progress for {idle:.0f}s (train.hang_timeout_s="
                                     f"{hang_timeout_s:g}): killed. Log: {log_path}")
                time.sleep(0.2)
            pump.join(timeout=10)
        finally:
            _kill_group(proc)  # no-op after a clean exit; otherwise no orphan survives the task
        if proc.returncode != 0 or not result:
            if errors:
                raise RankFailed(f"rank {rank} failed: {errors[0]}. Log: {log_path}")
            last = " | ".join(line.strip() for line in list(tail)[-6:])
            raise RankFailed(f"rank {rank} exited with code {proc.returncode}. Log: {log_path}. Last lines: {last}")
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
