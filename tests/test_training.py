"""Training through the real launcher: Spark barrier tasks, real Horovod / torch.distributed rings."""
import glob
import io
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, demo_config, listening_ports, no_worker_left, ports_left, read_json, worker_processes
from ringtrain import store as rstore
from ringtrain.errors import NotEnoughSlots, TrainingFailed
from ringtrain.layout import RunStore
from ringtrain.training.launcher import launch
from ringtrain.training.spec import WorkerSpec

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def worker_spec(small_dataset, store, overrides=(), fault=None):
    cfg, dataset_dir = small_dataset
    cfg = demo_config(cfg.store.root, list(overrides))
    return WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(), run_id=store.run_id, fault=fault)


def train(spark, small_dataset, tmp_path, run_id, overrides=(), fault=None, *, root=None):
    """Train on `small_dataset` (config, dataset_dir); the run's store is `root` (default: tmp_path)."""
    store = RunStore.create(root or str(tmp_path), run_id).prepare()
    return launch(spark.sparkContext, worker_spec(small_dataset, store, overrides, fault)), store


def state_dict(store):
    return torch.load(io.BytesIO(rstore.read_bytes(rstore.join(store.model_dir, "state_dict.pt"))))


@pytest.mark.parametrize("engine", [pytest.param("horovod", marks=pytest.mark.horovod), "ddp"])
def test_two_ranks_end_with_identical_parameters(spark, small_dataset, tmp_path, engine):
    ports_before = listening_ports()
    results, store = train(spark, small_dataset, tmp_path, engine, [f"train.engine={engine}"])
    assert not ports_left(ports_before)  # the rendezvous server (Horovod) or TCPStore (DDP) is closed
    assert [r.rank for r in results] == [0, 1] and all(r.size == 2 for r in results)
    assert results[0].param_sha256 == results[1].param_sha256
    assert results[0].batches_run == results[1].batches_run == 2 * results[0].steps_per_epoch
    assert_exported_model_gives_the_eager_logits(store, small_dataset[1])


@pytest.mark.horovod
def test_horovod_grouped_gradients_with_accumulation_stay_identical_across_ranks(spark, small_dataset, tmp_path):
    # Horovod's gradients go as groups (engines.GRADIENT_GROUP_BYTES); with accumulation every group is
    # requested only on the last backward of each optimizer step.
    results, _ = train(spark, small_dataset, tmp_path, "accumulate",
                       ["train.engine=horovod", "train.grad_accumulation=2", "train.epochs=1"])
    assert results[0].param_sha256 == results[1].param_sha256
    assert results[0].opt_steps == results[0].steps_per_epoch // 2 > 0


def assert_exported_model_gives_the_eager_logits(store, dataset_dir):
    from ringtrain.manifest import load_manifest
    from ringtrain.training.data import Columns, open_reader, plan_reading
    from ringtrain.training.models import build_model
    artifact = read_json(os.path.join(store.model_dir, "artifact.json"))
    assert artifact["program"] == "model.pt2"
    manifest = load_manifest(dataset_dir)
    cols = Columns.from_manifest(manifest)
    plan = plan_reading(dataset_dir, manifest, "val", 0, 1, 64, drop_last=False)
    batch = next(iter(open_reader("arrow", plan, cols, 64, 0, 0).all_rows()))
    num, cat = torch.from_numpy(batch["num"]), torch.from_numpy(batch["cat"])
    eager = build_model(artifact["train_config"]["model"], len(cols.numeric),
                        list(manifest.features.categorical_cardinalities.values()))
    eager.load_state_dict(state_dict(store))
    eager.eval()
    exported = torch.export.load(os.path.join(store.model_dir, "model.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(exported(num, cat), eager(num, cat), rtol=0, atol=1e-6)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_rank_is_retried_from_checkpoint_and_matches_uninterrupted_run(spark, small_dataset, tmp_path, where,
                                                                               request):
    """With `s3`, the dataset, checkpoints, logs and model are objects on the S3 server (listed with its own
    client), and the resumed rank reads its checkpoint from there."""
    dataset, root = small_dataset, None
    if where == "s3":
        server, dataset = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_dataset")
        root = server.fresh_uri("train")
    opts = ["train.checkpoint_every_steps=20", "train.max_attempts=2"]
    clean, clean_store = train(spark, dataset, tmp_path, "clean", opts, root=root)
    # rank 1 dies at optimizer step 50 of attempt 0 (after the checkpoint at step 40)
    resumed, resumed_store = train(spark, dataset, tmp_path, "killed", opts, fault="crash:1:50:0", root=root)
    assert rstore.exists(rstore.join(resumed_store.log_dir, "attempt1-rank1.log"))  # a second attempt ran
    if where == "s3":
        keys = server.keys(resumed_store.run_dir)
        assert {"logs/attempt0-rank0.log", "logs/attempt0-rank1.log", "logs/attempt1-rank0.log",
                "logs/attempt1-rank1.log", "model/artifact.json", "model/state_dict.pt", "metrics.json",
                "metrics.png"} <= set(keys), keys
        assert len([k for k in keys if k.startswith("checkpoints/ckpt-")]) == 2, keys  # the newest two kept
    assert resumed[0].batches_run < clean[0].batches_run  # it resumed, it did not restart
    a, b = state_dict(clean_store), state_dict(resumed_store)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    assert resumed[0].param_sha256 == resumed[1].param_sha256
    if where == "local":  # bit for bit, the history too: each rank resumed its own part of epoch 1's loss sum
        assert resumed[0].param_sha256 == clean[0].param_sha256
        assert read_json(resumed_store.metrics_path) == read_json(clean_store.metrics_path)
    assert not worker_processes()


def test_nan_on_one_rank_is_skipped_by_every_rank(spark, small_dataset, tmp_path):
    results, _ = train(spark, small_dataset, tmp_path, "nan", fault="nan:1:10")
    assert [r.skipped_steps for r in results] == [1, 1]
    assert results[0].param_sha256 == results[1].param_sha256


def test_nan_with_on_nonfinite_fail_stops_every_rank(spark, small_dataset, tmp_path):
    with pytest.raises(TrainingFailed, match="non-finite loss on 1 rank.* every rank stops"):
        train(spark, small_dataset, tmp_path, "nanfail", ["train.on_nonfinite=fail", "train.max_attempts=1"],
              fault="nan:1:10")
    assert no_worker_left()


def test_hung_rank_fails_within_the_timeout_and_leaves_no_process(spark, small_dataset, tmp_path):
    ports_before = listening_ports()
    started = time.time()
    with pytest.raises(TrainingFailed, match="made no progress"):
        train(spark, small_dataset, tmp_path, "hang", ["train.max_attempts=1", "train.hang_timeout_s=8"],
              fault="hang:0:5")
    assert time.time() - started < 8 + 60  # the timeout, plus start-up and the steps before the hang
    assert no_worker_left()
    assert not ports_left(ports_before)  # no rendezvous server or TCPStore left listening


def test_too_few_slots_is_a_clear_error(spark, small_dataset, tmp_path):
    with pytest.raises(NotEnoughSlots, match="train.num_workers=3 barrier tasks need 3 task slots"):
        train(spark, small_dataset, tmp_path, "slots", ["train.num_workers=3"])


def test_worker_runs_alone_outside_spark_with_world_size_1(small_dataset, tmp_path):
    store = RunStore.create(str(tmp_path), "alone").prepare()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(worker_spec(small_dataset, store).to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    out = subprocess.run([sys.executable, "-m", "ringtrain.training.worker", str(spec_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.split("RINGTRAIN_RESULT ", 1)[1])
    assert result["size"] == 1 and result["rank"] == 0
    assert result["metrics"]["accuracy"] > result["metrics"]["baseline_accuracy"]


def test_fp16_overflow_on_one_rank_is_skipped_by_every_rank_and_lowers_the_loss_scale(spark, small_dataset,
                                                                                      tmp_path):
    results, store = train(spark, small_dataset, tmp_path, "fp16", ["train.amp=fp16", "train.epochs=1"],
                           fault="overflow:1:10")
    assert [(r.overflow_steps, r.skipped_steps) for r in results] == [(1, 0), (1, 0)]
    assert results[0].param_sha256 == results[1].param_sha256
    m = results[0].metrics
    assert m["accuracy"] > m["baseline_accuracy"], m
    ckpt = torch.load(sorted(glob.glob(os.path.join(store.checkpoint_dir, "ckpt-*.pt")))[-1], weights_only=False)
    assert ckpt["grad_scaler"]["scale"] == 2.0 ** 15  # GradScaler starts at 2**16 and halved once


@pytest.mark.parametrize("launcher, engine", [("torchrun", "ddp"),
                                              pytest.param("horovodrun", "horovod", marks=pytest.mark.horovod)])
def test_the_same_worker_runs_under_torchrun_and_horovodrun(small_dataset, tmp_path, launcher, engine):
    """Outside Spark, the launcher's own variables make the rank environment: two ranks, identical parameters."""
    store = RunStore.create(str(tmp_path), launcher).prepare()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(worker_spec(small_dataset, store, [f"train.engine={engine}", "train.epochs=1"]).to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    bin_dir = os.path.dirname(sys.executable)
    worker = ["-m", "ringtrain.training.worker", str(spec_path)]
    cmd = ([f"{bin_dir}/torchrun", "--nproc_per_node", "2", *worker] if launcher == "torchrun" else
           [f"{bin_dir}/horovodrun", "-np", "2", "--gloo", sys.executable, *worker])
    out = subprocess.run(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = sorted((json.loads(line.split("RINGTRAIN_RESULT ", 1)[1]) for line in out.stdout.splitlines()
                      if "RINGTRAIN_RESULT " in line), key=lambda r: r["rank"])
    assert [(r["rank"], r["size"]) for r in results] == [(0, 2), (1, 2)]
    assert results[0]["param_sha256"] == results[1]["param_sha256"]


# Early stopping on purpose: loss "higher is better" makes every epoch after the first a bad one, so with
# patience 2 training stops after epoch 3 of 4. Dropout makes the RNG state part of what must resume.
RESUME_OPTS = ["train.epochs=4", "train.early_stopping_patience=2", "train.monitor.mode=max",
               "train.batch_size=512", "train.checkpoint_every_steps=10", "train.model.hidden=[16]",
               "train.model.dropout=0.2", "train.warmup_steps=5"]


def run_worker_alone(small_dataset, store, tmp_path, *, attempt=0, fault=None, overrides=RESUME_OPTS):
    """One process of `python -m ringtrain.training.worker`, world size 1: (returncode, result or None)."""
    spec = worker_spec(small_dataset, store, overrides, fault)
    spec_path = tmp_path / f"spec-{store.run_id}-{attempt}.json"
    spec_path.write_text(spec.for_attempt(attempt).to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    out = subprocess.run([sys.executable, "-m", "ringtrain.training.worker", str(spec_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    if "RINGTRAIN_RESULT " not in out.stdout:
        return out.returncode, None
    return out.returncode, json.loads(out.stdout.split("RINGTRAIN_RESULT ", 1)[1])


def test_a_resumed_worker_is_the_uninterrupted_run_bit_for_bit(small_dataset, tmp_path):
    """One run killed at every kind of point, resumed each time: mid-epoch (after a checkpoint part-way through
    the epoch), during an epoch's validation, right after the early stop's checkpoint (its last epoch: the run
    is complete on disk), and once more after it finished (as a retrain killed during its evaluation reruns
    it). Weights, history, best epoch and the early stop are the uninterrupted run's, bit for bit."""
    clean_store = RunStore.create(str(tmp_path), "clean").prepare()
    rc, clean = run_worker_alone(small_dataset, clean_store, tmp_path)
    assert rc == 0 and clean["stopped_early"] and clean["epochs_run"] == 3 and clean["best_epoch"] == 0, clean
    steps = clean["steps_per_epoch"]
    assert steps > 12  # the kill below falls part-way through epoch 1, after its checkpoint at step 10*k
    mid_epoch = (steps // 10 + 1) * 10 + 3
    assert steps < mid_epoch - 3 < mid_epoch < 2 * steps
    clean_history = read_json(clean_store.metrics_path)["epochs"]

    store = RunStore.create(str(tmp_path), "killed").prepare()
    for attempt, fault in enumerate([f"crash:0:{mid_epoch}:0", "crash_validating:0:1:1", "crash_checkpointed:0:2:2"]):
        rc, result = run_worker_alone(small_dataset, store, tmp_path, attempt=attempt, fault=fault)
        assert rc == 17 and result is None, (fault, rc)
    checkpoints = sorted(os.listdir(store.checkpoint_dir))
    rc, resumed = run_worker_alone(small_dataset, store, tmp_path, attempt=3)
    assert rc == 0
    assert resumed["batches_run"] == 0  # resumed after the early stop: no epoch 4
    assert sorted(os.listdir(store.checkpoint_dir)) == checkpoints  # and nothing new to checkpoint
    rc, again = run_worker_alone(small_dataset, store, tmp_path, attempt=4)
    assert rc == 0 and again["batches_run"] == 0
    for result in (resumed, again):
        assert result["param_sha256"] == clean["param_sha256"]
        assert {k: result[k] for k in ("epochs_run", "opt_steps", "best_epoch", "metrics", "stopped_early",
                                       "skipped_steps")} == \
               {k: clean[k] for k in ("epochs_run", "opt_steps", "best_epoch", "metrics", "stopped_early",
                                      "skipped_steps")}
    assert read_json(store.metrics_path)["epochs"] == clean_history  # exact floats, train_loss included
    assert read_json(os.path.join(store.model_dir, "artifact.json"))["history"] == clean_history
    assert torch.equal(torch.cat([t.flatten() for t in state_dict(store).values()]),
                       torch.cat([t.flatten() for t in state_dict(clean_store).values()]))
