"""`ringtrain doctor` as users run it (a subprocess, its own Spark): exit 0 when all is well, 2 with each
problem's fix. Every broken set-up is real: executors on another Python, another pyarrow on the
executors' path, a store they cannot write, a master with too few slots, GPUs Spark does not give."""
import glob
import os
import subprocess
import sys
import zipfile
from importlib.metadata import version

import pytest

from conftest import ROOT

BIN = os.path.dirname(sys.executable)
PACK_FIX = "build the environment with `ringtrain pack` and submit with --archives ringtrain-env.tar.gz#env"
OTHER_PYARROW = "25.0.1"  # any release other than the locks' (14.0.2 on Spark 3.5, 18.1.0 on Spark 4)


def doctor(root, extra=(), env=None):
    sets = [f"store.root={root}", "spark.conf={spark.ui.enabled: 'false'}", *extra]
    cmd = [f"{BIN}/ringtrain", "doctor", "--config", os.path.join(ROOT, "conf", "demo.yaml"), "--timeout", "300",
           *[x for s in sets for x in ("--set", s)]]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYSPARK_PYTHON": sys.executable, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.mark.spark
@pytest.mark.slow
def test_all_well_exits_0_and_reports_every_task(tmp_path):
    out = doctor(tmp_path, env={})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DOCTOR    all checks passed on local[2]" in out.stdout
    assert out.stdout.count(f"{sys.executable} python") == 3  # the driver and both barrier tasks
    assert not os.listdir(tmp_path / "_doctor")  # every probe object was deleted again


def other_python() -> str | None:
    """Another interpreter on this machine with the same minor version (PySpark refuses another minor)
    but another patch release, e.g. the system's /usr/bin/python3.11 beside a pyenv 3.11.7."""
    mine = subprocess.run([sys.executable, "-V"], capture_output=True, text=True).stdout.strip()
    for path in ("/usr/bin/python3.11", "/usr/local/bin/python3.11", "/root/.pyenv/shims/python3.11"):
        if os.path.exists(path) and os.path.realpath(path) != os.path.realpath(sys.executable):
            theirs = subprocess.run([path, "-V"], capture_output=True, text=True).stdout.strip()
            if theirs != mine:
                return path
    return None


@pytest.mark.spark
@pytest.mark.slow
def test_executors_on_another_python_without_the_stack(tmp_path):
    python = other_python()
    if python is None:
        pytest.skip("no second Python 3.11 of another patch release on this machine")
    out = doctor(tmp_path, env={"PYSPARK_PYTHON": python})  # the cluster's default python, as in issue 8
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"({python})] python 3.11." in out.stderr and "on the executor but 3.11." in out.stderr
    assert "torch is not importable in the executors' Python" in out.stderr
    assert PACK_FIX in out.stderr


@pytest.fixture(scope="module")
def other_pyarrow(tmp_path_factory) -> str:
    """A folder holding a real pyarrow release other than ours, unpacked from its wheel."""
    tmp = tmp_path_factory.mktemp("pyarrow")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          f"pyarrow=={OTHER_PYARROW}", "-d", str(tmp / "wheel")], capture_output=True, text=True,
                         timeout=600)
    if got.returncode != 0:
        pytest.skip(f"cannot download pyarrow {OTHER_PYARROW}: {got.stderr[-500:]}")
    (wheel,) = glob.glob(str(tmp / "wheel" / "pyarrow-*.whl"))
    zipfile.ZipFile(wheel).extractall(tmp / "site")
    return str(tmp / "site")


@pytest.mark.spark
@pytest.mark.slow
def test_executors_with_another_pyarrow(tmp_path, other_pyarrow):
    conf = f"spark.conf={{spark.ui.enabled: 'false', spark.executorEnv.PYTHONPATH: '{other_pyarrow}'}}"
    out = doctor(tmp_path, [conf])
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"pyarrow {OTHER_PYARROW} on the executor but {version('pyarrow')} on the driver" in out.stderr
    assert "Fix: run both from one environment" in out.stderr and "spark.executorEnv.PYTHONPATH" in out.stderr


def read_only_folder(tmp_path) -> str:
    """A folder nobody may create files in: root ignores permission bits, so as root use sysfs,
    which refuses new entries to everyone."""
    if os.geteuid() == 0:
        return "/sys/ringtrain-doctor-store"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


@pytest.mark.spark
@pytest.mark.slow
def test_store_the_executors_cannot_write(tmp_path):
    out = doctor(read_only_folder(tmp_path))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "is not writable from this executor" in out.stderr
    assert "Fix: store.root must be a location every executor can write" in out.stderr


@pytest.mark.spark
@pytest.mark.slow
def test_too_few_slots_is_reported_without_starting_the_stage(tmp_path):
    out = doctor(tmp_path, ["spark.master=local[1]"])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "train.num_workers=2 barrier tasks need 2 task slots at once, but master local[1]" in out.stderr
    assert "Lower train.num_workers, or use a master with more slots (e.g. local[2])" in out.stderr


@pytest.mark.spark
@pytest.mark.slow
def test_gpus_per_worker_that_spark_does_not_give(tmp_path):
    out = doctor(tmp_path, ["train.gpus_per_worker=1"])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "train.gpus_per_worker=1 but spark.task.resource.gpu.amount is None" in out.stderr
    assert "--conf spark.task.resource.gpu.amount=1" in out.stderr
    assert "no GPU discovery script is set. Fix: --files conf/gpu_discovery.sh" in out.stderr
    assert "the task got 0 GPU(s) [] but train.gpus_per_worker=1" in out.stderr


def test_libhdfs_set_up_is_checked_and_each_missing_piece_named(tmp_path, monkeypatch):
    from ringtrain.doctor import hdfs_problems
    from ringtrain.probe import hdfs_env
    hadoop = tmp_path / "hadoop"
    (hadoop / "lib" / "native").mkdir(parents=True)
    for name in ("HADOOP_HOME", "JAVA_HOME", "CLASSPATH", "ARROW_LIBHDFS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HADOOP_HOME", str(hadoop))
    monkeypatch.setenv("CLASSPATH", f"{hadoop}/share/hadoop/common/*")  # `hadoop classpath` without --glob
    (problem,) = hdfs_problems(hdfs_env(), "executors", spark_conf=True)
    assert "(JAVA_HOME, CLASSPATH, ARROW_LIBHDFS_DIR missing or wrong)" in problem.text
    assert "--conf spark.executorEnv.CLASSPATH=$(hadoop classpath --glob)" in problem.text
    assert "--conf spark.executorEnv.ARROW_LIBHDFS_DIR=$HADOOP_HOME/lib/native" in problem.text
    (problem,) = hdfs_problems(hdfs_env(), "driver", spark_conf=False)
    assert "export JAVA_HOME=/path/to/jdk" in problem.text

    (hadoop / "lib" / "native" / "libhdfs.so").write_bytes(b"")
    monkeypatch.setenv("JAVA_HOME", "/usr/lib/jvm/default")
    monkeypatch.setenv("CLASSPATH", f"{hadoop}/share/hadoop/common/hadoop-common.jar")
    assert hdfs_problems(hdfs_env(), "executors", spark_conf=True) == []


def test_missing_java_is_reported_before_spark_starts(tmp_path):
    out = doctor(tmp_path, env={"JAVA_HOME": str(tmp_path / "no-jdk")})
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"Java not found (JAVA_HOME={tmp_path / 'no-jdk'} has no bin/java)" in out.stderr
    assert "Fix: install OpenJDK 17" in out.stderr
