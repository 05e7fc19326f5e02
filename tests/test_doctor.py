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
    from ringtrain.jobs.doctor import hdfs_problems
    from ringtrain.jobs.probe import hdfs_env
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


# A task's report as the probe returns it, with the CUDA part as a rank on the task's GPUs saw it.
def task_report(gpus=("0",), **cuda):
    seen = {"cuda_visible_devices": ",".join(gpus), "torch": "2.13.0", "torch_cuda": "13.0",
            "device_count": len(gpus), "devices": ["NVIDIA H200"] * len(gpus), "error": None,
            "nccl_built": 22907, "horovod_error": None}
    return {"who": "task0", "host": "node1", "executable": "/env/bin/python", "gpus": list(gpus),
            "cuda": {**seen, **cuda} if cuda.pop("probe", True) else None}


@pytest.mark.parametrize("task, gpus_per_worker, engine, expected", [
    # all well: with and without Horovod
    (task_report(), 1, "horovod", []),
    (task_report(("2", "3")), 2, "ddp", []),
    # no GPUs asked for, or none given (the GPU count check says so): nothing probed, nothing to say
    (task_report(probe=False), 0, "ddp", []),
    (task_report((), probe=False), 1, "ddp", []),
    # CPU torch on a task with (fake) GPUs: what tests with a fake discovery script meet
    (task_report(torch="2.13.0+cpu", torch_cuda=None, device_count=0, devices=[]), 1, "ddp",
     ["torch 2.13.0+cpu in the executors' Python is a CPU build (torch.version.cuda is None), but Spark gave the "
      "task GPU(s) 0. Fix: set up the GPU stack (make setup GPU=1"]),
    # Spark's addresses are not the ones CUDA uses in the container: CUDA sees none of them
    (task_report(("3",), device_count=0, devices=[], error="RuntimeError: No CUDA GPUs are available"), 1, "ddp",
     ["CUDA does not work on the task's GPU(s) 3 (CUDA_VISIBLE_DEVICES=3, torch 2.13.0, CUDA 13.0): RuntimeError: "
      "No CUDA GPUs are available. Fix: the discovery script must print the GPU indices CUDA uses"]),
    # no driver on the node (what CUDA torch says on a machine without one)
    (task_report(device_count=0, devices=[], error="RuntimeError: Found no NVIDIA driver on your system."), 1,
     "ddp", ["CUDA does not work on the task's GPU(s) 0 (CUDA_VISIBLE_DEVICES=0, torch 2.13.0, CUDA 13.0): "
             "RuntimeError: Found no NVIDIA driver on your system. Fix: install an NVIDIA driver >= 580"]),
    # more devices visible than given (the variable was not narrowed to the task's GPUs)
    (task_report(("0",), device_count=8), 1, "ddp", ["CUDA shows 8 device(s) for the task's GPU(s) 0"]),
    # a driver too old for CUDA 13
    (task_report(error="RuntimeError: The NVIDIA driver on your system is too old (found version 12020)"), 1,
     "ddp", ["CUDA does not work on the task's GPU(s) 0 (CUDA_VISIBLE_DEVICES=0, torch 2.13.0, CUDA 13.0): "
             "RuntimeError: The NVIDIA driver on your system is too old"]),
    # Horovod without NCCL matters only when Horovod is the engine
    (task_report(nccl_built=0), 1, "horovod", ["Horovod in the executors' Python was built without NCCL"]),
    (task_report(nccl_built=0), 1, "ddp", []),
    (task_report(nccl_built=None, horovod_error="ImportError: libnccl.so.2: cannot open shared object file"), 1,
     "horovod", ["Horovod does not load beside CUDA torch (ImportError: libnccl.so.2: cannot open shared object "
                 "file). Fix: if it names libnccl.so.2, --conf spark.executorEnv.LD_LIBRARY_PATH="]),
    # the probe itself failed (torch missing, a crash, a timeout)
    ({**task_report(), "cuda": {"error": "the CUDA probe did not finish in 90s (a hung GPU or driver)"}}, 1, "ddp",
     ["the CUDA check on GPU(s) 0 failed: the CUDA probe did not finish in 90s (a hung GPU or driver)"]),
])
def test_cuda_problems_of_a_task(task, gpus_per_worker, engine, expected):
    from ringtrain.jobs.doctor import cuda_problems
    found = cuda_problems(task, gpus_per_worker, engine)
    assert len(found) == len(expected), found
    for text, start in zip(found, expected):
        assert text.startswith(start), text


def test_executor_problems_name_the_task_and_report_a_cpu_torch_once_per_task():
    from ringtrain.config import load_config
    from ringtrain.jobs.doctor import executor_problems
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), ["train.gpus_per_worker=1", "train.engine=ddp"])
    driver = {"versions": {"python": "3.11.7", "torch": "2.13.0+cpu"}}
    cpu = {"torch": "2.13.0+cpu", "torch_cuda": None, "device_count": 0, "devices": []}
    tasks = [{**task_report((gpu,), **cpu), "who": f"task{i}", "versions": driver["versions"], "store_error": None,
              "hdfs_env": None} for i, gpu in enumerate(("0", "1"))]
    problems = executor_problems(driver, tasks, cfg)
    assert [p.where for p in problems] == ["executors: task0 on node1 (/env/bin/python)",
                                           "executors: task1 on node1 (/env/bin/python)"]
    assert all("is a CPU build" in p.text for p in problems)


def test_the_cuda_probe_runs_and_reports_this_torch():
    """The child script itself, on this machine's torch: a CPU build here, the real GPU where there is one."""
    import torch
    from ringtrain.jobs.doctor import cuda_problems
    from ringtrain.jobs.probe import cuda_report
    report = cuda_report(["0"], "ddp")
    assert report["torch"] == torch.__version__ and report["torch_cuda"] == torch.version.cuda
    assert report["cuda_visible_devices"] == "0"
    problems = cuda_problems({"gpus": ["0"], "cuda": report}, 1, "ddp")
    if torch.version.cuda is None:
        assert len(problems) == 1 and "is a CPU build" in problems[0]
    elif torch.cuda.is_available():
        assert problems == [] and report["device_count"] == 1 and report["devices"]
