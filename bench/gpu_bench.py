"""GPU benchmark (BENCHMARKS.md "GPU"): ringtrain's training step against a plain PyTorch loop, the input
feed, and layer splitting on one GPU. Needs no Spark: it reads a dataset the ETL published beforehand
(`make gpu-data`, build/gpu-data/bench: 1M rows of the demo schema).

    python -P bench/gpu_bench.py [--data build/gpu-data/bench] [--out bench/results/gpu.json]
    python -P bench/gpu_bench.py --device cpu --quick      # a smoke run of every section on the CPU

Sections, each timed with the device synchronized before and after (medians of repeats):
  ceiling    bf16 matrix products (8192^3 and 8192x2048x2048): the TFLOP/s the GPU reaches here
  step       per model size, ms per optimizer step on batches already on the GPU: a plain loop (autocast,
             BCE, backward, fused AdamW) against ringtrain's own step (`_Trainer.micro_step` +
             `optimizer_step`), and that step with each suspected overhead put back one at a time
  feed       the whole input path (arrow reader + prefetch to the GPU) with ringtrain's step, against the
             same step on resident batches; and the loader alone
  pipeline   residual_mlp at batch 512: two stages on one GPU (4 and 1 micro-batches) against unsplit
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ringtrain.config import TrainConfig
from ringtrain.layout import RunStore
from ringtrain.manifest import load_manifest
from ringtrain.schema import build
from ringtrain.training.data import Columns, open_reader, plan_reading, prefetch
from ringtrain.training.engines import make_engine
from ringtrain.training.environment import RankEnvironment
from ringtrain.training.loop import NO_FAULTS, _Trainer
from ringtrain.training.models import build_model, model_inputs
from ringtrain.training.optimizer import make_optimizer
from ringtrain.training.pipeline import PipelineModel
from ringtrain.training.tasks import make_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"small": {"width": 256, "num_blocks": 4, "batch": 4096, "steps": 30, "warmup": 10},
         "big": {"width": 2048, "num_blocks": 8, "batch": 8192, "steps": 10, "warmup": 5}}
# ringtrain's step with one suspected overhead put back (what the step did before it was changed).
ABLATIONS = {
    "ringtrain": {},
    "+ finiteness read on the host each step": {"host_check": True},
    "+ host read and an unfused optimizer": {"host_check": True, "unfused": True},
    "+ DDP wrapper in a world of one": {"ddp_wrapper": True},
    "as before (the three above and a seed per micro-step)": {"host_check": True, "unfused": True,
                                                             "ddp_wrapper": True, "force_seed": True},
    "+ a seed per micro-step (before: always)": {"force_seed": True},
    "- gradient clipping": {"no_clip": True},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Median seconds per step over `repeats` runs of `steps` steps, after `warmup` steps."""

    def __init__(self, device, warmup, steps, repeats):
        self.device, self.warmup, self.steps, self.repeats = device, warmup, steps, repeats

    def __call__(self, step_fn, finish=lambda: None) -> float:
        for i in range(self.warmup):
            step_fn(i)
        finish()
        sync(self.device)
        times = []
        for r in range(self.repeats):
            started = time.perf_counter()
            for i in range(self.steps):
                step_fn(self.warmup + r * self.steps + i)
            finish()
            sync(self.device)
            times.append((time.perf_counter() - started) / self.steps)
        return statistics.median(times)


# ----------------------------------------------------------------------------- ceiling

def matmul_ceiling(device, quick: bool) -> dict:
    out = {}
    shapes = [(8192, 8192, 8192), (8192, 2048, 2048)] if not quick else [(256, 256, 256)]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        seconds = Timer(device, 3, 10, 3)(lambda _: a @ b)
        out[f"{m}x{k}x{n}"] = round(2 * m * k * n / seconds / 1e12, 1)
    return out


# ----------------------------------------------------------------------------- the dataset

class Data:
    def __init__(self, dataset_dir: str):
        self.dir = dataset_dir
        self.manifest = load_manifest(dataset_dir)
        self.cols = Columns.from_manifest(self.manifest)
        self.cards = list(self.manifest.features.categorical_cardinalities.values())

    def reader(self, batch: int, split: str = "train"):
        plan = plan_reading(self.dir, self.manifest, split, 0, 1, batch)
        return open_reader("arrow", plan, self.cols, batch, 0, 0)

    def resident(self, batch: int, device, count: int) -> list[dict]:
        """`count` real batches, on the device (rotated through, so no step reuses the last one's)."""
        out = []
        for b in prefetch(self.reader(batch).epoch(0), device):
            out.append(b)
            if len(out) == count:
                break
        return out

    def model(self, width: int, num_blocks: int, device, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model({"name": "residual_mlp", "width": width, "num_blocks": num_blocks, "embedding_dim": 8},
                           len(self.cols.numeric), self.cards).to(device)


def linear_flops_per_row(model: torch.nn.Module) -> int:
    """Forward + backward multiply-adds of the linear layers, as FLOPs per row (2 per multiply-add, x3)."""
    return sum(6 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- steps

def train_config(batch: int, **overrides) -> TrainConfig:
    return build(TrainConfig, {"engine": "ddp", "reader": "arrow", "batch_size": batch, "lr": 1e-3,
                               "warmup_steps": 10, **overrides}, "train")


def plain_step(model, device, batches, compiled: bool = False):
    """The loop a user writes by hand: autocast, loss, backward, fused AdamW."""
    net = torch.compile(model) if compiled else model
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def step(i):
        batch = batches[i % len(batches)]
        with amp():
            loss = F.binary_cross_entropy_with_logits(net(*model_inputs(batch)).float(), batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, lambda: None


def ringtrain_step(model, device, batches, engine, task, cfg: TrainConfig, folder: str, *, host_check=False,
                   unfused=False, ddp_wrapper=False, force_seed=False, pipe=None):
    """ringtrain's own step: `_Trainer.micro_step` + `optimizer_step`, as `fit` runs them."""
    net = pipe or model
    optimizer = make_optimizer(cfg, net.parameters(), torch.device("cpu") if unfused else device)
    trainer = _Trainer(cfg, engine, net, optimizer, task, device, folder, NO_FAULTS)
    if host_check:
        trainer.device_steps = None
    if force_seed:
        trainer.draws_random = True
    trainer.resume()
    if ddp_wrapper:
        from torch.nn.parallel import DistributedDataParallel
        trainer.model = DistributedDataParallel(trainer.model, device_ids=[device.index] if device.index is not None
                                                else None)
    trainer.start_epoch()

    def step(i):
        if trainer.micro_step(batches[i % len(batches)]):
            trainer.optimizer_step()

    def finish():
        if trainer.device_steps is not None:
            trainer.device_steps.settle()
    return step, finish


def bench_steps(data: Data, device, engine, size: dict, folder: str, compile_plain: bool,
                compile_ringtrain: bool) -> dict:
    batch = size["batch"]
    timer = Timer(device, size["warmup"], size["steps"], 3)
    batches = data.resident(batch, device, 8)
    task = make_task(data.manifest.features, train_config(batch))
    rows = {}
    model = data.model(size["width"], size["num_blocks"], device)
    params = sum(p.numel() for p in model.parameters())
    flops = linear_flops_per_row(model) * batch
    rows["plain loop"] = timer(*plain_step(model, device, batches))
    for name, flags in ABLATIONS.items():
        cfg = train_config(batch, **({"grad_clip_norm": None} if flags.get("no_clip") else {}))
        model = data.model(size["width"], size["num_blocks"], device)
        flags = {k: v for k, v in flags.items() if k != "no_clip"}
        rows[name] = timer(*ringtrain_step(model, device, batches, engine, task, cfg, folder, **flags))
    if compile_plain:
        model = data.model(size["width"], size["num_blocks"], device)
        rows["plain loop, torch.compile"] = timer(*plain_step(model, device, batches, compiled=True))
        torch._dynamo.reset()
    if compile_ringtrain:
        model = data.model(size["width"], size["num_blocks"], device)
        rows["ringtrain, train.compile: true"] = timer(*ringtrain_step(model, device, batches, engine, task,
                                                                       train_config(batch, compile=True), folder))
        torch._dynamo.reset()
    plain = rows["plain loop"]
    return {"params": params, "batch": batch, "linear_tflop_per_step": flops / 1e12,
            "ms": {k: round(v * 1e3, 3) for k, v in rows.items()},
            "vs_plain": {k: round(plain / v, 3) for k, v in rows.items()},
            "tflops": {k: round(flops / v / 1e12, 1) for k, v in rows.items()}}


# ----------------------------------------------------------------------------- feed

@contextlib.contextmanager
def switch_interval(seconds: float | None):
    saved = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


# The input path's candidates, measured side by side: (copy to the GPU in the consumer's thread, the
# interpreter's GIL switch interval in seconds; None: Python's default, 5 ms).
FEED_VARIANTS = {"prefetch thread copies to the GPU": (False, None),
                 "training thread copies to the GPU": (True, None),
                 "prefetch thread copies, switch interval 0.2 ms": (False, 2e-4),
                 "training thread copies, switch interval 0.2 ms": (True, 2e-4)}


def bench_feed(data: Data, device, engine, size: dict, folder: str, variants: bool = False) -> dict:
    out = {}
    for name, (consumer, interval) in (FEED_VARIANTS if variants else dict(list(FEED_VARIANTS.items())[:1])).items():
        with switch_interval(interval):
            out[name] = bench_feed_once(data, device, engine, size, folder, consumer)
    return out if variants else next(iter(out.values()))


def bench_feed_once(data: Data, device, engine, size: dict, folder: str, copy_in_consumer: bool) -> dict:
    batch, steps, warmup = size["batch"], size["steps"] * 2, size["warmup"]
    task = make_task(data.manifest.features, train_config(batch))
    cfg = train_config(batch)
    resident = data.resident(batch, device, 8)
    model = data.model(size["width"], size["num_blocks"], device)
    step, finish = ringtrain_step(model, device, resident, engine, task, cfg, folder)
    resident_s = Timer(device, warmup, steps, 3)(step, finish)

    model = data.model(size["width"], size["num_blocks"], device)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    trainer = _Trainer(cfg, engine, model, optimizer, task, device, folder, NO_FAULTS)
    trainer.resume()
    trainer.start_epoch()

    def settle():  # the fed trainer's pending step flag, read before the clock starts and stops
        if trainer.device_steps is not None:
            trainer.device_steps.settle()
    times = []
    for repeat in range(3):  # as fit() does: an epoch's reader through the prefetch thread
        batches = prefetch(data.reader(batch).epoch(repeat), device, copy_in_consumer=copy_in_consumer)
        for i, b in enumerate(batches):
            if i == warmup:
                settle()
                sync(device)
                started = time.perf_counter()
            if trainer.micro_step(b):
                trainer.optimizer_step()
            if i == warmup + steps - 1:
                break
        settle()
        sync(device)
        times.append((time.perf_counter() - started) / steps)
        batches.close()
    fed_s = statistics.median(times)
    return {"batch": batch, "resident_samples_s": round(batch / resident_s), "fed_samples_s": round(batch / fed_s),
            "fed_vs_resident": round(resident_s / fed_s, 3)}


def bench_loader(data: Data, device, batch: int) -> dict:
    rates = []
    for repeat in range(3):
        started, samples = time.perf_counter(), 0
        for b in prefetch(data.reader(batch).epoch(repeat), device):
            samples += b["label"].shape[0]
        sync(device)
        rates.append(samples / (time.perf_counter() - started))
    return {"batch": batch, "samples_s": round(statistics.median(rates))}


# ----------------------------------------------------------------------------- pipeline

def bench_pipeline(data: Data, device, engine, timer: Timer, folder: str) -> dict:
    batch = 512 if timer.steps > 3 else 64
    batches = data.resident(batch, device, 16)
    task = make_task(data.manifest.features, train_config(batch))
    out = {}
    for name, stages, setting in (("unsplit", 1, 1), ("2 stages, 4 micro-batches", 2, 4),
                                  ("2 stages, micro_batches: auto (the default)", 2, "auto")):
        model = data.model(256, 4, device)
        cfg = train_config(batch, pipeline={"stages": stages, "micro_batches": setting})
        pipe = PipelineModel(model, stages, setting, [device]) if stages > 1 else None
        micro = pipe.micro_batches if pipe else 1
        seconds = timer(*ringtrain_step(model, device, batches, engine, task, cfg, folder, pipe=pipe))
        out[name] = {"ms": round(seconds * 1e3, 3), "samples_s": round(batch / seconds), "micro_batches": micro}
    unsplit = out["unsplit"]["ms"]
    for row in out.values():
        row["vs_unsplit"] = round(unsplit / row["ms"], 3)
    return out


# ----------------------------------------------------------------------------- main

def machine(device) -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpus": os.cpu_count(),
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(result: dict) -> str:
    lines = ["| what | ms/step | x plain loop | TFLOP/s |", "|---|---|---|---|"]
    for size, r in result["step"].items():
        for name, ms in r["ms"].items():
            lines.append(f"| {size}: {name} | {ms} | {r['vs_plain'][name]} | {r['tflops'][name]} |")
    lines += ["", "| feed | resident samples/s | fed samples/s | fed / resident |", "|---|---|---|---|"]
    for size, r in result["feed"].items():
        lines.append(f"| {size} (batch {r['batch']}) | {r['resident_samples_s']} | {r['fed_samples_s']} | "
                     f"{r['fed_vs_resident']} |")
    for name, r in result.get("feed_variants", {}).items():
        lines.append(f"| small, {name} | {r['resident_samples_s']} | {r['fed_samples_s']} | {r['fed_vs_resident']} |")
    lines.append(f"\nloader alone: {result['loader']['samples_s']} samples/s (batch {result['loader']['batch']})")
    lines += ["", "| pipeline | ms/step | samples/s | x unsplit |", "|---|---|---|---|"]
    for name, r in result["pipeline"].items():
        lines.append(f"| {name} | {r['ms']} | {r['samples_s']} | {r['vs_unsplit']} |")
    lines.append(f"\nbf16 matmul ceiling (TFLOP/s): {result['ceiling']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "build", "gpu-data", "bench"),
                        help="a store root holding datasets/churn (make gpu-data)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: does every section run")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--sections", default="ceiling,step,feed,pipeline")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    quick = {"steps": 3, "warmup": 2}
    sizes = SIZES if not args.quick else {"small": {"width": 32, "num_blocks": 2, "batch": 256, **quick},
                                          "big": {"width": 64, "num_blocks": 2, "batch": 512, **quick}}
    timer = Timer(device, 10, 30, 3) if not args.quick else Timer(device, 2, 3, 3)
    data = Data(RunStore.create(args.data).dataset("churn").latest())
    sections = args.sections.split(",")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(name, None)
    engine = make_engine("ddp", device, RankEnvironment())
    result = {"machine": machine(device), "dataset": data.dir, "sizes": sizes}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save() -> None:  # after every section: a run cut short keeps what it measured
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    try:
        with tempfile.TemporaryDirectory() as folder:
            if "ceiling" in sections:
                result["ceiling"] = matmul_ceiling(device, args.quick)
                print("ceiling", result["ceiling"], flush=True)
                save()
            if "step" in sections:
                result["step"] = {}
                for name, size in sizes.items():
                    result["step"][name] = bench_steps(data, device, engine, size, folder,
                                                       compile_plain=not args.no_compile and name == "small",
                                                       compile_ringtrain=not args.no_compile)
                    print("step", name, json.dumps(result["step"][name]), flush=True)
                    save()
            if "feed" in sections:
                result["feed"] = {name: bench_feed(data, device, engine, size, folder)
                                  for name, size in sizes.items()}
                result["feed_variants"] = bench_feed(data, device, engine, sizes["small"], folder, variants=True)
                result["loader"] = bench_loader(data, device, sizes["small"]["batch"])
                print("feed", json.dumps(result["feed"]), json.dumps(result["loader"]), flush=True)
                save()
            if "pipeline" in sections:
                result["pipeline"] = bench_pipeline(data, device, engine, timer, folder)
                print("pipeline", json.dumps(result["pipeline"]), flush=True)
    finally:
        engine.shutdown()
    save()
    if all(k in result for k in ("step", "feed", "pipeline", "ceiling")):
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
