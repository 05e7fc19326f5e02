"""A user's own training function in the barrier tasks (`launcher.run_function`, `train.function`): real Spark
local mode, real DDP and Horovod rings, the functions of tests/user_functions.py (plain torch loops)."""
import os
import re
import subprocess
import sys
import time

import pytest

import user_functions
from conftest import ROOT, demo_config, no_worker_left
from ringtrain.errors import ConfigError, RankRefused, TrainingFailed
from ringtrain.manifest import load_manifest
from ringtrain.training import failure
from ringtrain.training.spec import FunctionResult, cloudpickle

TESTS = os.path.join(ROOT, "tests")
# The executors cannot import tests/: the functions travel by value, as a notebook's do.
cloudpickle().register_pickle_by_value(user_functions)


def config(small_dataset, tmp_path, run_id, overrides=()):
    cfg, _ = small_dataset
    return demo_config(str(tmp_path), [f"store.run_id={run_id}", "train.hang_timeout_s=60", *overrides])


def run(spark, small_dataset, tmp_path, run_id, function, *args, overrides=(), **kwargs):
    from ringtrain.training.launcher import run_function
    cfg = config(small_dataset, tmp_path, run_id, overrides)
    return run_function(spark, cfg, function, *args, dataset_dir=small_dataset[1], **kwargs)


def log_dir(tmp_path, run_id):
    return os.path.join(str(tmp_path), "runs", run_id, "logs")


@pytest.mark.parametrize("engine", [pytest.param("horovod", marks=pytest.mark.horovod), "ddp"])
def test_a_users_loop_on_the_shards_ends_with_identical_parameters_on_both_ranks(spark, small_dataset, tmp_path,
                                                                              engine):
    from ringtrain.training.data import shard_paths
    values = run(spark, small_dataset, tmp_path, engine, user_functions.logistic_regression, 0.05,
                 overrides=[f"train.engine={engine}"])
    manifest = load_manifest(small_dataset[1])
    steps = 2 * (manifest.splits["train"].rows // (2 * 128))
    assert [v["world_size"] for v in values] == [2, 2]
    assert [(v["steps"], v["resumed_from"], v["attempt"]) for v in values] == [(steps, 0, 0)] * 2
    assert values[0]["sha256"] == values[1]["sha256"]
    files = shard_paths(small_dataset[1], manifest, "train")  # 8 shards: rank r reads every other one
    assert [v["shards"] for v in values] == [files[0::2], files[1::2]]
    assert no_worker_left()


def test_a_user_error_on_rank_1_is_not_retried_and_names_rank_1(spark, small_dataset, tmp_path):
    with pytest.raises(RankRefused, match=r"^rank 1 failed first: ValueError: bad value at step 3\. Log: .*"
                                          r"attempt0-rank1\.log\. Not retried"):
        run(spark, small_dataset, tmp_path, "raises", user_functions.logistic_regression, 0.05, raise_at=(1, 3),
            overrides=["train.max_attempts=2"])
    logs = log_dir(tmp_path, "raises")
    assert sorted(n for n in os.listdir(logs) if n.endswith(".log")) == ["attempt0-rank0.log", "attempt0-rank1.log"]
    assert [(f.rank, f.kind) for f in failure.read_records(logs, 0) if f.kind != "ring"] == [(1, "user")]


def test_a_rank_killed_once_resumes_from_the_functions_own_checkpoint_and_ends_as_an_uninterrupted_run(
        spark, small_dataset, tmp_path):
    uninterrupted = run(spark, small_dataset, tmp_path, "whole", user_functions.logistic_regression, 0.05,
                        epochs=1)
    resumed = run(spark, small_dataset, tmp_path, "killed", user_functions.logistic_regression, 0.05,
                  epochs=1, die_at=(1, 10), overrides=["train.max_attempts=2"])
    assert [(v["attempt"], v["resumed_from"]) for v in resumed] == [(1, 10), (1, 10)]
    assert [v["sha256"] for v in resumed] == [uninterrupted[0]["sha256"]] * 2
    records = {f.rank: f for f in failure.read_records(log_dir(tmp_path, "killed"), 0)}
    assert records[1].kind == "exit" and "exited with code 17" in records[1].message


def test_a_hung_function_is_killed_by_the_watchdog_and_leaves_no_process(spark, small_dataset, tmp_path):
    started = time.time()
    # Rank 0 sleeps; rank 1 waits for it in the next all-reduce and beats no more either: the watchdog cannot
    # tell the two apart, and either may be the first to go silent for 5 s.
    with pytest.raises(TrainingFailed, match=r"last root cause: rank [01] failed first: made no progress for \d+s "
                                             r"\(train\.hang_timeout_s=5\): killed"):
        run(spark, small_dataset, tmp_path, "hangs", user_functions.logistic_regression, 0.05, hang_at=(0, 3),
            overrides=["train.max_attempts=1", "train.hang_timeout_s=5"])
    assert time.time() - started < 45
    assert no_worker_left()


def test_a_return_value_over_the_limit_is_refused_naming_the_limit_and_the_fix(spark, small_dataset, tmp_path):
    from ringtrain.training.launcher import run_function
    cfg = config(small_dataset, tmp_path, "big", ["train.max_attempts=2"])
    with pytest.raises(RankRefused, match=r"^rank [01] failed first: FunctionContractError: the training function's "
                                          r"return value pickles to 17,825,\d+ bytes, over the limit of 16,777,216 "
                                          r"per rank: return small values .* to ctx\.model_dir"):
        run_function(spark, cfg, user_functions.returns_too_much)  # no dataset: none is needed


def test_train_function_from_the_cli_runs_the_example_by_import_path(small_dataset, tmp_path):
    _, dataset_dir = small_dataset
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "examples"), "PYSPARK_PYTHON": sys.executable}
    sets = [f"store.root={tmp_path}", "store.run_id=cli", "train.epochs=1",
            "train.function=train_function:train_from_config",
            "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ringtrain"), "train", "--config",
                          os.path.join(ROOT, "conf", "demo.yaml"), "--dataset", dataset_dir,
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = load_manifest(dataset_dir).splits["train"].rows // (2 * 256)  # demo.yaml: batch_size 256, 2 ranks
    assert "TRAIN     2 ranks ran train_function:train_from_config" in out.stdout
    for rank in (0, 1):
        assert re.search(rf"^          rank {rank} returned {{'loss': [0-9.]+, 'steps': {steps}}}; last metrics "
                         rf"{{'epoch': 0, 'loss': [0-9.]+}}$", out.stdout, re.M), out.stdout
    assert os.path.isfile(os.path.join(str(tmp_path), "runs", "cli", "model", "logreg.pt"))


@pytest.mark.parametrize("exc, kind", [
    (ValueError("bad"), "user"), (RuntimeError("CUDA out of memory"), "user"), (KeyError("x"), "user"),
    (FileNotFoundError("no such file"), "user"), (ConnectionResetError("reset"), "error"),
    (ConnectionResetError("Connection reset by peer"), "ring"),
    (TimeoutError("store timed out"), "error"), (OSError("i/o"), "error"), (ConfigError("train.x: bad"), "user"),
    (RuntimeError("Connection closed by peer"), "ring"), (KeyboardInterrupt(), "interrupted")])
def test_what_a_users_function_raises_is_the_users_unless_ring_or_transient_io(exc, kind):
    assert failure.classify(exc, user_function=True) == kind


def test_the_built_in_loop_keeps_retrying_its_own_plain_errors():
    assert failure.classify(ValueError("bad"), user_function=False) == "error"


def test_a_function_result_round_trips_its_value_through_json():
    result = FunctionResult.of({"a": [1, 2.5], "b": "x"}, rank=1, size=2, metrics={"loss": 0.5}, seconds=1.0,
                               ring_init_s=0.1)
    back = FunctionResult.from_json(result.to_json())
    assert back == result and back.load() == {"a": [1, 2.5], "b": "x"}


@pytest.mark.parametrize("value", ["pkg.mod:fn", "fn_only_module:train"])
def test_train_function_takes_an_import_path(tmp_path, value):
    assert demo_config(str(tmp_path), [f"train.function={value}"]).train.function == value


def test_train_function_that_is_no_import_path_fails_at_load_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"demo\.yaml: train\.function: 'pkg\.mod\.fn' is not an import path "
                                          r"'package\.module:function'$"):
        demo_config(str(tmp_path), ["train.function=pkg.mod.fn"])


def test_a_return_value_that_cannot_be_pickled_is_a_user_error_naming_its_type():
    import threading
    from ringtrain.errors import FunctionContractError, UserError
    with pytest.raises(FunctionContractError, match=r"^the training function returned a lock that cannot be pickled "
                                                    r"\(TypeError: cannot pickle '_thread\.lock' object\): return "
                                                    r"plain values") as caught:
        FunctionResult.of(threading.Lock(), rank=0, size=1, metrics={}, seconds=0.0, ring_init_s=0.0)
    assert isinstance(caught.value, UserError)


def test_a_rank_imports_what_spark_put_on_its_tasks_sys_path():
    """spark-submit --py-files and addPyFile put SparkFiles' folder on the Python worker's sys.path, not on
    PYTHONPATH: the rank's own process gets it through PYTHONPATH, ahead of the task's, without the folders
    every Python of this installation finds by itself. (tests/test_cluster.py ships examples/ this way.)"""
    from ringtrain.training.task import child_pythonpath
    files = "/spark/work/app-1/0/spark-3/userFiles-9"
    path = ["", files, "/spark/python/lib/pyspark.zip", "/spark/python/lib/py4j.zip",
            os.path.join(sys.base_prefix, "lib", "python3.11"), os.path.join(sys.prefix, "lib", "python3.11",
                                                                               "site-packages")]
    assert child_pythonpath(path, "/spark/python/lib/pyspark.zip:/spark/python/lib/py4j.zip:/elsewhere") == \
        f"{files}:/spark/python/lib/pyspark.zip:/spark/python/lib/py4j.zip:/elsewhere"
    assert child_pythonpath(["", os.path.join(sys.prefix, "lib")], "") == ""
