"""Hermetic fixtures: one local[2] Spark session (UI off, temp dirs) and one small published dataset."""
from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# The suite's JVMs live seconds to minutes and handle kilobytes: HotSpot's optimizing compiler (C2) and a
# parallel collector spend more CPU on them than they save. The quick compiler only and one GC thread cut the
# CPU seconds of tests/test_tasks.py and of test_etl.py + test_pipeline.py by a quarter each (169 -> 127 s;
# README "What was and was not tested"), on the 2-core CI machine where CPU decides the suite's time.
# SPARK_SUBMIT_OPTS reaches every driver JVM the tests start (this session's, each CLI's, each spark-submit's);
# the standalone-cluster test hands JVM_TEST_OPTS to its master and workers too (its executors keep the
# defaults: they fetch and unpack the packed environment, where C1 did not pay). Users' jobs keep the JVM's
# defaults: for rows at scale C2 is what makes Spark fast (BENCHMARKS.md, "A fresh process's fixed cost").
JVM_TEST_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", JVM_TEST_OPTS)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from ringtrain.config import SparkConfig
    from ringtrain.spark import get_spark, scratch_conf
    conf = {**scratch_conf(str(tmp_path_factory.mktemp("spark"))), "spark.sql.shuffle.partitions": "4"}
    session = get_spark(SparkConfig(master="local[2]", app_name="ringtrain-tests", conf=conf))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible server (moto, its own process on 127.0.0.1) with one bucket, for the whole session.

    Its AWS_* settings are set in this process's environment, which subprocesses and Spark JVMs started
    later inherit; `s3_spark` also hands them to the executors of the session's running Spark. Stopped
    (process group killed) at the end: no process or port is left."""
    from s3_server import S3Server
    server = S3Server.start(str(tmp_path_factory.mktemp("moto")))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_spark(spark, s3_server):
    """The session's Spark, its executors' Python given the S3 server's AWS_* settings (Python workers take
    their environment from the SparkContext's, read whenever a job ships a Python function)."""
    spark.sparkContext.environment.update(s3_server.env)
    return spark


def demo_config(root: str, overrides: list[str] | None = None):
    from ringtrain.config import load_config
    return load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                       [f"store.root={root}", f"etl.source.path={root}/raw", "demo.rows=20000",
                        "etl.shards.rows_per_shard=2500", "etl.shards.row_group_rows=1024",
                        "train.epochs=2", "train.batch_size=128"] + (overrides or []))


@pytest.fixture(scope="session")
def small_dataset(spark, tmp_path_factory):
    """A published 20k-row churn dataset: (config, dataset_dir)."""
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore
    root = str(tmp_path_factory.mktemp("store"))
    cfg = demo_config(root)
    write_churn_csv(cfg.etl.source.path, cfg.demo.rows, cfg.demo.seed)
    summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
    return cfg, summary["dataset_dir"]


@pytest.fixture(scope="session")
def s3_dataset(spark, s3_server, small_dataset):
    """The small_dataset config (same local source), published to the S3 server: (config, dataset_dir)."""
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.layout import RunStore
    spark.sparkContext.environment.update(s3_server.env)
    local_cfg, _ = small_dataset
    root = s3_server.fresh_uri("demo")
    cfg = demo_config(root, [f"etl.source.path={local_cfg.etl.source.path}"])
    summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
    return cfg, summary["dataset_dir"]



def _become_subreaper() -> str | None:
    """Make this test process the reaper of orphans in its tree (Linux prctl PR_SET_CHILD_SUBREAPER), so a
    worker left behind by a dead Spark task or CLI is still our descendant and the leak checks see it."""
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1) != 0:
            return f"prctl(PR_SET_CHILD_SUBREAPER) failed, errno {ctypes.get_errno()}"
    except OSError as exc:
        return f"no prctl ({exc})"
    return None


_CANNOT_REAP = _become_subreaper()


def own_tree() -> list:
    """The live processes of this test's tree: itself and all descendants, orphans included."""
    import psutil
    if _CANNOT_REAP:
        raise RuntimeError(f"cannot check for leaked processes: {_CANNOT_REAP}")
    me = psutil.Process()
    alive = []
    for p in [me, *me.children(recursive=True)]:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:  # ended while we looked: not a leak
            pass
    return alive


def worker_processes() -> list:
    """Live `ringtrain.training.worker` processes in this test's tree (to prove that failures leave none)."""
    import psutil
    found = []
    for p in own_tree():
        try:
            if "ringtrain.training.worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def no_worker_left(grace_s: float = 30.0) -> bool:
    """After a failed or cancelled stage: Spark kills the surviving tasks' Python workers a few seconds later
    (spark.python.task.killTimeout), and their training workers die with them (PR_SET_PDEATHSIG)."""
    import time
    deadline = time.time() + grace_s
    while worker_processes() and time.time() < deadline:
        time.sleep(0.5)
    return not worker_processes()


def ports_left(before: set, grace_s: float = 30.0) -> dict:
    """Ports listening in this test's tree that were not `before`, after giving sockets that are being closed
    `grace_s` to go (the JVM closes a failed barrier task's sockets from its own threads, a moment later); each
    with the command line of the process that holds it, so that a leak names its owner."""
    import psutil
    deadline = time.time() + grace_s
    while (new := listening_ports() - before) and time.time() < deadline:
        time.sleep(0.5)
    owners = {}
    for p in own_tree() if new else []:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port in new:
                    owners[c.laddr.port] = " ".join(p.cmdline())[:200]
        except psutil.NoSuchProcess:
            pass
    return {port: owners.get(port, "?") for port in new}


def listening_ports() -> set:
    """TCP ports listening in this test's tree: the tests, the Spark JVM, its Python workers and their
    children (to prove that failures leave no rendezvous server or TCPStore behind). Spark's own
    `pyspark.daemon` processes (which fork the Python workers, and which Spark may restart after a
    failed task) are left out; the workers they fork are not. A process we may not inspect fails the
    check instead of passing it."""
    import psutil
    ports = set()
    for p in own_tree():
        try:
            if "pyspark.daemon" in " ".join(p.cmdline()) and "pyspark.daemon" not in " ".join(p.parent().cmdline()):
                continue
            ports |= {c.laddr.port for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied as exc:
            raise RuntimeError(f"cannot check the listening ports of {p}: {exc}") from exc
    return ports


def assert_balanced(manifest) -> None:
    """What the ETL promises of a `Manifest`: within each split, shard sizes differ by at most one row (incremental:
    within each partition's shards of a split; partitions differ in size)."""
    from ringtrain.manifest import IncrementalManifest
    incremental = isinstance(manifest, IncrementalManifest)
    groups = [p.splits for p in manifest.partitions] if incremental else [manifest.splits]
    for splits in groups:
        for split, info in splits.items():
            rows = [s.rows for s in info.shards]
            assert max(rows) - min(rows) <= 1, (split, rows)


def manifest_dict(splits: dict, **features) -> dict:
    """A full-mode manifest.json's content for hand-written shards (no ETL): `splits` as the ETL records them, the
    features entry from `features` (numeric_columns, categorical_cardinalities, label, key), every other field a
    placeholder."""
    from ringtrain.manifest import FORMAT_VERSION
    rows = sum(info["rows"] for info in splits.values())
    return {
        "format_version": FORMAT_VERSION, "dataset": "hand-made", "mode": "full", "created_utc": "2026-11-22T10:00:00Z",
        "identity": {"source": "-", "config": "-", "partition": None}, "partition": None,
        "source": {"format": "parquet", "path": "-", "table": None, "fingerprint": "-"}, "schema": {"columns": []},
        "features": {"path": "features.json", "arrays": {}, "task": "binary", "label_values": ["0", "1"],
                     "label_stats": {}, **features},
        "rows_read": rows, "rows_good": rows, "quarantine": {"path": None, "counts": {}}, "splits": splits,
        "row_group_rows": 100, "max_world_size": 1, "balance_max_min": 1.0}


def manifest_of(splits: dict, **features):
    """`manifest_dict` as the typed `Manifest` that `load_manifest` returns."""
    from ringtrain.manifest import Manifest
    from ringtrain.schema import build
    return build(Manifest, manifest_dict(splits, **features))


def read_json(path):
    with open(path) as f:
        return json.load(f)


# The files whose tests take minutes, slowest first (README "What was and was not tested": the CI's slowest
# tests). `make test` runs files on two processes (pytest-xdist --dist loadfile), which would start with the
# files of the most tests and leave these, two tests each, for the end, one process busy long after the other
# is done; they start first instead.
SLOWEST_FILES = ("tests/test_cluster.py", "tests/test_chaos.py", "tests/test_retrain_tasks.py",
                 "tests/test_end_to_end.py", "tests/test_retrain_cli.py", "tests/test_tasks.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it runs the suite
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlowestFilesFirst(LoadFileScheduling):
        """loadfile, with SLOWEST_FILES first (then the rest as loadfile orders it: most tests first)."""
        ordered = False

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the first assignment: the work queue is complete
                self.ordered = True
                rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
                queue = sorted(self.workqueue.items(), key=lambda item: rank.get(item[0], len(rank)))
                self.workqueue.clear()
                self.workqueue.update(queue)
            super()._assign_work_unit(node)

    return SlowestFilesFirst(config, log)
