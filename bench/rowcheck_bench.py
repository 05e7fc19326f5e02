"""Row-group checksums: an epoch's reading time with every row group checked against the manifest's CRC32
(the default) and without (the same plan, its checks dropped), side by side, for each reader and store.

- Data: the demo's churn table, `--rows` rows (1,000,000 by default), published by the real ETL under
  bench/.data/train-<rows> (90% train; see _common.build_dataset), republished when its manifest predates
  the row-group CRC32s.
- Stores: the local disk, and (`--stores local,s3`) the same train shards copied to moto's S3-compatible
  server (tests/s3_server.py, its own process on 127.0.0.1), read by URI.
- Reading: `open_reader(kind, ...)` for each reader the stack has (petastorm and arrow; arrow alone on the
  Spark 4 stack), one epoch of rank 0 of 1 (every train shard), batch size `--batch-size`, numpy batches
  (no tensors, no training: the reader's own time, where the check's cost is largest relative to the rest).
  Per repeat, per reader and store, unchecked and checked alternate (their order flips every repeat), so
  drift on a busy machine hits both alike. Cost = the median over repeats of checked / unchecked - 1, each
  checked run against the unchecked run of the same repeat (paired: a slow moment of the machine falls on
  both); the medians of each mode are given too.

    .venv/bin/python bench/rowcheck_bench.py                                   # 1M rows, local store, 5 repeats
    .venv/bin/python bench/rowcheck_bench.py --stores local,s3                 # and the S3-compatible server
    .venv/bin/python bench/rowcheck_bench.py --rows 20000 --repeats 1 --out smoke-rowcheck   # smoke test
    .venv-spark4/bin/python bench/rowcheck_bench.py --out rowcheck-spark4      # the Spark 4 stack: arrow only
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, median, quiet_logs, machine, spark_session, warn_if_busy, write_result  # noqa: E402
from render import render_rowcheck  # noqa: E402
from ringtrain.stack import installed  # noqa: E402

READERS = ("petastorm", "arrow") if installed("petastorm") else ("arrow",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated churn data (default 1M)")
    p.add_argument("--repeats", type=int, default=5, help="alternated runs per reader, store and mode (medians)")
    p.add_argument("--batch-size", type=int, default=1024, help="reader batch size")
    p.add_argument("--s3-repeats", type=int, default=None,
                   help="repeats on the S3 server (default: --repeats; each S3 epoch takes seconds, not tenths)")
    p.add_argument("--stores", default="local", help="local, s3, or local,s3")
    p.add_argument("--readers", default=",".join(READERS), help="default: the readers this stack has")
    p.add_argument("--out", default="rowcheck", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def publish(rows: int) -> tuple[str, dict]:
    """(dataset_dir, manifest) of a published churn dataset whose manifest has the row-group CRC32s."""
    from _common import DATA, bench_config
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore
    from ringtrain.manifest import load_manifest
    root = os.path.join(DATA, f"train-{rows}")
    cfg = bench_config(root, rows)
    spark = spark_session(2)
    try:
        write_churn_csv(cfg.etl.source.path, rows, 7)
        summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
        manifest = load_manifest(summary["dataset_dir"])
        if manifest.splits["train"].shards[0].chunk_crc32 is None:  # published by older code: publish again
            summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset), force=True)
            manifest = load_manifest(summary["dataset_dir"])
    finally:
        spark.stop()
    return summary["dataset_dir"], manifest


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    dataset_dir, manifest = publish(args.rows)
    stores = args.stores.split(",")
    dirs, server = {"local": dataset_dir}, None
    if "s3" in stores:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from s3_server import S3Server
        server = S3Server.start(tempfile.mkdtemp(prefix="ringtrain-moto-"))
        os.environ.update(server.env)
        dirs["s3"] = server.fresh_uri("rowcheck")
        fs = server.filesystem()
        for shard in manifest.splits["train"].shards:
            with open(os.path.join(dataset_dir, "train", shard.file), "rb") as f, \
                    fs.open_output_stream(f"{dirs['s3'][len('s3://'):]}/train/{shard.file}") as out:
                out.write(f.read())
    try:
        result = measure(args, manifest, {s: dirs[s] for s in stores})
    finally:
        if server is not None:
            server.stop()
    train = manifest.splits["train"]
    result.update(rows=args.rows, train_rows=train.rows, shards=len(train.shards),
                  row_groups=sum(s.row_groups for s in train.shards),
                  train_mb=round(sum(s.bytes for s in train.shards) / 1e6, 1), machine=info)
    write_result(args.out, result, render_rowcheck)


class PollingSleeps:
    """Seconds slept by petastorm's synchronous pool: its consumer polls for the ventilator thread's next row
    group with `sleep(.1)` (petastorm/workers_pool/dummy_pool.py), and how many such sleeps an epoch takes is a
    race between two threads (2 to 24 per epoch here, checked or not). They make petastorm's wall time jump in
    0.1 s steps; the "reading" time below is the wall time net of them."""

    def __init__(self):
        self.seconds = 0.0
        try:
            from petastorm.workers_pool import dummy_pool
        except ImportError:  # the Spark 4 stack: no petastorm, nothing to count
            return
        real = dummy_pool.sleep

        def counting(seconds):
            self.seconds += seconds
            real(seconds)
        dummy_pool.sleep = counting

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def measure(args, manifest: dict, dirs: dict) -> dict:
    from ringtrain.training.data import Columns, open_reader, plan_reading
    cols = Columns.from_manifest(manifest)
    sleeps = PollingSleeps()
    runs = {(kind, store, mode): [] for kind in args.readers.split(",") for store in dirs
            for mode in ("unchecked", "checked")}
    s3_repeats = args.repeats if args.s3_repeats is None else args.s3_repeats
    for rep in range(max(args.repeats, s3_repeats)):
        for kind in args.readers.split(","):
            for store, dataset_dir in dirs.items():
                if rep >= (s3_repeats if store == "s3" else args.repeats):
                    continue
                modes = ("unchecked", "checked") if rep % 2 == 0 else ("checked", "unchecked")
                for mode in modes:
                    plan = plan_reading(dataset_dir, manifest, "train", 0, 1, args.batch_size)
                    if mode == "unchecked":
                        plan = dataclasses.replace(plan, chunk_crc32={})
                    reader = open_reader(kind, plan, cols, args.batch_size, 0, 0)
                    sleeps.take()
                    t, cpu = time.perf_counter(), time.process_time()
                    with contextlib.redirect_stdout(sys.stderr):  # petastorm prints when a reader closes
                        rows = sum(len(b["label"]) for b in reader.epoch(rep))
                    wall, cpu, slept = time.perf_counter() - t, time.process_time() - cpu, sleeps.take()
                    runs[(kind, store, mode)].append((wall, wall - slept, cpu))
                    print(f"[rowcheck] {kind} {store} {mode} repeat {rep + 1}: {wall:.2f}s, {wall - slept:.2f}s net "
                          f"of polling sleeps, CPU {cpu:.2f}s ({rows} rows)", file=sys.stderr)
    measured = []
    for kind in args.readers.split(","):
        for store in dirs:
            entry = {"reader": kind, "store": store}
            for i, what in enumerate(("wall", "reading", "cpu")):
                plain = [r[i] for r in runs[(kind, store, "unchecked")]]
                checked = [r[i] for r in runs[(kind, store, "checked")]]
                paired = [c / u - 1 for c, u in zip(checked, plain)]
                entry.update({f"unchecked_{what}_s": round(median(plain), 3),
                              f"checked_{what}_s": round(median(checked), 3),
                              f"{what}_cost": round(median(paired), 4),
                              f"{what}_cost_quartiles": [round(q, 4) for q in quartiles(paired)],
                              f"runs_unchecked_{what}_s": [round(r[i], 3) for r in runs[(kind, store, "unchecked")]],
                              f"runs_checked_{what}_s": [round(r[i], 3) for r in runs[(kind, store, "checked")]]})
            measured.append(entry)
    return {"repeats": args.repeats, "s3_repeats": s3_repeats if "s3" in dirs else None,
            "batch_size": args.batch_size, "measured": measured}


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the middle half of the paired costs: how far one pair can mislead)."""
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return at(0.25), at(0.75)


if __name__ == "__main__":
    main()
