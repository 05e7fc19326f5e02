"""Pipeline (layer splitting): measured idle fraction of the GPipe schedule against (K-1)/(M+K-1).

For each stage count K and micro-batch count M, runs training steps of the deeper built-in model
(residual_mlp) through `training.pipeline.PipelineModel` with tracing on, and reports:
  - idle: 1 - (busy time summed over stages) / (K x step span), median over steps;
  - bubble: GPipe's idle fraction with equal stage times, (K-1)/(M+K-1);
  - replayed: the idle fraction the same schedule has with the traced operations' own durations and
    instant hand-offs (training.pipeline.replayed_idle_fraction): idle - replayed is what the hand-offs
    between stages cost, replayed - bubble what unequal operation times cost;
  - speed: samples/s of the split model / samples/s of the unsplit model, measured in the same run.
Stages run in threads with one intra-op thread each; on CPU they share the device, so K stages
need K cores to overlap (this machine has os.cpu_count() of them, reported in the output).

    .venv/bin/python bench/pipeline_bench.py                 # full run (about 2 minutes on 2 cores)
    .venv/bin/python bench/pipeline_bench.py --steps 3 --width 64 --out smoke-pipeline   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, warn_if_busy, write_result  # noqa: E402
from render import render_pipeline  # noqa: E402
from ringtrain.training.models import ResidualMLP  # noqa: E402
from ringtrain.training.pipeline import (PipelineModel, bubble_fraction, idle_fraction,  # noqa: E402
                                         replayed_idle_fraction)


def make_batch(rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(rows, 16, generator=g)
    cat = torch.randint(0, 50, (rows, 4), generator=g)
    label = (torch.rand(rows, generator=g) > 0.5).float()
    return num, cat, label


def build(width: int, blocks: int) -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP(16, [50] * 4, width=width, num_blocks=blocks)


def time_plain(model, batch, steps: int) -> float:
    num, cat, label = batch
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(num, cat), label).backward()
        times.append(time.perf_counter() - started)
        model.zero_grad()
    return statistics.median(times[2:])


def time_pipe(pipe, batch, steps: int) -> tuple[float, float, float, list[float]]:
    times, idles, replayed, busy = [], [], [], []
    for _ in range(steps + 2):
        started = time.perf_counter()
        pipe.forward_backward(batch[:2], batch[2], F.binary_cross_entropy_with_logits, trace=True)
        times.append(time.perf_counter() - started)
        trace = pipe.last_trace
        idles.append(idle_fraction(trace))
        replayed.append(replayed_idle_fraction(trace))
        span = max(op[3] for ops in trace for op in ops) - min(op[2] for ops in trace for op in ops)
        busy.append([sum(op[3] - op[2] for op in ops) / span for ops in trace])
        pipe.module.zero_grad()
    per_stage = [round(statistics.median(b[i] for b in busy[2:]), 3) for i in range(len(busy[0]))]
    return statistics.median(times[2:]), statistics.median(idles[2:]), statistics.median(replayed[2:]), per_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    p.add_argument("--micro", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="pipeline", help="results name: bench/results/<out>.json")
    args = p.parse_args()
    info = machine()
    warn_if_busy(info)
    torch.set_num_threads(1)
    batch = make_batch(args.batch)
    rows = []
    for k in args.stages:
        for m in args.micro:
            model = build(args.width, args.blocks)
            plain_s = time_plain(model, batch, args.steps)  # side by side with the split run below
            pipe = PipelineModel(model, k, m, [torch.device("cpu")])
            pipe_s, idle, replayed, per_stage = time_pipe(pipe, batch, args.steps)
            rows.append({"stages": k, "micro_batches": m, "layers_per_stage": [len(b) for b in pipe.bounds],
                         "idle_measured": round(idle, 3), "idle_replayed": round(replayed, 3),
                         "idle_gpipe": round(bubble_fraction(k, m), 3),
                         "stage_busy": per_stage, "step_s_split": round(pipe_s, 4), "step_s_plain": round(plain_s, 4),
                         "speed_split_over_plain": round(plain_s / pipe_s, 3)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"params": vars(args), "machine": info, "intra_op_threads": 1, "rows": rows}
    write_result(args.out, result, render_pipeline)


if __name__ == "__main__":
    main()
