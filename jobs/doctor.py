"""`ringtrain doctor --config F`: find what would break a long run, in seconds, before it starts.

Checks on the driver first (Java, the store, the Spark settings, task slots, GPUs), then inside ONE
barrier stage of `train.num_workers` tasks, as training will run (ringtrain importable in the
executors' Python; Python, pyarrow, torch and Horovod (where the stack has it) equal to the driver's;
the store writable from every task; libhdfs set-up for hdfs://; each task's GPUs: as many as asked, CUDA seeing
exactly those, a tensor op on them, and Horovod built with NCCL). Problems are collected, not raised one
by one, so a single run lists every fix. The barrier stage only starts when the slot check passed,
and is bounded by `timeout_s`: a cluster that cannot run it makes doctor report, not hang.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

from ringtrain.jobs import probe
from ringtrain.config import Config
from ringtrain.errors import EnvironmentProblems, UserError

JOB_GROUP = "ringtrain-doctor"
PACK_FIX = ("build the environment with `ringtrain pack` and submit with --archives ringtrain-env.tar.gz#env "
            "--conf spark.pyspark.python=./env/bin/python")
GPU_STACK_FIX = ("set up the GPU stack (make setup GPU=1, or STACK=spark4 GPU=1) and pack it from there "
                 "(.venv-gpu/bin/ringtrain pack), then submit with that archive")


@dataclass(frozen=True)
class Problem:
    where: str  # "driver", "spark" or "executors"
    text: str   # what is wrong, then what fixes it

    def __str__(self) -> str:
        return f"[{self.where}] {self.text}"


def doctor(cfg: Config, *, timeout_s: float = 120.0) -> dict:
    """Run every check; return a summary when all is well, raise EnvironmentProblems otherwise."""
    from ringtrain.spark import export_store_settings, get_spark
    export_store_settings(cfg.spark.conf)  # the driver's store probe runs before Spark starts
    with_hdfs = cfg.store.root.startswith("hdfs://")
    driver = probe.process_report(cfg.store.root, "driver", with_hdfs=with_hdfs)
    java = check_java()
    problems = java + driver_problems(driver, cfg.store.root)
    if java:
        raise EnvironmentProblems(problems)  # no JVM, no Spark: nothing more can be checked
    summary = {"driver": driver, "tasks": []}
    spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
    try:
        sc = spark.sparkContext
        summary["master"] = sc.master
        spark_problems = spark_settings_problems(sc, cfg, timeout_s)
        problems += spark_problems
        if not any(p.where == "slots" for p in spark_problems):
            tasks, stage_problems = run_barrier_probe(sc, cfg, with_hdfs, timeout_s)
            summary["tasks"] = tasks
            problems += stage_problems + executor_problems(driver, tasks, cfg)
    finally:
        spark.stop()
    if problems:
        raise EnvironmentProblems(problems)
    return summary


# ----------------------------------------------------------------------------- driver

def check_java() -> list[Problem]:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")  # what spark-class runs
    if java and not os.access(java, os.X_OK):
        java = None
    if java is None:
        where = f"JAVA_HOME={home} has no bin/java" if home else "no java on PATH"
        return [Problem("driver", f"Java not found ({where}): Spark needs a JDK 11 or newer. Fix: install OpenJDK "
                                  f"17 (apt-get install openjdk-17-jdk-headless) and set JAVA_HOME to it")]
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    major = int(match.group(2)) if major == 1 and match and match.group(2) else major  # "1.8" is Java 8
    if major < 11:
        return [Problem("driver", f"Java at {java} is {out.splitlines()[0] if out else 'unknown'}: Spark 3.5 with "
                                  f"ringtrain needs Java 11 or newer. Install OpenJDK 17 and set JAVA_HOME")]
    return []


def driver_problems(driver: dict, root: str) -> list[Problem]:
    out = []
    if driver["store_error"]:
        out.append(Problem("driver", f"the store {root} is not writable from the driver ({driver['store_error']}). "
                                     f"Fix store.root, its permissions, or the credentials of its filesystem"))
    if driver["hdfs_env"] is not None:
        out += hdfs_problems(driver["hdfs_env"], "driver", spark_conf=False)
    return out


def hdfs_problems(env: dict, where: str, *, spark_conf: bool) -> list[Problem]:
    """libhdfs needs these in every process that opens hdfs:// (driver and executors alike)."""
    lines = {
        "HADOOP_HOME": "HADOOP_HOME=/path/to/hadoop (the client install on every node)",
        "JAVA_HOME": "JAVA_HOME=/path/to/jdk",
        "CLASSPATH": "CLASSPATH=$(hadoop classpath --glob) (jar files; plain `hadoop classpath` has wildcards "
                     "that JNI does not expand)",
        "ARROW_LIBHDFS_DIR": "ARROW_LIBHDFS_DIR=$HADOOP_HOME/lib/native (the folder holding libhdfs.so)",
    }
    # ARROW_LIBHDFS_DIR may stay unset when $HADOOP_HOME/lib/native holds libhdfs.so (pyarrow looks there too).
    wrong = {name for name in ("HADOOP_HOME", "JAVA_HOME", "CLASSPATH") if not env.get(name)}
    if not env.get("classpath_has_jars"):
        wrong.add("CLASSPATH")
    if not env.get("libhdfs.so"):
        wrong.add("ARROW_LIBHDFS_DIR")
    missing = [name for name in lines if name in wrong]
    if not missing:
        return []
    if spark_conf:
        fixes = " ".join(f"--conf spark.executorEnv.{lines[name]}" for name in missing)
    else:
        fixes = "; ".join(f"export {lines[name]}" for name in missing)
    return [Problem(where, f"hdfs:// store but libhdfs is not set up ({', '.join(missing)} missing or wrong). "
                           f"Fix: {fixes}")]


# ----------------------------------------------------------------------------- Spark settings

def spark_settings_problems(sc, cfg: Config, timeout_s: float) -> list[Problem]:
    from ringtrain.training.launcher import check_gpus, check_slots
    conf = sc.getConf()
    out = []
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        out.append(Problem("spark", "spark.dynamicAllocation.enabled is true: barrier stages refuse dynamic "
                                    "allocation. Fix: --conf spark.dynamicAllocation.enabled=false (and remove it "
                                    "from spark.conf)"))
    try:
        check_slots(sc, cfg.train.num_workers)
        check_cluster_slots(sc, cfg.train.num_workers, timeout_s)
    except UserError as exc:
        out.append(Problem("slots", str(exc)))
    try:
        check_gpus(sc, cfg.train.gpus_per_worker)
    except UserError as exc:
        out.append(Problem("spark", str(exc)))
    if cfg.train.gpus_per_worker and not (conf.get("spark.executor.resource.gpu.discoveryScript")
                                          or conf.get("spark.worker.resource.gpu.discoveryScript")):
        out.append(Problem("spark", "train.gpus_per_worker > 0 but no GPU discovery script is set. Fix: --files "
                                    "conf/gpu_discovery.sh --conf spark.executor.resource.gpu.discoveryScript="
                                    "./gpu_discovery.sh (YARN), or spark.worker.resource.gpu.discoveryScript "
                                    "(standalone workers)"))
    return out


def check_cluster_slots(sc, num_workers: int, timeout_s: float) -> None:
    """On cluster masters, wait (up to timeout_s) for executors to offer `num_workers` slots at once.

    This is the count Spark's own barrier check uses (maxNumConcurrentTasks of the default resource
    profile); asking for it directly avoids that check's minutes of retries."""
    from ringtrain.errors import NotEnoughSlots
    if sc.master.startswith("local"):
        return  # check_slots counted them from the master URL
    jsc = sc._jsc.sc()
    profile = jsc.resourceProfileManager().defaultResourceProfile()
    waited, slots = 0.0, 0
    while waited <= min(timeout_s, 60.0):
        slots = jsc.maxNumConcurrentTasks(profile)
        if slots >= num_workers:
            return
        threading.Event().wait(1.0)
        waited += 1.0
    raise NotEnoughSlots(
        f"train.num_workers={num_workers} barrier tasks need {num_workers} task slots at once, but the executors "
        f"registered after {waited:.0f}s offer {slots}. Fix: more executors or cores (e.g. --num-executors "
        f"{num_workers} --executor-cores 1 with spark.task.cpus=1), or lower train.num_workers")


# ----------------------------------------------------------------------------- one barrier stage

def run_barrier_probe(sc, cfg: Config, with_hdfs: bool, timeout_s: float) -> tuple[list[dict], list[Problem]]:
    """Every task reports its facts; the stage is cancelled after timeout_s."""
    from pyspark import InheritableThread
    from pyspark import cloudpickle
    # By value: the executors may not be able to import ringtrain, which is one thing to find out.
    cloudpickle.register_pickle_by_value(probe)
    n = cfg.train.num_workers
    task = functools.partial(probe.barrier_task, cfg.store.root, with_hdfs,
                             gpus_per_worker=cfg.train.gpus_per_worker, engine=cfg.train.engine)
    outcome: dict = {}

    def collect() -> None:
        sc.setJobGroup(JOB_GROUP, "ringtrain doctor: one barrier stage", interruptOnCancel=True)
        try:
            outcome["tasks"] = sc.parallelize(range(n), n).barrier().mapPartitions(task).collect()
        except Exception as exc:
            outcome["error"] = str(exc)

    thread = InheritableThread(target=collect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        sc.cancelJobGroup(JOB_GROUP)
        thread.join(30)
        return [], [Problem("executors", f"the barrier stage of {n} tasks did not finish in {timeout_s:g}s "
                                         f"(doctor --timeout): the cluster could not run {n} tasks at once, or "
                                         f"the executors hang. Fix: check the executors' logs and the slots")]
    if "error" in outcome:
        return [], [stage_failure(outcome["error"])]
    return sorted(outcome["tasks"], key=lambda t: t["who"]), []


def stage_failure(error: str) -> Problem:
    found = re.search(r"Python in worker has different version:? \(?(\d+), ?(\d+)\)? than that in driver "
                      r"(\d+\.\d+)", error)
    if found:
        return Problem("executors", f"the executors run Python {found.group(1)}.{found.group(2)}, the driver "
                                    f"Python {found.group(3)}: PySpark refuses different minor versions. "
                                    f"Fix: {PACK_FIX}")
    first = next((line for line in error.splitlines() if "Error" in line), error.strip().splitlines()[0])
    return Problem("executors", f"the barrier stage failed: {first[:400]}. Fix: see the executors' stderr; "
                                f"if their Python lacks the stack, {PACK_FIX}")


def executor_problems(driver: dict, tasks: list[dict], cfg: Config) -> list[Problem]:
    out = []
    for task in tasks:
        where = f"executors: {task['who']} on {task['host']} ({task['executable']})"
        for name, mine in driver["versions"].items():
            theirs = task["versions"][name]
            if mine.startswith("missing"):
                continue  # not part of this stack (the Spark 4 stack has no Horovod): nothing to match
            if theirs.startswith("missing"):
                out.append(Problem(where, f"{name} is not importable in the executors' Python ({theirs}). "
                                          f"Fix: {PACK_FIX}"))
            elif theirs != mine:
                out.append(Problem(where, f"{name} {theirs} on the executor but {mine} on the driver. Fix: run "
                                          f"both from one environment: {PACK_FIX} (and check "
                                          f"spark.executorEnv.PYTHONPATH)"))
        if task["store_error"]:
            out.append(Problem(where, f"the store {cfg.store.root} is not writable from this executor "
                                      f"({task['store_error']}). Fix: store.root must be a location every "
                                      f"executor can write (hdfs://, s3://, or a mount present on every node), "
                                      f"with write permission for the user the executors run as"))
        if task["hdfs_env"] is not None:
            out += hdfs_problems(task["hdfs_env"], where, spark_conf=True)
        if len(task["gpus"]) != cfg.train.gpus_per_worker:
            out.append(Problem(where, f"the task got {len(task['gpus'])} GPU(s) {task['gpus']} but "
                                      f"train.gpus_per_worker={cfg.train.gpus_per_worker}. Fix: "
                                      f"--conf spark.task.resource.gpu.amount={cfg.train.gpus_per_worker} with "
                                      f"executors that have them (spark.executor.resource.gpu.amount and a "
                                      f"discovery script), or set train.gpus_per_worker"))
        out += [Problem(where, text) for text in cuda_problems(task, cfg.train.gpus_per_worker, cfg.train.engine)]
    return _unique(out)


def cuda_problems(task: dict, gpus_per_worker: int, engine: str) -> list[str]:
    """What stops a rank from training on the GPUs Spark gave this task, from the probe's `cuda` report
    (None where none was asked for or none was given: the GPU count check above covers the latter)."""
    cuda = task.get("cuda")
    if not gpus_per_worker or cuda is None:
        return []
    gpus = ",".join(task["gpus"])
    if cuda.get("torch") is None:  # the probe itself failed, or torch does not import
        return [f"the CUDA check on GPU(s) {gpus} failed: {cuda['error']}. Fix: see the executor's stderr; "
                f"a GPU run needs the GPU stack: {GPU_STACK_FIX}"]
    if not cuda["torch_cuda"]:
        return [f"torch {cuda['torch']} in the executors' Python is a CPU build (torch.version.cuda is None), "
                f"but Spark gave the task GPU(s) {gpus}. Fix: {GPU_STACK_FIX}"]
    out = []
    seen = f"CUDA_VISIBLE_DEVICES={cuda['cuda_visible_devices']}, torch {cuda['torch']}, CUDA {cuda['torch_cuda']}"
    indices_fix = ("the discovery script must print the GPU indices CUDA uses on that node (conf/gpu_discovery.sh "
                   "prints nvidia-smi's); in containers that expose only their own GPUs (YARN with GPU isolation, "
                   "Docker) those are 0..n-1")
    if cuda["error"]:
        # No driver, or one too old, says so in torch's message; otherwise CUDA saw none of the task's indices.
        fix = ("install an NVIDIA driver >= 580 (torch's CUDA 13 build needs it) on the node, and check "
               "nvidia-smi there" if "driver" in cuda["error"].lower() else indices_fix)
        error = cuda["error"][:400].rstrip(".")
        out.append(f"CUDA does not work on the task's GPU(s) {gpus} ({seen}): {error}. Fix: {fix}")
    elif cuda["device_count"] != len(task["gpus"]):
        out.append(f"CUDA shows {cuda['device_count']} device(s) for the task's GPU(s) {gpus} ({seen}). "
                   f"Fix: {indices_fix}")
    if engine == "horovod":
        if cuda["horovod_error"]:
            out.append(f"Horovod does not load beside CUDA torch ({cuda['horovod_error'][:400]}). Fix: if it names "
                       f"libnccl.so.2, --conf spark.executorEnv.LD_LIBRARY_PATH=./env/lib/python3.11/site-packages/"
                       f"nvidia/nccl/lib (the packed environment's NCCL); otherwise rebuild it on the GPU stack: "
                       f"{GPU_STACK_FIX}")
        elif not cuda["nccl_built"]:
            out.append(f"Horovod in the executors' Python was built without NCCL: its GPU all-reduce would not "
                       f"work. Fix: {GPU_STACK_FIX} (its bootstrap builds Horovod with NCCL; needs nvcc), or use "
                       f"train.engine: ddp")
    return out


def _unique(problems: list[Problem]) -> list[Problem]:
    """One line per distinct problem text: N tasks with the same wrong pyarrow make one entry."""
    seen: dict[str, Problem] = {}
    for p in problems:
        seen.setdefault(p.text, p)
    return list(seen.values())


def format_report(summary: dict) -> str:
    d = summary["driver"]
    lines = [f"DOCTOR    all checks passed on {summary.get('master')}",
             f"          driver {d['host']}: {d['executable']} " + _versions(d["versions"])]
    for t in summary["tasks"]:
        gpus = f", GPUs {','.join(t['gpus'])}" if t["gpus"] else ""
        if t.get("cuda") and t["cuda"].get("devices"):
            gpus += f" ({', '.join(t['cuda']['devices'])}, CUDA {t['cuda']['torch_cuda']})"
        lines.append(f"          {t['who']} on {t['host']}: {t['executable']} {_versions(t['versions'])}{gpus}")
    return "\n".join(lines)


def _versions(v: dict) -> str:
    return " ".join(f"{k} {'absent' if v[k].startswith('missing') else v[k]}" for k in v)
