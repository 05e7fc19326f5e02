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

from conftest import ROOT, demo_config, listening_ports, worker_processes
from ringtrain import store as rstore
from ringtrain.schema import to_dict
from ringtrain.store import RunStore
from ringtrain.training.launcher import NotEnoughSlots, TrainingFailed, launch
from ringtrain.training.worker import make_spec

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def train(spark, small_dataset, tmp_path, run_id, overrides=(), fault=None, *, root=None, **launch_args):
    """Train on `small_dataset` (config, dataset_dir); the run's store is `root` (default: tmp_path)."""
    cfg, dataset_dir = small_dataset
    cfg = demo_config(cfg.store.root, list(overrides))
    store = RunStore.create(root or str(tmp_path), run_id).prepare()
    spec = {**make_spec(to_dict(cfg.train), dataset_dir, store.paths()), "fault": fault}
    t = cfg.train
    args = dict(num_workers=t.num_workers, engine=t.engine, gpus_per_worker=0,
                max_attempts=t.max_attempts, hang_timeout_s=t.hang_timeout_s)
    return launch(spark.sparkContext, spec, **{**args, **launch_args}), store


def state_dict(store):
    return torch.load(io.BytesIO(rstore.read_bytes(rstore.join(store.model_dir, "state_dict.pt"))))


@pytest.mark.parametrize("engine", ["horovod", "ddp"])
def test_two_ranks_end_with_identical_parameters(spark, small_dataset, tmp_path, engine):
    ports_before = listening_ports()
    results, store = train(spark, small_dataset, tmp_path, engine, [f"train.engine={engine}"])
    assert not listening_ports() - ports_before  # the rendezvous server (Horovod) or TCPStore (DDP) is closed
    assert [r["rank"] for r in results] == [0, 1] and all(r["size"] == 2 for r in results)
    assert results[0]["param_sha256"] == results[1]["param_sha256"]
    assert results[0]["batches_run"] == results[1]["batches_run"] == 2 * results[0]["steps_per_epoch"]
    assert os.path.exists(os.path.join(store.model_dir, "artifact.json"))


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
    assert resumed[0]["batches_run"] < clean[0]["batches_run"]  # it resumed, it did not restart
    a, b = state_dict(clean_store), state_dict(resumed_store)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    assert resumed[0]["param_sha256"] == resumed[1]["param_sha256"]
    assert not worker_processes()


def test_nan_on_one_rank_is_skipped_by_every_rank(spark, small_dataset, tmp_path):
    results, _ = train(spark, small_dataset, tmp_path, "nan", fault="nan:1:10")
    assert [r["skipped_steps"] for r in results] == [1, 1]
    assert results[0]["param_sha256"] == results[1]["param_sha256"]


def test_nan_with_on_nonfinite_fail_stops_every_rank(spark, small_dataset, tmp_path):
    with pytest.raises(TrainingFailed, match="non-finite loss on 1 rank.* every rank stops"):
        train(spark, small_dataset, tmp_path, "nanfail", ["train.on_nonfinite=fail", "train.max_attempts=1"],
              fault="nan:1:10")
    assert not worker_processes()


def test_hung_rank_fails_within_the_timeout_and_leaves_no_process(spark, small_dataset, tmp_path):
    ports_before = listening_ports()
    started = time.time()
    with pytest.raises(TrainingFailed, match="made no progress"):
        train(spark, small_dataset, tmp_path, "hang", ["train.max_attempts=1", "train.hang_timeout_s=8"],
              fault="hang:0:5")
    assert time.time() - started < 8 + 60  # the timeout, plus start-up and the steps before the hang
    time.sleep(1)
    assert not worker_processes()
    assert not listening_ports() - ports_before  # no rendezvous server or TCPStore left listening


def test_too_few_slots_is_a_clear_error(spark, small_dataset, tmp_path):
    with pytest.raises(NotEnoughSlots, match="train.num_workers=3 barrier tasks need 3 task slots"):
        train(spark, small_dataset, tmp_path, "slots", num_workers=3)


def test_worker_runs_alone_outside_spark_with_world_size_1(small_dataset, tmp_path):
    cfg, dataset_dir = small_dataset
    store = RunStore.create(str(tmp_path), "alone").prepare()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(make_spec(to_dict(cfg.train), dataset_dir, store.paths())))
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
    assert [(r["overflow_steps"], r["skipped_steps"]) for r in results] == [(1, 0), (1, 0)]
    assert results[0]["param_sha256"] == results[1]["param_sha256"]
    m = results[0]["metrics"]
    assert m["accuracy"] > m["baseline_accuracy"], m
    ckpt = torch.load(sorted(glob.glob(os.path.join(store.checkpoint_dir, "ckpt-*.pt")))[-1], weights_only=False)
    assert ckpt["grad_scaler"]["scale"] == 2.0 ** 15  # GradScaler starts at 2**16 and halved once
