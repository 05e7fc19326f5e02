"""Where a data-parallel step's milliseconds go: Horovod's settings and DDP, side by side, 1 and 2 ranks.

The scaling benchmark (bench/scaling_bench.py) measures the whole product path in Spark; this one
takes Spark and the reader out, to time the step itself and each Horovod knob under the same
conditions. Each configuration is one launch of 1 or 2 rank processes on this machine, their
environment set by the Spark task's own functions (training.rendezvous: Horovod's HTTP rendezvous,
MASTER_ADDR/PORT), plus the configuration's environment. Each rank builds the demo's `tabular_mlp`
(conf/demo.yaml's shapes: 6 numeric, 4 categorical columns), the real engine
(`training.engines.make_engine`, `wrap`), AdamW, and runs the training loop's step on batches held in
memory (batch 256 per rank):

    forward + backward      Horovod: its gradient hooks hand each gradient to the background thread
    synchronize             wait until the averaged gradients are in .grad (DDP: already done)
    update                  finiteness check, gradient clipping, optimizer step, zero_grad

Per launch, after warm-up, each phase's mean over `--steps` steps, on the slower rank (max over
ranks of the rank's total). Configurations are interleaved: per repeat every configuration runs
once, in the order given; the table gives medians over repeats.

    .venv/bin/python bench/step_bench.py                           # every configuration, 3 repeats
    .venv/bin/python bench/step_bench.py --configs hvd2,ddp2 --repeats 1 --steps 50   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, machine, warn_if_busy, write_result  # noqa: E402

RESULT = "STEP_RESULT "
PHASES = ("forward_backward", "synchronize", "update")

# name: (engine, ranks, extra environment, what it tests). Every configuration runs with ringtrain's
# defaults (train.pin_cores auto: Horovod's ranks pinned to their own cores, DDP's not; Horovod's
# gradients grouped, engines.GRADIENT_GROUP_BYTES) except what it names. Horovod's own defaults (0.28.1, operations.cc):
# cycle time 1 ms, fusion threshold 128 MiB, response cache 1024 entries, no thread affinity.
UNPINNED = {"STEP_BENCH_PIN": "0"}
UNGROUPED = {"STEP_BENCH_GROUP_BYTES": "0"}
CONFIGS = {
    "hvd1": ("horovod", 1, {}, "Horovod, 1 rank"),
    "hvd2": ("horovod", 2, {}, "Horovod, 2 ranks, ringtrain's defaults (pinned, grouped)"),
    "hvd2-stock": ("horovod", 2, {**UNPINNED, **UNGROUPED}, "Horovod, 2 ranks, unpinned, ungrouped (before)"),
    "hvd2-unpinned": ("horovod", 2, UNPINNED, "ranks not pinned (grouped)"),
    "hvd2-ungrouped": ("horovod", 2, UNGROUPED, "one request per gradient (pinned)"),
    "hvd2-cycle0.1": ("horovod", 2, {"HOROVOD_CYCLE_TIME": "0.1"}, "HOROVOD_CYCLE_TIME=0.1 (ms)"),
    "hvd2-cycle5": ("horovod", 2, {"HOROVOD_CYCLE_TIME": "5"}, "HOROVOD_CYCLE_TIME=5 (ms)"),
    "hvd2-nofusion": ("horovod", 2, {"HOROVOD_FUSION_THRESHOLD": "0"}, "HOROVOD_FUSION_THRESHOLD=0 (no fusion)"),
    "hvd2-nocache": ("horovod", 2, {"HOROVOD_CACHE_CAPACITY": "0"}, "HOROVOD_CACHE_CAPACITY=0 (no response cache)"),
    "hvd2-affinity": ("horovod", 2, {**UNPINNED, "HOROVOD_THREAD_AFFINITY": "0,1"},
                      "unpinned, HOROVOD_THREAD_AFFINITY=0,1 (only the background thread of rank r on core r)"),
    "hvd2-threads2": ("horovod", 2, {**UNPINNED, "STEP_BENCH_THREADS": "2"},
                      "unpinned, 2 torch threads per rank (4 on 2 cores)"),
    "hvd2-sleepwait": ("horovod", 2, {**UNPINNED, "STEP_BENCH_VARIANT": "sleepwait"},
                       "unpinned, wait by polling the handles with 20 µs sleeps (Horovod's own wait spins "
                       "on sched_yield)"),
    "ddp1": ("ddp", 1, {}, "DDP (Gloo), 1 rank"),
    "ddp2": ("ddp", 2, {}, "DDP (Gloo), 2 ranks, ringtrain's default (not pinned)"),
    "ddp2-pinned": ("ddp", 2, {"STEP_BENCH_PIN": "1"}, "DDP (Gloo), 2 ranks, pinned"),
}
DEFAULT_CONFIGS = ",".join(CONFIGS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=200, help="timed steps per launch")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds before a launch's ranks are killed")
    p.add_argument("--out", default="step", help="results name: bench/results/<out>.json")
    p.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- in each rank

def rank_main(args) -> None:
    import torch
    import torch.nn.functional as F
    from ringtrain.training import engines
    from ringtrain.training.environment import RankEnvironment, pin_to_cores
    from ringtrain.training.loop import _grads_finite
    from ringtrain.training.models import TabularMLP
    env = RankEnvironment.from_environ()
    engine_name = os.environ["STEP_BENCH_ENGINE"]
    # What the worker does with train.pin_cores: auto (the default) pins Horovod's ranks only.
    if os.environ.get("STEP_BENCH_PIN", "1" if engine_name == "horovod" else "0") == "1":
        pin_to_cores(env.cores(os.sched_getaffinity(0)))
    torch.set_num_threads(int(os.environ.get("STEP_BENCH_THREADS", "1")))
    engines.GRADIENT_GROUP_BYTES = int(os.environ.get("STEP_BENCH_GROUP_BYTES", engines.GRADIENT_GROUP_BYTES))
    engine = engines.make_engine(engine_name, torch.device("cpu"), env)
    torch.manual_seed(0)
    model = TabularMLP(6, [5, 4, 3, 4], hidden=[128, 64], embedding_dim=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = engine.wrap(model, optimizer, 1)
    if os.environ.get("STEP_BENCH_VARIANT") == "sleepwait":
        def synchronize(opt, hvd=engine.hvd):
            for handle, _ in list(opt._handles.values()):
                while handle is not None and not hvd.poll(handle):
                    time.sleep(20e-6)
            opt.synchronize()
        engine.synchronize = synchronize
    g = torch.Generator().manual_seed(env.rank)
    batches = [(torch.randn(args.batch_size, 6, generator=g), torch.randint(0, 3, (args.batch_size, 4), generator=g),
                (torch.rand(args.batch_size, generator=g) > 0.5).float()) for _ in range(16)]
    sums = dict.fromkeys(PHASES, 0.0)
    for step in range(args.warmup + args.steps):
        num, cat, label = batches[step % len(batches)]
        t0 = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(num, cat), label).backward()
        t1 = time.perf_counter()
        engine.synchronize(optimizer)
        t2 = time.perf_counter()
        if _grads_finite(model):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            engine.step(optimizer)
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if step >= args.warmup:
            for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
                sums[name] += seconds
    digest = float(sum(p.detach().double().sum() for p in model.parameters()))
    print(RESULT + json.dumps({"rank": env.rank, "ms": {k: 1000 * v / args.steps for k, v in sums.items()},
                               "param_sum": digest}), flush=True)
    engine.shutdown()


# ----------------------------------------------------------------------------- the parent

def launch(name: str, args, argv: list[str]) -> dict:
    from ringtrain.training.environment import RankEnvironment
    from ringtrain.training.rendezvous import for_engine, place
    engine, ranks, extra, _ = CONFIGS[name]
    host = "127.0.0.1"
    slots = place([host] * ranks)
    rendezvous = for_engine(engine)
    port = rendezvous.start(slots)
    procs = []
    try:
        for rank in range(ranks):
            rank_env = RankEnvironment(rank=rank, size=ranks, local_rank=slots[rank].local_rank,
                                       local_size=slots[rank].local_size)
            env = {**os.environ, **rank_env.to_environ(), **rendezvous.environ(slots, rank, host, port),
                   **extra, "STEP_BENCH_ENGINE": engine, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, os.path.abspath(__file__), "--rank-child"] + argv
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
        deadline = time.time() + args.timeout
        outputs = []
        for proc in procs:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
            line = next((x for x in stdout.splitlines() if x.startswith(RESULT)), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{name}: a rank exited with code {proc.returncode} and no result")
            outputs.append(json.loads(line[len(RESULT):]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        rendezvous.stop()
    slowest = max(outputs, key=lambda o: sum(o["ms"].values()))
    return {"config": name, "ms": slowest["ms"], "step_ms": sum(slowest["ms"].values()),
            "ranks_identical": len({o["param_sum"] for o in outputs}) == 1}


def summarize(runs: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        mine = [r for r in runs if r["config"] == name]
        engine, ranks, extra, what = CONFIGS[name]
        out[name] = {"engine": engine, "ranks": ranks, "env": extra, "what": what,
                     "step_ms": statistics.median(r["step_ms"] for r in mine),
                     "step_ms_per_repeat": [round(r["step_ms"], 3) for r in mine],
                     "phases_ms": {p: statistics.median(r["ms"][p] for r in mine) for p in PHASES},
                     "ranks_identical": all(r["ranks_identical"] for r in mine)}
    for name, row in out.items():  # efficiency against the same engine's 1-rank step: sps(2) / (2 sps(1))
        one = next((o for o in out.values() if o["engine"] == row["engine"] and o["ranks"] == 1), None)
        row["efficiency"] = one["step_ms"] / row["step_ms"] if one and row["ranks"] == 2 else None
    return out


def render(result: dict) -> str:
    lines = ["| configuration | ranks | step (ms) | forward+backward | synchronize | update | "
             "efficiency sps(2) / (2 × sps(1)) | per repeat (ms) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["summary"].items():
        eff = f"**{r['efficiency']:.2f}**" if r["efficiency"] is not None else ""
        ph = r["phases_ms"]
        lines.append(f"| `{name}`: {r['what']} | {r['ranks']} | {r['step_ms']:.2f} | {ph['forward_backward']:.2f} | "
                     f"{ph['synchronize']:.2f} | {ph['update']:.2f} | {eff} | "
                     f"{', '.join(f'{x:.2f}' for x in r['step_ms_per_repeat'])} |")
    p = result["params"]
    lines.append(f"\nMedians of {p['repeats']} interleaved launches per configuration; {p['steps']} timed steps "
                 f"per launch after {p['warmup']} warm-up, batch {p['batch_size']} per rank, tabular_mlp, AdamW; "
                 f"the slower rank's means.")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.rank_child:
        rank_main(args)
        return 0
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    info = machine()
    warn_if_busy(info)
    started = time.time()
    runs = []
    for rep in range(args.repeats):
        for name in names:
            run = {**launch(name, args, argv), "repeat": rep}
            runs.append(run)
            print(f"[step] repeat {rep + 1}/{args.repeats} {name}: {run['step_ms']:.2f} ms/step "
                  f"{ {k: round(v, 2) for k, v in run['ms'].items()} }", file=sys.stderr, flush=True)
    params = {k: v for k, v in vars(args).items() if k != "rank_child"}
    result = {"machine": info, "params": params, "seconds": round(time.time() - started, 1),
              "summary": summarize(runs, names), "runs": runs}
    write_result(args.out, result, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
