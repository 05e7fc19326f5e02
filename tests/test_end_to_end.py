"""The user's doors, as subprocesses: the `ringtrain` CLI, and spark-submit jobs/*.py (the same functions)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_balanced, read_json
from ringtrain.manifest import load_manifest
from ringtrain.etl.sample_data import write_churn_csv
from ringtrain.stack import installed

# What `train.engine: auto` / `train.reader: auto` (conf/demo.yaml) must pick on this stack: Horovod and
# petastorm on the Spark 3.5 stack, DDP and the arrow reader on the Spark 4 stack.
EXPECTED_ENGINE = "horovod" if installed("horovod") else "ddp"
EXPECTED_READER = "petastorm" if installed("petastorm") else "arrow"

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BIN = os.path.dirname(sys.executable)
SMALL = ["demo.rows=30000", "etl.shards.rows_per_shard=4000", "etl.shards.row_group_rows=1024", "train.epochs=3",
         "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]


def door(cmd, root, extra=()):
    sets = [x for s in [f"store.root={root}", f"etl.source.path={root}/raw", *SMALL, *extra] for x in ("--set", s)]
    # spark-submit finds Spark through the first `python3` on PATH: the venv's, as for a user who activated it.
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    out = subprocess.run(cmd + ["--config", os.path.join(ROOT, "conf", "demo.yaml"), "--json", *sets],
                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def test_cli_etl_then_training_beats_the_baseline_with_identical_ranks(tmp_path):
    write_churn_csv(str(tmp_path / "raw"), 30000, 7)
    etl = door([f"{BIN}/ringtrain", "etl"], tmp_path)
    assert etl["rows_good"] == 30000
    assert_balanced(load_manifest(etl["dataset_dir"]))

    train = door([f"{BIN}/ringtrain", "train"], tmp_path, ["store.run_id=cli"])
    ranks = train["ranks"]
    assert len(ranks) == 2 and ranks[0]["param_sha256"] == ranks[1]["param_sha256"]
    assert {(r["engine"], r["reader"]) for r in ranks} == {(EXPECTED_ENGINE, EXPECTED_READER)}
    m = ranks[0]["metrics"]
    assert m["accuracy"] > m["baseline_accuracy"] + 0.04, m
    assert m["auc"] > 0.75 and m["loss"] < m["baseline_loss"] - 0.05, m
    artifact = read_json(os.path.join(train["model_dir"], "artifact.json"))
    assert (artifact["train_config"]["engine"], artifact["train_config"]["reader"]) == (EXPECTED_ENGINE,
                                                                                        EXPECTED_READER)
    assert os.path.exists(os.path.join(train["run_dir"], "metrics.png"))

    # The cluster door on the same dataset: spark-submit must also end (exit 0) once the job is done.
    submitted = door([f"{BIN}/spark-submit", "--master", "local[2]", os.path.join(ROOT, "jobs", "train_job.py")],
                     tmp_path, ["store.run_id=submitted", "train.epochs=1"])
    ranks = submitted["ranks"]
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"] and ranks[0]["epochs_run"] == 1
    assert ranks[0]["metrics"]["accuracy"] > ranks[0]["metrics"]["baseline_accuracy"], ranks[0]["metrics"]


def test_bad_config_exits_2_naming_the_key(tmp_path):
    out = subprocess.run([f"{BIN}/ringtrain", "train", "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                          "--set", "train.epochs=-1"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "train.epochs: must be >= 1" in out.stderr
