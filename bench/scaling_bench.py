"""Scaling: samples/s with 2 workers / (2 x samples/s with 1 worker), Horovod and DDP side by side.

The real product path: `training.launcher.launch` in a local[2] Spark session, one thread per
worker (train.threads_per_worker=1), on a churn dataset published by the real ETL. Per launch,
samples/s = sum over ranks of train_samples / max over ranks of train_seconds (time in training
steps, reading included, validation, start-up and checkpoints excluded). The configurations are
interleaved (per repeat: horovod 1w, 2w, ddp 1w, 2w), and each one's median over the repeats is
reported; scaling efficiency = median sps(2) / (2 x median sps(1)).

    .venv/bin/python bench/scaling_bench.py                                   # full run (about 3 minutes)
    .venv/bin/python bench/scaling_bench.py --rows 20000 --epochs 1 --repeats 1   # smoke test
    .venv-spark4/bin/python bench/scaling_bench.py --out scaling-spark4       # the Spark 4 stack: ddp, arrow
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, bench_config, median, start, write_result  # noqa: E402
from render import render_scaling  # noqa: E402
from ringtrain.stack import installed, resolve  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=250_000, help="rows of the generated churn dataset (90%% train)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per launch")
    p.add_argument("--batch-size", type=int, default=256, help="per-rank batch size (the demo's)")
    p.add_argument("--repeats", type=int, default=3, help="launches per configuration, interleaved")
    p.add_argument("--engines", default="horovod,ddp" if installed("horovod") else "ddp",
                   help="default: every engine this stack has (horovod,ddp on Spark 3.5; ddp on Spark 4)")
    p.add_argument("--pin-cores", default="auto", choices=["auto", "on", "off", "both"],
                   help="auto: train.pin_cores=auto (the default: Horovod pinned, DDP not), on: always, off: never; "
                        "both: each engine pinned and unpinned, interleaved")
    p.add_argument("--reader", default=resolve("auto", "petastorm"), choices=["petastorm", "arrow"],
                   help="default: what train.reader auto picks here (petastorm on Spark 3.5; arrow on Spark 4)")
    p.add_argument("--out", default="scaling", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def one_launch(sc, cfg, dataset_dir: str, engine: str, pin: bool | None, workers: int, args, tag: str) -> dict:
    from ringtrain.layout import RunStore
    from ringtrain.training.launcher import launch
    from ringtrain.training.spec import WorkerSpec
    run_cfg = bench_config(cfg.store.root, cfg.demo.rows, [
        f"train.engine={engine}", f"train.num_workers={workers}", "train.threads_per_worker=1",
        f"train.pin_cores={ {None: 'auto', True: 'always', False: 'never'}[pin] }",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.reader={args.reader}",
        "train.max_attempts=1", "train.checkpoint_every_steps=0"])
    store = RunStore.create(os.path.join(DATA, "runs"), f"scaling-{tag}-{uuid.uuid4().hex[:6]}").prepare()
    # No model artifact and no metrics file: rank 0 would export the model after the timed part anyway,
    # but it only adds wall time. A fresh run folder each launch, so nothing resumes.
    paths = {**store.paths(), "model_dir": None, "metrics_path": None}
    spec = WorkerSpec(config=run_cfg, dataset_dir=dataset_dir, paths=paths, run_id=store.run_id)
    started = time.time()
    try:
        results = launch(sc, spec)
    finally:
        wall = time.time() - started
        shutil.rmtree(store.run_dir, ignore_errors=True)
    samples = sum(r.train_samples for r in results)
    seconds = max(r.train_seconds for r in results)
    return {"engine": engine, "pin_cores": pin, "workers": workers, "samples": samples, "train_seconds": seconds,
            "samples_per_s": samples / seconds, "wall_s": round(wall, 2),
            "steps_per_epoch": results[0].steps_per_epoch,
            "ranks_identical": len({r.param_sha256 for r in results}) == 1,
            "per_rank": [{"rank": r.rank, "train_samples": r.train_samples, "train_seconds": r.train_seconds,
                          "ring_init_s": r.ring_init_s} for r in results]}


def main(argv=None) -> int:
    args = parse_args(argv)
    info, spark, cfg, dataset_dir, etl = start(args.rows)
    try:
        pins = {"auto": [None], "on": [True], "off": [False], "both": [True, False]}[args.pin_cores]
        # label -> (engine, pin): marked "(unpinned)" only when both are measured
        variants = {(f"{e} (unpinned)" if args.pin_cores == "both" and pin is False else e): (e, pin)
                    for e in args.engines.split(",") if e for pin in pins}
        runs = []
        started = time.time()
        for rep in range(args.repeats):
            for label, (engine, pin) in variants.items():
                for workers in (1, 2):
                    run = one_launch(spark.sparkContext, cfg, dataset_dir, engine, pin, workers, args,
                                     f"{engine}-{workers}w-r{rep}")
                    run["repeat"], run["label"] = rep, label
                    runs.append(run)
                    print(f"[scaling] repeat {rep + 1}/{args.repeats} {label} {workers}w: "
                          f"{run['samples_per_s']:,.0f} samples/s ({run['samples']} samples in "
                          f"{run['train_seconds']:.2f}s; launch {run['wall_s']:.1f}s)", file=sys.stderr, flush=True)
    finally:
        spark.stop()
    summary = {}
    for label in variants:
        sps = {w: [r["samples_per_s"] for r in runs if r["label"] == label and r["workers"] == w] for w in (1, 2)}
        per_repeat = [b / (2 * a) for a, b in zip(sps[1], sps[2])]
        summary[label] = {
            "sps_1_median": median(sps[1]), "sps_2_median": median(sps[2]),
            "efficiency": median(sps[2]) / (2 * median(sps[1])),
            "efficiency_per_repeat": per_repeat,
            "speedup": median(sps[2]) / median(sps[1]),
            "ranks_identical": all(r["ranks_identical"] for r in runs if r["label"] == label),
        }
    if not all(r["ranks_identical"] for r in runs):
        print("WARNING: some 2-worker launch ended with different parameters on its ranks (see runs[].ranks_identical)",
              file=sys.stderr)
    result = {"machine": info, "params": vars(args), "dataset": etl, "seconds": round(time.time() - started, 1),
              "summary": summary, "runs": runs}
    write_result(args.out, result, render_scaling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
