"""What `ringtrain doctor` measures in one Python process: on the driver, and in each barrier task.

This module is shipped to the executors BY VALUE (doctor registers it with cloudpickle), because
the question it answers is whether the executors' Python can import ringtrain at all: nothing here
may import ringtrain, torch, pyarrow or pyspark at module level. Every import happens inside a
function, and a failed import is a fact to report, not an error.
"""
from __future__ import annotations

import importlib
import os
import platform
import socket
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
        from ringtrain import store
    except Exception as exc:
        return f"cannot import ringtrain.store: {exc}"
    data = f"ringtrain doctor probe from {who}".encode()
    path = store.join(root, "_doctor", f"{who}-{uuid.uuid4().hex[:8]}")
    try:
        store.atomic_write_bytes(path, data)
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


def barrier_task(store_root: str, with_hdfs: bool, _rows):
    """The function of doctor's one barrier stage (one call per task)."""
    from pyspark import BarrierTaskContext
    ctx = BarrierTaskContext.get()
    gpus = ctx.resources().get("gpu")
    report = process_report(store_root, f"task{ctx.partitionId()}", with_hdfs=with_hdfs)
    report["gpus"] = list(gpus.addresses) if gpus is not None else []
    yield report
