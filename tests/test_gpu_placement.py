"""GPU placement without a GPU: Spark hands each task fake GPU addresses from a discovery script
(as Spark's own pyspark.ml.torch tests do); each rank reports the placement it planned from its
environment before it picked a device (CPU-only torch cannot use the fake GPUs)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from ringtrain.training.pipeline import stage_devices

BIN = os.path.dirname(sys.executable)
FAKE_DISCOVERY = os.path.join(ROOT, "tests", "fake_gpu_discovery.sh")


@pytest.mark.parametrize("stages, num_gpus, local_rank, task_gpus, expected", [
    (2, 0, 0, True, ["cpu"]),                         # no GPU: every stage on the CPU
    (2, 0, 1, False, ["cpu"]),
    (2, 2, 0, True, ["cuda:0", "cuda:1"]),            # Spark: the task's 2 GPUs, renumbered 0..1
    (2, 2, 1, True, ["cuda:0", "cuda:1"]),            # ... whatever the rank's local rank
    (4, 2, 0, True, ["cuda:0", "cuda:1"]),            # 4 stages over 2 GPUs: stage i on GPU i % 2
    (1, 1, 0, True, ["cuda:0"]),
    (2, 4, 0, False, ["cuda:0", "cuda:1"]),           # torchrun, 4 GPUs on the node: rank 0 takes 0-1
    (2, 4, 1, False, ["cuda:2", "cuda:3"]),           # ... rank 1 takes 2-3
    (2, 2, 1, False, ["cuda:1"]),                     # too few GPUs for 2 ranks x 2 stages: share one
    (1, 4, 3, False, ["cuda:3"]),                     # no split: one GPU per local rank
])
def test_stage_devices(stages, num_gpus, local_rank, task_gpus, expected):
    assert stage_devices(stages, num_gpus, local_rank, task_gpus) == expected


def submit_env(state_file) -> dict:
    # spark-submit finds Spark through the first `python3` on PATH: the venv's.
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable,
            "RINGTRAIN_FAKE_GPU_STATE": str(state_file), "RINGTRAIN_FAKE_GPUS_PER_CALL": "2"}


def train_sets(cfg, root, extra=()):
    sets = [f"store.root={root}", "train.epochs=1", f"train.batch_size={cfg.train.batch_size}",
            "spark.conf={spark.ui.enabled: 'false'}", *extra]
    return [x for s in sets for x in ("--set", s)]


@pytest.mark.spark
@pytest.mark.slow
def test_each_rank_gets_its_tasks_fake_gpus_and_maps_its_stages_onto_them(small_dataset, tmp_path):
    cfg, dataset_dir = small_dataset
    state = tmp_path / "handed-out"
    gpu = ["--conf", "spark.worker.resource.gpu.amount=2",
           "--conf", f"spark.worker.resource.gpu.discoveryScript={FAKE_DISCOVERY}",
           "--conf", "spark.executor.resource.gpu.amount=2", "--conf", "spark.task.resource.gpu.amount=2"]
    cmd = [f"{BIN}/spark-submit", "--master", "local-cluster[2,1,1024]", *gpu,
           os.path.join(ROOT, "jobs", "train_job.py"), "--config", os.path.join(ROOT, "conf", "demo.yaml"),
           "--dataset", dataset_dir, "--json",
           *train_sets(cfg, tmp_path, ["train.gpus_per_worker=2", "train.pipeline.stages=2"])]
    out = subprocess.run(cmd, cwd=ROOT, env=submit_env(state), stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = json.loads(out.stdout[out.stdout.index("{"):])["ranks"]

    handed_out = sorted(state.read_text().split())  # one line per worker: the addresses it was given
    assert handed_out == ["0,1", "2,3"]
    seen = sorted(r["placement"]["cuda_visible_devices"] for r in ranks)
    assert seen == handed_out  # each rank sees exactly its own task's GPUs, and no two ranks share one
    for r in ranks:
        assert r["placement"]["task_gpus"] == r["placement"]["cuda_visible_devices"]
        assert r["placement"]["stage_devices"] == ["cuda:0", "cuda:1"]  # stage i on the task's GPU i
        assert r["device"] == "cpu"  # CPU-only torch: planned for the GPUs, ran on the CPU
    assert ranks[0]["param_sha256"] == ranks[1]["param_sha256"]


@pytest.mark.spark
def test_gpus_per_worker_that_spark_does_not_give_is_refused(small_dataset, tmp_path):
    cfg, dataset_dir = small_dataset
    out = subprocess.run([f"{BIN}/ringtrain", "train", "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                          "--dataset", dataset_dir, *train_sets(cfg, tmp_path, ["train.gpus_per_worker=1"])],
                         cwd=ROOT, env=submit_env(tmp_path / "unused"), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "train.gpus_per_worker=1 but spark.task.resource.gpu.amount is None" in out.stderr
    assert "--conf spark.task.resource.gpu.amount=1" in out.stderr  # the fix
