"""`ringtrain retrain` as a scheduler runs it: a second run while one holds the lock exits 75 and changes
nothing; a run SIGKILLed during training leaves the registry unchanged, and the rerun takes the stale lock
over, resumes the date and registers exactly one decision."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, read_json, worker_processes
from ringtrain.etl.sample_data import write_daily_churn
from ringtrain.registry import Registry
from ringtrain.jobs.retrain import Records

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BIN = os.path.dirname(sys.executable)
DATE = "2026-01-01"


def command(root, *extra):
    sets = [f"store.root={root}", f"etl.source.path={root}/raw/dt={{partition}}", "etl.shards.rows_per_shard=1000",
            "etl.shards.row_group_rows=256", "train.batch_size=64", "train.epochs=6",
            "train.checkpoint_every_steps=10", f"tracking.mlflow_uri=sqlite:///{root}/mlflow.db", "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]
    return [f"{BIN}/ringtrain", "retrain", "--config", os.path.join(ROOT, "conf", "retrain.yaml"), "--date", DATE,
            *[x for s in sets for x in ("--set", s)], *extra]


def start(root, log):
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(command(root), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the retrain ended early with {proc.returncode}"
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_second_run_exits_75_and_a_killed_run_is_resumed_with_one_decision(tmp_path):
    root = str(tmp_path)
    write_daily_churn(os.path.join(root, "raw"), [dict(date=DATE, rows=6000)])
    registry = Registry(root, "churn")
    records = Records(registry)
    first_log = open(tmp_path / "first.log", "w+")
    first = start(root, first_log)
    try:
        wait_for(lambda: os.path.exists(records.lock_path), 120, first)
        lock = read_json(records.lock_path)

        # A second retrain of the same model while the first holds the lock: exit 75, nothing changed.
        second = subprocess.run(command(root), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 75, second.stderr[-2000:]
        assert "is locked by pid" in second.stderr and "retry later" in second.stderr
        assert read_json(records.lock_path) == lock

        # Kill the first run (driver, JVM, Spark workers: its whole session) once training has checkpointed.
        ckpts = os.path.join(root, "runs", f"churn-{DATE}-a1", "checkpoints", "ckpt-*.pt")
        wait_for(lambda: glob.glob(ckpts), 900, first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    deadline = time.time() + 60
    while worker_processes() and time.time() < deadline:  # the ranks die with their parent task
        time.sleep(0.5)
    assert registry.events() == []  # killed before publishing: the registry is as it was
    assert records.load(DATE)["state"] == "train" and os.path.exists(records.lock_path)

    rerun = subprocess.run(command(root, "--json"), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "taking over the stale lock" in rerun.stderr and "no longer runs" in rerun.stderr
    assert f"resuming run churn-{DATE}-a1" in rerun.stderr
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    (done,) = summary["dates"]
    assert done["resumed"] and done["run_id"] == f"churn-{DATE}-a1"
    assert done["mlflow"] == "model churn version 1"  # mirrored after the registry event
    training = done["training"]
    assert training["epochs_run"] == 6 and training["batches_run"] < 6 * training["steps_per_epoch"]  # resumed
    events = registry.events()
    assert [(e["action"], e["date"], e["registers"], e["promoted"]) for e in events] == [
        ("decide", DATE, "v000001", True)]
    assert records.load(DATE)["state"] == "done" and not os.path.exists(records.lock_path)

    again = subprocess.run(command(root), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "already done (promoted, event 1): nothing to do" in again.stdout
    assert len(registry.events()) == 1

    listed = subprocess.run([f"{BIN}/ringtrain", "models", "--config", os.path.join(ROOT, "conf", "retrain.yaml"),
                             "--set", f"store.root={root}", "list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "aliases {'champion': 'v000001'}" in listed.stdout
