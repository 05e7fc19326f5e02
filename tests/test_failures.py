"""Failures that explain themselves: the root cause, no retry of what retrying cannot fix, interrupts, and
the checks that catch a bad model or a damaged shard before training starts."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, demo_config, manifest_of, no_worker_left
from ringtrain.config import TrainConfig
from ringtrain.errors import ConfigError, DatasetError, ModelContractError, RankRefused, TrainingInterrupted
from ringtrain.manifest import load_manifest
from ringtrain.schema import build, to_dict
from ringtrain.training import failure
from ringtrain.training.environment import RankEnvironment

BIN = os.path.dirname(sys.executable)
TESTS = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- pure logic

def _failure(rank, kind, at):
    return failure.Failure(rank=rank, attempt=0, kind=kind, message=f"{kind} on {rank}", failed_at=at)


@pytest.mark.parametrize("records, expected_rank", [
    # rank 0 hit a data error; rank 1's collective failed a moment later because rank 0 left the ring
    ([_failure(1, "ring", 10.1), _failure(0, "user", 10.0)], 0),
    # a ring error can even be recorded first (clocks, or the dead rank's record written by its task later)
    ([_failure(1, "ring", 9.0), _failure(0, "exit", 10.0)], 0),
    ([_failure(1, "hang", 30.0), _failure(0, "error", 20.0)], 0),
    ([_failure(1, "error", 5.0), _failure(0, "error", 6.0)], 1),
    # only ring errors: a peer vanished without a word; the earliest is the best we know
    ([_failure(1, "ring", 5.0), _failure(0, "ring", 4.0)], 0),
])
def test_root_cause_is_the_first_rank_that_failed_on_its_own(records, expected_rank):
    assert failure.root_cause(records).rank == expected_rank


@pytest.mark.parametrize("exc, kind", [
    (DatasetError("shard x does not match"), "user"),
    (ModelContractError("bad output"), "user"),
    (RuntimeError("Horovod has been shut down. This was caused by an exception on one of the ranks"), "ring"),
    (RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5678"), "ring"),
    (RuntimeError("CUDA out of memory"), "error"),
    (KeyboardInterrupt(), "interrupted"),
])
def test_failures_are_classified_by_what_retrying_could_do(exc, kind):
    assert failure.classify(exc) == kind


def test_failure_records_round_trip_and_the_first_record_of_a_rank_is_kept(tmp_path):
    log_dir = str(tmp_path)
    own = _failure(1, "user", 1.0)
    failure.write_record(log_dir, own)
    failure.write_record(log_dir, _failure(1, "exit", 2.0))  # the task noticing the same rank's exit
    failure.write_record(log_dir, _failure(0, "ring", 3.0))
    assert sorted(failure.read_records(log_dir, 0), key=lambda f: f.rank) == [_failure(0, "ring", 3.0), own]
    assert failure.read_records(log_dir, 1) == []
    failure.clear_records(log_dir)
    assert failure.read_records(log_dir, 0) == []


@pytest.mark.parametrize("environ, expected", [
    ({}, RankEnvironment()),  # alone
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},  # torchrun
     RankEnvironment(rank=3, size=4, local_rank=1, local_size=2)),
    ({"HOROVOD_RANK": "2", "HOROVOD_SIZE": "3", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "1"},  # horovodrun
     RankEnvironment(rank=2, size=3, local_rank=0, local_size=1)),
])
def test_rank_environment_reads_every_launcher(environ, expected):
    assert RankEnvironment.from_environ(environ) == expected


def test_the_spark_launcher_sets_exactly_what_the_worker_reads():
    env = RankEnvironment(rank=1, size=2, local_rank=1, local_size=2, task_gpus=("2", "3"))
    written = env.to_environ()
    assert RankEnvironment.from_environ(written) == env
    assert written["CUDA_VISIBLE_DEVICES"] == "2,3" and env.cuda_index(2) == 0
    assert RankEnvironment(rank=1, size=2, local_rank=1, local_size=2).cuda_index(2) == 1  # torchrun: by local rank


@pytest.mark.parametrize("local_rank, local_size, allowed, expected", [
    (0, 1, {0, 1}, {0, 1}),           # alone: every core
    (0, 2, {0, 1}, {0}),              # two ranks on two cores: one each
    (1, 2, {0, 1}, {1}),
    (1, 2, {4, 5, 6, 7}, {6, 7}),     # the cores the executor may use, not core 0 upwards
    (2, 3, {0, 1, 2, 3, 4, 5, 6}, {4, 5}),  # a spare core stays unused rather than unevenly shared
    (3, 4, {0, 1}, {1}),              # more ranks than cores: shared round-robin
    (2, 4, {0, 1}, {0}),
])
def test_each_rank_of_a_host_takes_its_own_share_of_the_cores(local_rank, local_size, allowed, expected):
    env = RankEnvironment(rank=local_rank, size=local_size, local_rank=local_rank, local_size=local_size)
    assert env.cores(allowed) == expected


# ----------------------------------------------------------------------------- a tiny dataset, no Spark

def _tiny_dataset(folder, rows=64):
    """A published-looking dataset of one val shard: what the contract and shard checks read."""
    rng = np.random.default_rng(0)
    table = pa.table({"x1": rng.normal(size=rows).astype(np.float32), "x2": rng.normal(size=rows).astype(np.float32),
                      "c1": rng.integers(0, 5, rows), "label": (rng.random(rows) > 0.5).astype(np.float32)})
    os.makedirs(os.path.join(folder, "val"))
    path = os.path.join(folder, "val", "part-00000.parquet")
    pq.write_table(table, path, row_group_size=32)
    data = open(path, "rb").read()
    shard = {"shard": 0, "file": "part-00000.parquet", "rows": rows, "row_groups": 2, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    manifest = manifest_of({"val": {"rows": rows, "shards": [shard]}}, numeric_columns=["x1", "x2"],
                           categorical_cardinalities={"c1": 5}, label="label", key="x1")
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(to_dict(manifest), f)
    return manifest, path


def _train_cfg(*overrides):
    data = {}
    for item in overrides:
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value)
    return build(TrainConfig, data, "train")


@pytest.fixture
def tests_importable(monkeypatch):
    monkeypatch.syspath_prepend(TESTS)


def test_dry_run_accepts_one_logit_per_row_as_b_or_b1(tmp_path, tests_importable):
    from ringtrain.training.contract import dry_run
    manifest, _ = _tiny_dataset(str(tmp_path))
    dry_run(_train_cfg(), str(tmp_path), manifest)  # tabular_mlp: [B]
    dry_run(_train_cfg('model.name="user_models:one_logit_column"'), str(tmp_path), manifest)  # [B, 1]


def test_dry_run_refuses_a_model_whose_output_breaks_the_contract(tmp_path, tests_importable):
    from ringtrain.training.contract import CONTRACT, dry_run
    manifest, _ = _tiny_dataset(str(tmp_path))
    with pytest.raises(ModelContractError) as caught:
        dry_run(_train_cfg('model.name="user_models:two_logits"'), str(tmp_path), manifest)
    assert str(caught.value) == (f"train.model.name=user_models:two_logits: for a batch of 16 rows the model "
                                 f"returned a torch.float32 tensor of shape [16, 2]; expected [16] or [16, 1], "
                                 f"floating. {CONTRACT}")


def test_dry_run_refuses_a_pipeline_split_the_model_cannot_take(tmp_path):
    from ringtrain.training.contract import dry_run
    manifest, _ = _tiny_dataset(str(tmp_path))
    with pytest.raises(ConfigError, match=r"train.pipeline.stages=5 but the model has only 4 layers"):
        dry_run(_train_cfg("pipeline.stages=5"), str(tmp_path), manifest)


def _damage_footer(data: bytearray) -> bytearray:
    """Overwrite the Parquet footer (it sits before its 4-byte length and the magic 'PAR1'): same size."""
    length = int.from_bytes(data[-8:-4], "little")
    data[-8 - length:-8] = b"\xff" * length
    return data


@pytest.mark.parametrize("damage, checksum, what", [
    ("truncate", False, r"\d+ bytes, the manifest says \d+"),
    ("footer", False, r"unreadable \(OSError: Couldn.t deserialize thrift: [^\n]*\)"),
    ("flip", False, None),  # same size, the footer still parses: only the checksum sees it
    ("flip", True, r"sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}"),
])
def test_a_damaged_shard_is_named_with_what_differs(tmp_path, damage, checksum, what):
    from ringtrain.training.data import verify_shards
    manifest, path = _tiny_dataset(str(tmp_path))
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "footer":
            data = _damage_footer(data)
    else:
        data[10] ^= 0xFF  # inside the first data page
    open(path, "wb").write(bytes(data))
    if what is None:
        verify_shards(str(tmp_path), manifest, "val", [path], checksum=checksum)
        return
    with pytest.raises(DatasetError, match=rf"^shard {path} does not match the dataset's manifest: {what}\. "):
        verify_shards(str(tmp_path), manifest, "val", [path], checksum=checksum)


# ----------------------------------------------------------------------------- through the launcher and the CLI

def _run_cli(root, dataset_dir, sets, *, env_extra=None, timeout=600):
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable,
           **(env_extra or {})}
    args = [f"{BIN}/ringtrain", "train", "--config", os.path.join(ROOT, "conf", "demo.yaml"), "--dataset",
            dataset_dir, "--json"]
    for s in [f"store.root={root}", *_SMALL, *sets]:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


_SMALL = ["train.epochs=2", "train.batch_size=128",
          "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]


def _logs(root, run_id):
    folder = os.path.join(root, "runs", run_id, "logs")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _our_line(err: str) -> str:
    """The one line the CLI prints about the outcome (Spark's own logging may interleave with it)."""
    lines = [line for line in err.splitlines() if line.startswith("ringtrain train: ")]
    assert len(lines) == 1, err[-5000:]
    return lines[0]


@pytest.mark.spark
def test_cli_bad_user_model_fails_in_seconds_with_exit_2_before_any_attempt(small_dataset, tmp_path):
    _, dataset_dir = small_dataset
    proc = _run_cli(str(tmp_path), dataset_dir, ["store.run_id=badmodel", "train.model.name=user_models:two_logits"],
                    env_extra={"PYTHONPATH": TESTS})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert ("ringtrain train: error: train.model.name=user_models:two_logits: for a batch of 16 rows the model "
            "returned a torch.float32 tensor of shape [16, 2]; expected [16] or [16, 1], floating. A model is "
            "called as model(num, cat)") in err
    assert _logs(str(tmp_path), "badmodel") == []  # refused on the driver: no rank ever started


@pytest.mark.spark
def test_cli_config_error_found_by_the_dry_run_exits_2_naming_the_key(small_dataset, tmp_path):
    _, dataset_dir = small_dataset
    proc = _run_cli(str(tmp_path), dataset_dir, ["store.run_id=badsplit", "train.pipeline.stages=5"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "ringtrain train: error: train.pipeline.stages=5 but the model has only 4 layers to split" in err
    assert _logs(str(tmp_path), "badsplit") == []


@pytest.mark.spark
@pytest.mark.slow
def test_cli_corrupted_shard_fails_in_one_attempt_with_exit_2_naming_the_file_and_the_first_rank(
        small_dataset, tmp_path):
    _, dataset_dir = small_dataset
    copy = str(tmp_path / "dataset")
    shutil.copytree(dataset_dir, copy)
    manifest = load_manifest(copy)
    shard = os.path.join(copy, "train", manifest.splits["train"].shards[0].file)  # read by rank 0
    damaged = _damage_footer(bytearray(open(shard, "rb").read()))
    open(shard, "wb").write(bytes(damaged))
    proc = _run_cli(str(tmp_path), copy, ["store.run_id=corrupt", "train.max_attempts=2"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    last = _our_line(err)
    assert last.startswith(f"ringtrain train: error: rank 0 failed first: DatasetError: shard {shard} does not "
                           f"match the dataset's manifest: unreadable (OSError: Couldn't deserialize thrift"), last
    assert last.endswith(f"Log: {tmp_path}/runs/corrupt/logs/attempt0-rank0.log. Not retried: the same settings "
                         f"would fail the same way"), last
    assert not [name for name in _logs(str(tmp_path), "corrupt") if name.startswith("attempt1")]
    assert no_worker_left()


def _zero_in_a_data_page(path: str, key: str) -> int:
    """Zero 64 bytes in the middle of the data page of the largest column chunk that training reads (not the
    key's) in the shard's middle row group: same size, footer intact (what `verify_shards: footer` cannot see).
    Returns the row group."""
    meta = pq.ParquetFile(path).metadata
    group = meta.num_row_groups // 2
    chunks = [meta.row_group(group).column(c) for c in range(meta.num_columns)]
    chunk = max((c for c in chunks if c.path_in_schema != key), key=lambda c: c.total_compressed_size)
    data = bytearray(open(path, "rb").read())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    middle = (chunk.data_page_offset + start + chunk.total_compressed_size) // 2  # among the data pages
    data[middle:middle + 64] = bytes(64)
    open(path, "wb").write(bytes(data))
    return group


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("reader", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_cli_a_data_page_damaged_after_publication_fails_with_exit_2_naming_shard_and_row_group(
        small_dataset, tmp_path, reader):
    """The default settings (verify_shards: footer) catch it: every row group is checked as it is read."""
    _, dataset_dir = small_dataset
    copy = str(tmp_path / "dataset")
    shutil.copytree(dataset_dir, copy)
    manifest = load_manifest(copy)
    shard = os.path.join(copy, "train", manifest.splits["train"].shards[0].file)  # read by rank 0
    size = os.path.getsize(shard)
    group = _zero_in_a_data_page(shard, manifest.features.key)
    assert os.path.getsize(shard) == size
    proc = _run_cli(str(tmp_path), copy, ["store.run_id=pagedamage", "train.max_attempts=2", f"train.reader={reader}"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    last = _our_line(err)
    assert last.startswith(f"ringtrain train: error: rank 0 failed first: DatasetError: shard {shard} row group "
                           f"{group} (column chunk "), last
    assert ") does not match the dataset's manifest: crc32 " in last, last
    assert last.endswith(f"Log: {tmp_path}/runs/pagedamage/logs/attempt0-rank0.log. Not retried: the same settings "
                         f"would fail the same way"), last
    assert not [name for name in _logs(str(tmp_path), "pagedamage") if name.startswith("attempt1")]
    assert no_worker_left()


@pytest.mark.spark
@pytest.mark.slow
def test_a_rank_user_error_is_not_retried(spark, small_dataset, tmp_path):
    """The model imports on the driver (tests/ is on its path) but not on the executors: a user error on every
    rank, reported once, in one attempt (the dry run is the CLI's; this goes to the launcher directly)."""
    from ringtrain.layout import RunStore
    from ringtrain.training.launcher import launch
    from ringtrain.training.spec import WorkerSpec
    cfg, dataset_dir = small_dataset
    cfg = demo_config(cfg.store.root, ["train.model.name=user_models:one_logit_column", "train.max_attempts=2"])
    store = RunStore.create(str(tmp_path), "unimportable").prepare()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(), run_id=store.run_id)
    with pytest.raises(RankRefused, match=r"^rank [01] failed first: ModelContractError: train.model.name "
                                          r"'user_models:one_logit_column': cannot import it \(No module named "
                                          r"'user_models'\)\. The module must be importable on the driver and on "
                                          r"every executor"):
        launch(spark.sparkContext, spec)
    assert sorted(name for name in os.listdir(store.log_dir) if name.endswith(".log")) == [
        "attempt0-rank0.log", "attempt0-rank1.log"]


def _wait_for_checkpoint(root, run_id, proc=None, timeout=400):
    folder = os.path.join(root, "runs", run_id, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(folder) and any(n.startswith("ckpt-") for n in os.listdir(folder)):
            return
        assert proc is None or proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint in {folder} after {timeout}s")


@pytest.mark.spark
@pytest.mark.slow
def test_ctrl_c_stops_the_run_in_one_attempt_with_exit_130_and_the_run_resumes(small_dataset, tmp_path):
    _, dataset_dir = small_dataset
    root = str(tmp_path)
    sets = ["store.run_id=sigint", "train.checkpoint_every_steps=10", "train.max_attempts=2"]
    proc = _run_cli(root, dataset_dir, sets)
    _wait_for_checkpoint(root, "sigint", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert _our_line(err) == ("ringtrain train: interrupted during attempt 1: stopped, not retried. "
                                            "Resume from the last checkpoint with --set store.run_id=sigint")
    # The one clean line, no Java stack trace of the Python workers the interrupt stopped.
    java = [line for line in err.splitlines() if re.search(r"Exception|Traceback|^\s+at |crashed", line)]
    assert not java, "\n".join(java[:40])
    assert not [name for name in _logs(root, "sigint") if name.startswith("attempt1")]
    assert no_worker_left()

    proc = _run_cli(root, dataset_dir, sets)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    ranks = json.loads(out[out.index("{"):])["ranks"]
    assert ranks[0]["epochs_run"] == 2 and ranks[0]["param_sha256"] == ranks[1]["param_sha256"]
    assert 0 < ranks[0]["batches_run"] < 2 * ranks[0]["steps_per_epoch"]  # it resumed; it did not start over


@pytest.mark.spark
@pytest.mark.slow
def test_a_job_killed_in_the_spark_ui_stops_the_run_without_a_retry(spark, small_dataset, tmp_path):
    from ringtrain.layout import RunStore
    from ringtrain.training.launcher import launch
    from ringtrain.training.spec import WorkerSpec
    cfg, dataset_dir = small_dataset
    cfg = demo_config(cfg.store.root, ["train.checkpoint_every_steps=10", "train.max_attempts=2"])
    store = RunStore.create(str(tmp_path), "uikill").prepare()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(), run_id=store.run_id)
    sc = spark.sparkContext

    def kill_from_the_ui():  # the UI's "kill" link on a stage calls SparkContext.cancelStage(id, reason)
        _wait_for_checkpoint(str(tmp_path), "uikill")
        for stage in sc.statusTracker().getActiveStageIds():
            sc._jsc.sc().cancelStage(stage, "killed via the Web UI")

    killer = threading.Thread(target=kill_from_the_ui, daemon=True)
    killer.start()
    with pytest.raises(TrainingInterrupted, match=r"--set store.run_id=uikill$"):
        launch(sc, spec)
    killer.join(timeout=10)
    assert not [name for name in os.listdir(store.log_dir) if name.startswith("attempt1")]
    assert no_worker_left()


@pytest.mark.slow
def test_a_user_model_with_one_logit_column_trains(small_dataset, tmp_path):
    """[B, 1] is one logit per row: the worker (alone, world size 1) trains it through the real loop."""
    from ringtrain.layout import RunStore
    from ringtrain.training.spec import WorkerSpec
    cfg, dataset_dir = small_dataset
    cfg = demo_config(cfg.store.root, ["train.model.name=user_models:one_logit_column", "train.epochs=1"])
    store = RunStore.create(str(tmp_path), "column").prepare()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(),
                                    run_id=store.run_id).to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    out = subprocess.run([sys.executable, "-m", "ringtrain.training.worker", str(spec_path)], cwd=ROOT,
                         env={**env, "PYTHONPATH": TESTS}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout.split("RINGTRAIN_RESULT ", 1)[1])
    assert result["epochs_run"] == 1 and result["metrics"]["loss"] < result["metrics"]["baseline_loss"]
