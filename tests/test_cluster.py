"""A real Spark standalone cluster on this machine: a master and two workers, each its own JVM, and the
jobs (doctor, ETL, training; a user's training function on each engine of the stack, its module shipped
by --py-files) submitted to it as a user would, with the environment that `ringtrain pack` built (shipped
by --archives to the doctor, the ETL and the training), authentication and network encryption on.

The ETL's shards must be byte-identical to a local-mode run of the same config, both ranks must end
with identical parameters (the function: the same steps), and nothing the test started (process or
listening port) may survive it.
"""
import contextlib
import fcntl
import glob
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import JVM_TEST_OPTS, ROOT, listening_ports, own_tree
from ringtrain.config import load_config
from ringtrain.etl.pipeline import run_etl
from ringtrain.etl.sample_data import write_churn_csv
from ringtrain.layout import RunStore
from ringtrain.manifest import load_manifest
from ringtrain import store
from ringtrain.stack import current as current_stack, installed, resolve
from ringtrain.training.environment import free_port
from ringtrain.training.spec import FunctionResult

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BIN = os.path.dirname(sys.executable)
SPARK_CLASS = os.path.join(os.path.dirname(__import__("pyspark").__file__), "bin", "spark-class")
ROWS = 6000
ENGINES = ["horovod", "ddp"] if installed("horovod") else ["ddp"]
EXAMPLE = os.path.join(ROOT, "examples", "train_function.py")
SPARK_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"}


def spark_conf_set(conf: dict) -> str:
    return "spark.conf={" + ", ".join(f"{k}: '{v}'" for k, v in conf.items()) + "}"


SETS = [f"demo.rows={ROWS}", "etl.shards.rows_per_shard=1000", "etl.shards.row_group_rows=256",
        "train.batch_size=128", spark_conf_set(SPARK_CONF)]


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory):
    """`ringtrain pack`, once for this module. With RINGTRAIN_DISCARD_PACK_ENV=1 (CI, where disk is scarce) the
    environment it made under build/ goes once the module is done; the archive always does."""
    out_dir = tmp_path_factory.mktemp("pack")  # pack makes the archive's folder (archives/) itself
    archive = str(out_dir / "archives" / "env.tar.gz")
    done = subprocess.run([f"{BIN}/ringtrain", "pack", "--output", archive, "--json"], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    packed = json.loads(done.stdout)
    yield packed
    os.remove(packed["archive"])
    if os.environ.get("RINGTRAIN_DISCARD_PACK_ENV") == "1":
        shutil.rmtree(packed["env_dir"], ignore_errors=True)


@pytest.fixture
def one_cluster_at_a_time():
    """CI runs the two stacks' suites side by side (.ci/run); their standalone clusters take turns, through a
    lock on a file in this checkout's build/ (their pytest temp folders differ). Yields the seconds waited."""
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    started = time.time()
    with open(os.path.join(ROOT, "build", ".cluster-test.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield time.time() - started
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_pack_holds_ringtrain_non_editable_and_names_the_interpreter(packed_env):
    with tarfile.open(packed_env["archive"]) as archive:
        names = set(archive.getnames())
        python_link = archive.getmember("bin/python3.11").linkname
    site = "lib/python3.11/site-packages"
    assert {f"{site}/ringtrain/jobs/cli.py", f"{site}/ringtrain/etl/pipeline.py", f"{site}/ringtrain/training/worker.py",
            f"{site}/torch/__init__.py", f"{site}/pyarrow/__init__.py"} <= names
    # The archive holds this environment's stack: Horovod where it has it (Spark 3.5), none on Spark 4.
    assert packed_env["stack"] == current_stack()
    assert (f"{site}/horovod/torch/__init__.py" in names) == installed("horovod")
    assert not [n for n in names if "__editable__" in n or n.endswith("ringtrain.egg-link")]
    assert not [n for n in names if "/pyspark/jars/" in n]  # the cluster's Spark brings its own
    # Nothing a task imports is left out: the test suites and torch's C++ test programs are (the cluster test
    # below runs the ETL and training from this archive); torch's shared-memory manager stays.
    assert not [n for n in names if "/tests/" in n or n.startswith(f"{site}/torch/bin/test_")]
    assert f"{site}/torch/bin/torch_shm_manager" in names
    # It is a copy of the environment that ran pack, less ringtrain's test tools (and what only they need).
    assert {"pytest", "moto", "venv-pack", "botocore"} <= set(packed_env["left_out"])
    assert not [n for n in names if n.startswith((f"{site}/pytest", f"{site}/moto", f"{site}/botocore/"))]
    assert f"{site}/pip/__init__.py" in names and f"{site}/yaml/__init__.py" in names
    # venv-pack does not pack the interpreter: the archive links to it, and pack says so.
    assert os.path.isabs(python_link) and os.path.realpath(python_link) == packed_env["interpreter"]["path"]
    assert packed_env["interpreter"]["version"] == platform.python_version()


def wait_for(predicate, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(0.5)


@contextlib.contextmanager
def standalone_cluster(tmp_path):
    """spark://127.0.0.1:PORT with two 1-core workers; yields (master URL, properties file, the workers' work
    folders); stops them by pid."""
    tmp_path.mkdir()
    port = free_port()
    props = tmp_path / "spark-auth.conf"  # the secret goes in a file, not on command lines
    props.write_text(f"spark.authenticate true\nspark.authenticate.secret {secrets.token_hex(16)}\n"
                     "spark.network.crypto.enabled true\nspark.io.encryption.enabled true\n")
    props.chmod(0o600)
    env = {**without_aws(os.environ), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp_path),
           "SPARK_DAEMON_JAVA_OPTS": JVM_TEST_OPTS}
    started: list[subprocess.Popen] = []

    def daemon(name: str, args: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([SPARK_CLASS, *args, "--properties-file", str(props)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    def log_has(name: str, text: str) -> bool:
        return text in (tmp_path / f"{name}.log").read_text(errors="replace")

    try:
        daemon("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                          "--webui-port", "0"])
        wait_for(lambda: log_has("master", "I have been elected leader"), "the master's start")
        for i in (1, 2):
            daemon(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                                  "--memory", "2g", "--webui-port", "0", "--work-dir", str(tmp_path / f"work{i}"),
                                  f"spark://127.0.0.1:{port}"])
        for i in (1, 2):
            wait_for(lambda: log_has(f"worker{i}", "Successfully registered with master"), f"worker{i} registering")
        yield f"spark://127.0.0.1:{port}", str(props), [str(tmp_path / f"work{i}") for i in (1, 2)]
    finally:
        for proc in reversed(started):  # workers first: each stops its executors
            proc.terminate()
        for proc in reversed(started):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster_store(request, tmp_path):
    """(store.root, extra --set values) for the cluster's jobs: a prefix on the suite's S3-compatible server
    (tests/s3_server.py, its own process), reached through the `spark.hadoop.fs.s3a.*` settings a cluster
    would carry; a local folder in a suite that has no such server."""
    try:
        server = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        return str(tmp_path / "store"), []
    s3a = {"spark.hadoop.fs.s3a.endpoint": server.endpoint,
           "spark.hadoop.fs.s3a.access.key": server.env["AWS_ACCESS_KEY_ID"],
           "spark.hadoop.fs.s3a.secret.key": server.env["AWS_SECRET_ACCESS_KEY"],
           "spark.hadoop.fs.s3a.endpoint.region": server.env["AWS_REGION"]}
    return server.fresh_uri("cluster"), [spark_conf_set({**SPARK_CONF, **s3a})]  # replaces SETS' spark.conf


def without_aws(env: dict) -> dict:
    """The cluster gets the object store's settings from the config alone, as on a real cluster."""
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


def submit(master: str, props: str, env_info: dict, job: str, sets: list[str], extra=(), work_dirs=(),
           ship_env: bool = True) -> dict:
    """spark-submit one job, in its own process group (a timeout kills the driver JVM and its Python driver
    alike, so nothing of a hung job outlives the test); then delete the finished application's folders on the
    workers (each executor unpacks the environment there: 2 GB per executor and job, which a small CI disk
    does not hold three times). With `ship_env` the executors get the packed environment by --archives (about
    45 s per job here: each executor fetches it, encrypted, and unpacks it); without, they run the folder it was
    packed from, as on a cluster whose nodes have the environment installed at one path."""
    python = ["--archives", f"{env_info['archive']}#env", "--conf", "spark.pyspark.python=./env/bin/python"] \
        if ship_env else ["--conf", f"spark.pyspark.python={env_info['python']}"]
    cmd = [f"{BIN}/spark-submit", "--master", master, "--properties-file", props,
           "--conf", "spark.cores.max=2", "--executor-cores", "1", "--executor-memory", "1g",
           "--conf", "spark.driver.host=127.0.0.1", *python,
           # The driver runs the packed environment too (the folder the archive was made from), so the job
           # imports the non-editable ringtrain, as on a cluster, not this checkout.
           "--conf", f"spark.pyspark.driver.python={env_info['python']}",
           *extra, os.path.join(ROOT, "jobs", job), "--config", os.path.join(ROOT, "conf", "demo.yaml"), "--json",
           *[x for s in sets for x in ("--set", s)]]
    env = {k: v for k, v in without_aws(os.environ).items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    # pip's spark-submit finds Spark through the first `python3` on PATH: the test venv's (same pyspark).
    env.update(PATH=BIN + os.pathsep + env.get("PATH", ""), SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n{job} did not finish within 900 s: killed\n"
    try:
        assert proc.returncode == 0, stderr[-4000:] + executor_errors(work_dirs)
    finally:
        for work in work_dirs:
            for app in glob.glob(os.path.join(work, "app-*")):
                shutil.rmtree(app, ignore_errors=True)
    return json.loads(stdout[stdout.index("{"):])


def executor_errors(work_dirs) -> str:
    """The last lines of each executor's stderr (what a failed job's driver log does not show: an executor
    that could not start, e.g. a full disk while it unpacked the environment)."""
    tails = []
    for path in sorted(p for w in work_dirs for p in glob.glob(os.path.join(w, "app-*", "*", "stderr")))[-4:]:
        with open(path, errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith(("\tat ", " INFO "))]
        tails.append(f"--- {path}\n" + "\n".join(lines[-15:]))
    return "\n".join(["", "executors:", *tails]) if tails else ""


def process_tree() -> set[int]:
    """Live processes of this test's tree (conftest makes the test a subreaper, so a JVM or worker that the
    cluster left behind is still counted; zombies are dead, merely not reaped yet, and are not)."""
    return {p.pid for p in own_tree()}


def processes_left(before: set[int], grace_s: float = 30.0) -> set[int]:
    """Processes of this test's tree that were not there `before`, after giving those that are still exiting
    (a stopped worker's executor JVMs, Python workers) `grace_s` to go. A leak outlives the grace."""
    deadline = time.time() + grace_s
    while (left := process_tree() - before) and time.time() < deadline:
        time.sleep(0.5)
    return left


def test_etl_and_training_on_a_standalone_cluster_with_the_packed_env(spark, packed_env, cluster_store, tmp_path,
                                                                       one_cluster_at_a_time):
    raw = str(tmp_path / "raw")
    write_churn_csv(raw, ROWS, 7)
    root, store_sets = cluster_store
    sets = [f"etl.source.path={raw}", *SETS, f"store.root={root}", *store_sets]
    processes_before, ports_before = process_tree(), listening_ports()

    with standalone_cluster(tmp_path / "cluster") as (master, props, work):
        # doctor first, with the very flags of the jobs: separate executor JVMs on the packed Python.
        doctor = submit(master, props, packed_env, "doctor_job.py", sets, work_dirs=work)
        etl = submit(master, props, packed_env, "etl_job.py", sets, work_dirs=work)
        train = submit(master, props, packed_env, "train_job.py", [*sets, "store.run_id=cluster", "train.epochs=1"],
                       work_dirs=work)
        # A user's own training function (examples/train_function.py), on each engine of this stack, shipped
        # as a user ships one: spark-submit --py-files, which the driver and the ranks' worker processes see.
        # The jobs above shipped the environment; these run its folder (same files, 90 s less of this test).
        function = {engine: submit(master, props, packed_env, "train_job.py",
                                   [*sets, f"store.run_id=cluster-{engine}", "train.epochs=1", f"train.engine={engine}",
                                    "train.function=train_function:train_from_config"],
                                   extra=["--py-files", EXAMPLE], work_dirs=work, ship_env=False)
                    for engine in ENGINES}
    # Every JVM and Python process the cluster and the jobs started is gone, and every port they listened on.
    assert not processes_left(processes_before)
    assert listening_ports() <= ports_before

    assert doctor["master"] == master and len(doctor["tasks"]) == 2
    for task in doctor["tasks"]:
        assert task["executable"].endswith("/env/bin/python") and task["versions"] == doctor["driver"]["versions"]
        assert task["store_error"] is None
    assert etl["rows_good"] == ROWS and etl["version"] == "v000001" and etl["dataset_dir"].startswith(root)
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [*SETS, f"etl.source.path={raw}",
                                                                 f"store.root={tmp_path}/local"])
    local = run_etl(spark, cfg.etl, RunStore.create(cfg.store.root).dataset(cfg.etl.dataset))
    on_cluster, in_local_mode = load_manifest(etl["dataset_dir"]), load_manifest(local["dataset_dir"])
    for split in ("train", "val", "test"):
        assert [(s.file, s.sha256) for s in on_cluster.splits[split].shards] == \
               [(s.file, s.sha256) for s in in_local_mode.splits[split].shards]

    ranks = train["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["param_sha256"] == ranks[1]["param_sha256"]
    assert ranks[0]["epochs_run"] == 1 and ranks[0]["engine"] == resolve("auto", "horovod")
    # The model and the checkpoints are in the store (on the object store when there is one).
    assert train["model_dir"].startswith(root) and store.exists(store.join(train["model_dir"], "artifact.json"))
    assert store.listdir(store.join(train["run_dir"], "checkpoints"))

    # The function ran once per rank on the cluster, each rank the same steps (one epoch of its share), and
    # wrote its model where the run's folders are (the object store when there is one).
    rows = on_cluster.splits["train"].rows
    for engine, run in function.items():
        assert run["function"] == "train_function:train_from_config"
        values = [FunctionResult(**r) for r in run["ranks"]]
        assert [(v.rank, v.size) for v in values] == [(0, 2), (1, 2)], engine
        assert [v.load()["steps"] for v in values] == [rows // (2 * 128)] * 2, engine  # train.batch_size=128
        assert run["model_dir"].startswith(root) and store.exists(store.join(run["model_dir"], "logreg.pt")), engine
