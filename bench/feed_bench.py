"""Feed: loader samples/s / training samples/s on data already in memory, for both readers.

Loader: `training.data.open_reader(kind, ...)` + `prefetch` (what the training loop consumes)
reading one epoch of rank 0 of 1 (all train shards) into CPU tensors, with nothing else running.
Training: one worker's steps (1 torch thread, the same model, batch size and optimizer as the
worker: forward, loss, backward, gradient clipping, optimizer step) over batches already held in
memory as tensors. A ratio above 1 means the loader outruns training, so reading is hidden behind
the training step (on its own core). Per repeat: petastorm, arrow, training, interleaved; medians
over repeats.

    .venv/bin/python bench/feed_bench.py                                      # full run (1-2 minutes with the ETL)
    .venv/bin/python bench/feed_bench.py --rows 20000 --repeats 2 --loader-epochs 2   # smoke test
    .venv-spark4/bin/python bench/feed_bench.py --out feed-spark4             # the Spark 4 stack: arrow only
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import median, start, write_result  # noqa: E402
from render import render_feed  # noqa: E402
from ringtrain.stack import installed  # noqa: E402

# The readers this stack has: petastorm only on the Spark 3.5 stack.
READERS = ("petastorm", "arrow") if installed("petastorm") else ("arrow",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=250_000, help="rows of the generated churn dataset (90%% train)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of both the loader and training")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (petastorm, arrow, training)")
    p.add_argument("--loader-epochs", type=int, default=8, help="epochs the loader reads per measurement")
    p.add_argument("--train-passes", type=int, default=2, help="passes over the in-memory epoch per measurement")
    p.add_argument("--readers", default=",".join(READERS), help="default: the readers this stack has")
    p.add_argument("--out", default="feed", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    info, spark, cfg, dataset_dir, etl = start(args.rows)
    spark.stop()  # nothing of Spark runs during the measurements

    import torch
    import torch.nn.functional as F

    from ringtrain.manifest import load_manifest
    from ringtrain.schema import to_dict
    from ringtrain.training.data import Columns, open_reader, plan_reading, prefetch
    from ringtrain.training.models import build_model
    from ringtrain.training.optimizer import make_optimizer

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    manifest = load_manifest(dataset_dir)
    cols = Columns.from_manifest(manifest)
    bs, seed = args.batch_size, cfg.train.seed
    plan = plan_reading(dataset_dir, manifest, "train", 0, 1, bs)
    readers = [r for r in args.readers.split(",") if r]

    def load(kind: str, first_epoch: int, epochs: int) -> tuple[int, float]:
        reader = open_reader(kind, plan, cols, bs, seed, 0)
        started = time.perf_counter()
        samples = 0
        for epoch in range(first_epoch, first_epoch + epochs):  # as the loop does: a fresh prefetch per epoch
            for batch in prefetch(reader.epoch(epoch), cpu):
                samples += batch["label"].shape[0]
        return samples, time.perf_counter() - started

    # Training input: one epoch of batches, converted to tensors once and kept in memory.
    batches = list(prefetch(open_reader("arrow", plan, cols, bs, seed, 0).epoch(0), cpu))
    torch.manual_seed(seed)
    cards = list(manifest.features.categorical_cardinalities.values())
    model = build_model(to_dict(cfg.train.model), len(cols.numeric), cards)
    t = cfg.train
    optimizer = make_optimizer(t, model.parameters(), cpu)
    model.train()

    def train(steps) -> tuple[int, float]:
        started = time.perf_counter()
        samples = 0
        for batch in steps:
            loss = F.binary_cross_entropy_with_logits(model(batch["num"], batch["cat"]), batch["label"])
            loss.backward()
            if t.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad()
            samples += batch["label"].shape[0]
        return samples, time.perf_counter() - started

    def measure() -> dict:
        # Warm-up, not timed: the files into the page cache, each reader's imports, the first steps.
        for kind in readers:
            load(kind, 0, 1)
        train(batches[: max(1, len(batches) // 10)])
        measured = {kind: [] for kind in readers}
        measured["train"] = []
        for rep in range(args.repeats):
            for kind in readers:
                n, s = load(kind, 1 + rep * args.loader_epochs, args.loader_epochs)
                measured[kind].append({"samples": n, "seconds": s, "samples_per_s": n / s})
            n, s = train(batches * args.train_passes)
            measured["train"].append({"samples": n, "seconds": s, "samples_per_s": n / s})
            print(f"[feed] repeat {rep + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v[-1]['samples_per_s']:,.0f}/s" for k, v in measured.items()), file=sys.stderr, flush=True)
        return measured

    started = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # petastorm prints on stdout when a reader closes
        measured = measure()
    train_sps = median(m["samples_per_s"] for m in measured["train"])
    summary = {"train_sps_median": train_sps}
    for kind in readers:
        sps = median(m["samples_per_s"] for m in measured[kind])
        summary[kind] = {"loader_sps_median": sps, "ratio": sps / train_sps,
                         "ratio_per_repeat": [a["samples_per_s"] / b["samples_per_s"]
                                              for a, b in zip(measured[kind], measured["train"])]}
    if "petastorm" in readers and "arrow" in readers:
        summary["arrow_over_petastorm"] = summary["arrow"]["loader_sps_median"] / summary["petastorm"]["loader_sps_median"]
    result = {"machine": info, "params": vars(args), "dataset": etl,
              "model": to_dict(cfg.train.model), "optimizer": t.optimizer, "grad_clip_norm": t.grad_clip_norm,
              "steps_per_epoch": plan.steps_per_epoch, "seconds": round(time.time() - started, 1),
              "summary": summary, "runs": measured}
    write_result(args.out, result, render_feed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
