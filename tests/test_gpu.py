"""Training, the ring and scoring on a CUDA GPU, without Spark (a GPU machine may have no Java).

Skipped where torch sees no CUDA device (CI, CPU stacks). They read datasets published beforehand by the real
ETL (`make gpu-data` writes build/gpu-data; RINGTRAIN_GPU_DATA points elsewhere) and run the worker the way
torchrun and horovodrun run it: as `python -m ringtrain.training.worker spec.json`, with a fresh process each.

    python -P -m pytest tests/test_gpu.py -m gpu -v     # -P: the installed ringtrain, not the checkout's folders
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

DATA = os.environ.get("RINGTRAIN_GPU_DATA", os.path.join(ROOT, "build", "gpu-data"))
RESULT = "RINGTRAIN_RESULT "


@pytest.fixture(scope="module")
def demo_dataset() -> str:
    from ringtrain.layout import RunStore
    latest = RunStore.create(os.path.join(DATA, "demo")).dataset("churn").latest()
    if latest is None:  # on a GPU machine a missing dataset is a failure, not a skip
        pytest.fail(f"no published dataset under {DATA}/demo: run `make gpu-data` where Spark runs, and carry "
                    f"build/gpu-data (or set RINGTRAIN_GPU_DATA)")
    return latest


def spec_file(folder, dataset_dir: str, overrides: list[str], run_id: str = "run", fault: str | None = None) -> str:
    from ringtrain.config import load_config
    from ringtrain.layout import RunStore
    from ringtrain.training.spec import WorkerSpec
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [f"store.root={folder}", "train.num_workers=1",
                                                                *overrides])
    store = RunStore.create(str(folder), run_id).prepare()
    spec = WorkerSpec(config=cfg, dataset_dir=dataset_dir, paths=store.paths(), run_id=run_id, fault=fault)
    path = os.path.join(str(folder), f"spec-{run_id}.json")
    with open(path, "w") as f:
        f.write(spec.to_json())
    return path


def run_worker(folder, spec: str, launcher: str = "alone", *, expect_ok: bool = True) -> tuple[list[dict], str]:
    """Run the worker as its launchers do; the results of its ranks and its output."""
    worker = ["-m", "ringtrain.training.worker", spec]
    cmd = {"alone": [sys.executable, *worker],
           "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", *worker],
           "horovodrun": [sys.executable, "-m", "horovod.runner.launch", "-np", "1", "--gloo", sys.executable,
                          *worker]}[launcher]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    # The checkout's folders are not the installed package (etl/ and training/ install under ringtrain/):
    # run from the run folder, so that only the installed ringtrain is importable.
    out = subprocess.run(cmd, env=env, cwd=str(folder), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=900)
    text = out.stdout + out.stderr
    if expect_ok:
        assert out.returncode == 0, text[-4000:]
    results = [json.loads(line.split(RESULT, 1)[1]) for line in out.stdout.splitlines() if RESULT in line]
    return results, text


@pytest.fixture(scope="module")
def gpu_and_cpu_runs(demo_dataset, tmp_path_factory):
    """The demo's training config alone with DDP, once on the GPU (bf16 autocast: train.amp auto) and once on
    the CPU: the run that failed at the end of its first epoch before NCCL got a Gloo side for CPU tensors."""
    runs = {}
    for name, gpus in (("gpu", 1), ("cpu", 0)):
        folder = tmp_path_factory.mktemp(name)
        spec = spec_file(folder, demo_dataset, ["train.engine=ddp", f"train.gpus_per_worker={gpus}"])
        (result,), log = run_worker(folder, spec)
        runs[name] = (result, folder, log)
    return runs


def test_ddp_alone_trains_on_the_gpu_as_well_as_on_the_cpu(gpu_and_cpu_runs):
    gpu, _, log = gpu_and_cpu_runs["gpu"]
    cpu, _, _ = gpu_and_cpu_runs["cpu"]
    assert gpu["device"] == "cuda:0" and cpu["device"] == "cpu"
    assert gpu["placement"]["stage_devices"] == ["cuda:0"]
    assert gpu["opt_steps"] == cpu["opt_steps"] == 4 * gpu["steps_per_epoch"] and gpu["epochs_run"] == 4
    for metric in ("auc", "accuracy"):
        assert abs(gpu["metrics"][metric] - cpu["metrics"][metric]) <= 0.005, (metric, gpu["metrics"], cpu["metrics"])
    assert gpu["metrics"]["auc"] > 0.8
    assert "training on the CPU" not in log


def test_ddp_under_torchrun_trains_on_the_gpu(demo_dataset, tmp_path):
    spec = spec_file(tmp_path, demo_dataset, ["train.engine=ddp", "train.gpus_per_worker=1", "train.epochs=1"])
    (result,), _ = run_worker(tmp_path, spec, "torchrun")
    assert (result["device"], result["size"], result["epochs_run"]) == ("cuda:0", 1, 1)
    assert result["metrics"]["auc"] > 0.8


def test_horovod_with_nccl_trains_on_the_gpu(demo_dataset, tmp_path):
    hvd = pytest.importorskip("horovod.torch", reason="Horovod is not installed (the Spark 4 stack has none)")
    assert hvd.nccl_built(), "Horovod was built without NCCL: build it with GPU=1 (scripts/build_horovod.sh)"
    spec = spec_file(tmp_path, demo_dataset, ["train.engine=horovod", "train.gpus_per_worker=1", "train.epochs=1",
                                              "train.pipeline.stages=2"])
    # Two stages: the pipelined path all-reduces the gradients itself, as a CUDA tensor (NCCL), beside the
    # metrics as CPU tensors (Gloo).
    (result,), _ = run_worker(tmp_path, spec, "horovodrun")
    assert (result["engine"], result["device"], result["epochs_run"]) == ("horovod", "cuda:0", 1)
    assert result["metrics"]["auc"] > 0.8


def test_the_ddp_group_of_a_gpu_rank_all_reduces_cpu_and_cuda_tensors(monkeypatch):
    """The loop all-reduces metrics as CPU tensors and a pipeline's gradients as CUDA tensors: the group takes
    both (a plain NCCL group refuses CPU tensors)."""
    from ringtrain.training.engines import make_engine
    from ringtrain.training.environment import RankEnvironment
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    eng = make_engine("ddp", device, RankEnvironment())
    try:
        assert eng.allreduce_sum(torch.tensor([1.5, 2.0], dtype=torch.float64)).tolist() == [1.5, 2.0]
        on_gpu = eng.allreduce_sum(torch.arange(4.0, device=device))
        assert on_gpu.device.type == "cuda" and on_gpu.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        eng.shutdown()


@pytest.mark.parametrize("amp, fault, counter", [("bf16", "nan:0:7", "skipped_steps"),
                                                 ("fp16", "overflow:0:7", "overflow_steps")])
def test_mixed_precision_on_the_gpu_skips_a_bad_step_on_the_device_and_trains_on(demo_dataset, tmp_path, amp, fault,
                                                                                 counter):
    """bf16 autocast, and fp16 with loss scaling: a step whose averaged gradients are not finite is skipped by
    the fused optimizer on the device, and counted by the host one step later."""
    spec = spec_file(tmp_path, demo_dataset, ["train.engine=ddp", "train.gpus_per_worker=1", "train.epochs=1",
                                              f"train.amp={amp}"], fault=fault)
    (result,), log = run_worker(tmp_path, spec)
    # fp16 may also overflow on its own while the loss scale settles; the injected one is step 7.
    assert result[counter] == 1 if counter == "skipped_steps" else result[counter] >= 1, result
    other = "overflow_steps" if counter == "skipped_steps" else "skipped_steps"
    assert result[other] == 0 and result["metrics"]["auc"] > 0.8
    seen = "fp16 overflow at step 7" if amp == "fp16" else "non-finite loss on 1 rank(s) at step 7"
    assert seen in log  # the host names the step the device skipped


def test_a_run_killed_on_the_gpu_resumes_from_its_checkpoint(demo_dataset, tmp_path):
    """Killed mid-epoch, then started again on the same run folder: it resumes from the newest checkpoint
    (model, optimizer and the CUDA RNG state) and ends where an uninterrupted run ends. Embedding
    gradients use atomic adds on a GPU, so the two agree to rounding, not to the bit."""
    sets = ["train.engine=ddp", "train.gpus_per_worker=1", "train.epochs=2", "train.checkpoint_every_steps=100"]
    resumed = spec_file(tmp_path, demo_dataset, sets, run_id="resumed", fault="crash:0:250")
    _, log = run_worker(tmp_path, resumed, expect_ok=False)
    assert "RINGTRAIN_RESULT" not in log
    resumed = spec_file(tmp_path, demo_dataset, sets, run_id="resumed")
    (after,), log = run_worker(tmp_path, resumed)
    assert "resumed from checkpoint at epoch 0, batch 200 (optimizer step 200)" in log
    (whole,), _ = run_worker(tmp_path, spec_file(tmp_path, demo_dataset, sets, run_id="whole"))
    assert after["opt_steps"] == whole["opt_steps"] == 2 * whole["steps_per_epoch"]
    assert after["batches_run"] == whole["batches_run"] - 200
    for metric in ("auc", "accuracy", "loss"):
        assert abs(after["metrics"][metric] - whole["metrics"][metric]) <= 0.005, (metric, after, whole)


def test_two_pipeline_stages_train_on_one_gpu(demo_dataset, tmp_path):
    spec = spec_file(tmp_path, demo_dataset, ["train.engine=ddp", "train.gpus_per_worker=1", "train.epochs=1",
                                              "train.model.name=residual_mlp", "train.model.width=64",
                                              "train.pipeline.stages=2", "train.pipeline.micro_batches=4"])
    (result,), _ = run_worker(tmp_path, spec)
    assert result["device"] == "cuda:0" and result["placement"]["stage_devices"] == ["cuda:0"]
    assert result["metrics"]["auc"] > 0.8


@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="two stages on two GPUs need two GPUs"))])
def test_pipeline_gradients_on_gpus_equal_one_backward_over_the_batch(devices):
    from ringtrain.training.models import ResidualMLP
    from ringtrain.training.pipeline import PipelineModel
    torch.manual_seed(0)
    model = ResidualMLP(5, [7, 3], width=32, num_blocks=3).cuda()
    reference = ResidualMLP(5, [7, 3], width=32, num_blocks=3).cuda()
    reference.load_state_dict(model.state_dict())
    num, cat = torch.randn(64, 5, device="cuda"), torch.randint(0, 3, (64, 2), device="cuda")
    label = (torch.rand(64, device="cuda") > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    bce(reference(num, cat), label).backward()
    pipe = PipelineModel(model, 2, 4, [torch.device(f"cuda:{i}") for i in range(devices)])
    loss = pipe.forward_backward((num, cat), label, bce)
    assert abs(float(loss) - float(bce(reference(num, cat), label).detach())) < 1e-5
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad.to(q.device), q.grad, atol=1e-5), name


def test_compiled_model_trains_on_the_gpu(demo_dataset, tmp_path):
    spec = spec_file(tmp_path, demo_dataset, ["train.engine=ddp", "train.gpus_per_worker=1", "train.epochs=1",
                                              "train.compile=true"])
    (result,), _ = run_worker(tmp_path, spec)
    assert result["device"] == "cuda:0" and result["metrics"]["auc"] > 0.8


def test_the_exported_model_loads_on_the_gpu_and_evaluates_and_scores_as_on_the_cpu(gpu_and_cpu_runs, demo_dataset):
    """The artifact of the GPU run, loaded on each device: `evaluate` (the retrain gate's metrics) and the
    scores that `predict` writes agree."""
    import numpy as np
    from ringtrain.manifest import load_manifest, shard_paths
    from ringtrain.training.scoring import evaluate, load_program, resolve_model, score_arrays, task_scores
    from ringtrain.training.data import Columns, ReadPlan, open_reader
    from ringtrain.training.models import model_inputs
    _, folder, _ = gpu_and_cpu_runs["gpu"]
    model = resolve_model(os.path.join(str(folder), "runs", "run", "model"), store_root=str(folder),
                          registry_name=None)
    on = {d: evaluate(model, demo_dataset, "test", device=torch.device(d)) for d in ("cuda", "cpu")}
    for metric in ("auc", "accuracy", "loss"):
        assert abs(on["cuda"]["overall"][metric] - on["cpu"]["overall"][metric]) < 1e-4, metric
    assert on["cuda"]["overall"]["rows"] == on["cpu"]["overall"]["rows"] > 0

    manifest = load_manifest(demo_dataset)
    reader = open_reader("arrow", ReadPlan(shard_paths(demo_dataset, manifest, "test"), None, None, 0, 0),
                         Columns.from_manifest(manifest), 4096, 0, 0)
    batch = next(iter(reader.all_rows()))
    inputs = [np.ascontiguousarray(x) for x in model_inputs(batch)]
    program = load_program(model, torch.device("cuda"))
    assert {p.device.type for p in program.parameters()} == {"cuda"}
    scores = task_scores("binary", model.features())
    gpu_scores = score_arrays(program, scores, inputs)["score"]
    cpu_scores = score_arrays(load_program(model), scores, inputs)["score"]
    assert gpu_scores.shape == cpu_scores.shape == (len(batch["label"]),)
    assert np.abs(gpu_scores - cpu_scores).max() < 1e-4
