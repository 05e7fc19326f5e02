"""What `ringtrain doctor` measures in one Python process: on the driver, and in each barrier task.

This module is shipped to the executors BY VALUE (doctor registers it with cloudpickle), because
the question it answers is whether the executors' Python can import ringtrain at all: nothing here
may import ringtrain, torch, pyarrow or pyspark at module level. Every import happens inside a
function, and a failed import is a fact to report, not an error.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import socket
import subprocess
import sys
import uuid

# Packages whose versions must be equal on the driver and the executors (the wire formats of
# Spark's Python workers, Arrow batches, checkpoints and Horovod's ring depend on them).
PACKAGES = ("ringtrain", "pyarrow", "torch", "horovod")

# Environment that libhdfs (pyarrow's HadoopFileSystem) needs in every process that touches hdfs://.
HDFS_ENV = ("HADOOP_HOME", "JAVA_HOME", "CLASSPATH", "ARROW_LIBHDFS_DIR")


def package_version(name: str) -> str:
    """The package's version, or 'missing: <why>' when this Python cannot import it."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install that fails while importing
        return f"missing: {type(exc).__name__}: {exc}"
    if name == "ringtrain":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("ringtrain")
        except PackageNotFoundError:
            return f"unknown (imported from {os.path.dirname(module.__file__ or '?')})"
    return str(getattr(module, "__version__", "unknown"))


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}}


def hdfs_env() -> dict[str, str | None]:
    """The libhdfs settings as this process sees them, with what each one points at."""
    env = {name: os.environ.get(name) for name in HDFS_ENV}
    libdir = env["ARROW_LIBHDFS_DIR"] or (os.path.join(env["HADOOP_HOME"], "lib", "native")
                                          if env["HADOOP_HOME"] else None)
    env["libhdfs.so"] = (os.path.join(libdir, "libhdfs.so")
                         if libdir and os.path.exists(os.path.join(libdir, "libhdfs.so")) else None)
    # `hadoop classpath --glob` expands to jar files; a bare `hadoop classpath` (wildcards) does not work with JNI.
    env["classpath_has_jars"] = "yes" if ".jar" in (env["CLASSPATH"] or "") else None
    return env


def store_roundtrip(root: str, who: str) -> str | None:
    """Write, read back and delete one probe object under `root` through ringtrain.store.

    Returns None when that worked, else what failed."""
    try:
        from ringtrain import publish, store
    except Exception as exc:
        return f"cannot import ringtrain.store: {exc}"
    data = f"ringtrain doctor probe from {who}".encode()
    path = store.join(root, "_doctor", f"{who}-{uuid.uuid4().hex[:8]}")
    try:
        publish.atomic_write_bytes(path, data)
        if store.read_bytes(path) != data:
            return f"{path}: read back different bytes"
        store.remove(path)
        if store.exists(path):
            return f"{path}: still there after delete"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def process_report(store_root: str, who: str, *, with_hdfs: bool) -> dict:
    """Everything doctor compares, measured in this process."""
    return {"who": who, "host": socket.gethostname(), "executable": sys.executable, "versions": versions(),
            "store_error": store_roundtrip(store_root, who),
            "hdfs_env": hdfs_env() if with_hdfs else None}


# What a training rank would find on the task's GPUs, printed as JSON by a child process. A child, because CUDA
# reads CUDA_VISIBLE_DEVICES once, when it initialises, and Spark reuses its Python workers: the child gets the
# task's GPUs exactly as ringtrain's launcher gives them to a rank, and a hung or crashing driver only takes it.
CUDA_PROBE = r"""
import json, os, sys
out = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "torch": None, "torch_cuda": None,
       "device_count": 0, "devices": [], "error": None, "nccl_built": None, "horovod_error": None}
try:
    import torch
    out["torch"], out["torch_cuda"] = torch.__version__, torch.version.cuda
    if torch.version.cuda:
        out["device_count"] = torch.cuda.device_count()
        torch.cuda.init()  # raises with the reason (no driver, driver too old) where the count is 0
        out["devices"] = [torch.cuda.get_device_name(i) for i in range(out["device_count"])]
        x = torch.arange(1024, dtype=torch.float32, device="cuda:0")
        total = float((x * 2).sum().item())
        if total != 1023 * 1024:
            out["error"] = f"a tensor op on cuda:0 returned {total}, not {1023 * 1024.0}"
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
if sys.argv[1] == "horovod":
    try:
        import horovod.torch as hvd
        out["nccl_built"] = int(hvd.nccl_built())
    except Exception as exc:
        out["horovod_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def cuda_report(task_gpus: list[str], engine: str, timeout_s: float = 90.0) -> dict:
    """CUDA as a rank on `task_gpus` sees it (CUDA_PROBE's fields), or {"error": why the probe itself failed}."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(task_gpus)}
    try:
        done = subprocess.run([sys.executable, "-c", CUDA_PROBE, engine], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"the CUDA probe did not finish in {timeout_s:g}s (a hung GPU or driver)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"the CUDA probe exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


def barrier_task(store_root: str, with_hdfs: bool, _rows, *, gpus_per_worker: int = 0, engine: str = "ddp"):
    """The function of doctor's one barrier stage (one call per task). CUDA (and Horovod's NCCL) is probed only
    where GPUs are asked for and the task got some: the CPU doctor stays fast."""
    from pyspark import BarrierTaskContext
    ctx = BarrierTaskContext.get()
    gpus = ctx.resources().get("gpu")
    report = process_report(store_root, f"task{ctx.partitionId()}", with_hdfs=with_hdfs)
    report["gpus"] = list(gpus.addresses) if gpus is not None else []
    report["executor_cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    report["cuda"] = cuda_report(report["gpus"], engine) if gpus_per_worker and report["gpus"] else None
    yield report
