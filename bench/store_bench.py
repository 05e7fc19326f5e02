"""Store: ETL rows/s and reader rows/s with the store on an S3-compatible server, divided by the same with a
local store, measured in one run.

The S3-compatible server is moto's standalone server (`tests/s3_server.py`: its own process on
127.0.0.1, objects kept in its memory), so the ratios measure ringtrain's object-store paths (executors
uploading shards, readers fetching byte ranges over HTTP) against a local disk on the same machine, not
the speed of AWS S3.

- Data: the demo's churn table, `--rows` rows, written once as CSV under bench/.data/store-<rows>/raw
  (a local source for both: Spark reads the source, the store is what differs).
- ETL: `run_etl(..., force=True)` on conf/demo.yaml's columns and shards, into a local store and into
  s3://<bucket>/bench, alternated per repeat (drift on a noisy machine hits both alike), after one
  untimed warm-up ETL; one Spark session (start-up excluded).
- Readers: `open_reader(kind, ...)` for each reader the stack has (petastorm and arrow; arrow alone on the
  Spark 4 stack), one epoch of rank 0 of 1 (every train shard),
  from each store's published version, alternated per repeat. Rows/s = rows yielded / seconds.
- Whole-object reads: every train shard's bytes through `ringtrain.store.read_bytes` (one GET per object on
  S3), not parsed, alternated per repeat: the floor that request latency and bandwidth set for any reader.
- Ratios: `s3 rows/s / local rows/s`, medians over repeats.

    .venv/bin/python bench/store_bench.py                                      # 1M rows, 3 repeats
    .venv/bin/python bench/store_bench.py --rows 20000 --repeats 1 --out smoke-store   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, warn_if_busy, write_result  # noqa: E402
from render import render_store  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from s3_server import S3Server  # noqa: E402
from ringtrain.stack import installed  # noqa: E402

# The readers this stack has (the Spark 4 stack has no petastorm).
READERS = ("petastorm", "arrow") if installed("petastorm") else ("arrow",)
STORES = ("local", "s3")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated churn data (default 1M)")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs per store (medians)")
    p.add_argument("--batch-size", type=int, default=1024, help="reader batch size")
    p.add_argument("--master", default="local[2]", help="Spark master of the ETL session")
    p.add_argument("--out", default="store", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def summarize(rows: int, runs: dict) -> dict:
    out = {}
    for store in STORES:
        seconds = median(runs[store])
        out[store] = {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
                      "runs_s": [round(x, 3) for x in runs[store]]}
    out["ratio"] = round(out["s3"]["rows_per_s"] / out["local"]["rows_per_s"], 4)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    server = S3Server.start(tempfile.mkdtemp(prefix="ringtrain-moto-"))
    os.environ.update(server.env)  # before Spark starts: its executors inherit them
    try:
        result = measure(args, server)
    finally:
        server.stop()
    write_result(args.out, {**result, "machine": info}, render_store)


def measure(args, server: S3Server) -> dict:
    from ringtrain.config import load_config
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore
    from ringtrain.manifest import load_manifest
    from ringtrain.spark import get_spark
    from ringtrain.store import join, read_bytes, rmtree
    from ringtrain.training.data import Columns, open_reader, plan_reading

    local_root = os.path.join(DATA, f"store-{args.rows}")
    roots = {"local": local_root, "s3": server.uri("bench")}
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [
        f"store.root={local_root}", f"etl.source.path={local_root}/raw", f"demo.rows={args.rows}",
        f"spark.master={args.master}", "spark.conf={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: "
        "'false', spark.sql.shuffle.partitions: '8'}"])
    write_churn_csv(cfg.etl.source.path, args.rows, cfg.demo.seed)
    datasets = {s: RunStore.create(roots[s]).dataset(cfg.etl.dataset) for s in STORES}

    spark = get_spark(cfg.spark)
    spark.sparkContext.setLogLevel("ERROR")
    etl_runs, published = {s: [] for s in STORES}, {}
    try:
        run_etl(spark, cfg.etl, datasets["local"], force=True)  # warm-up, not timed: JVM JIT, Python workers
        for rep in range(args.repeats):
            for store in STORES:
                t = time.perf_counter()
                published[store] = run_etl(spark, cfg.etl, datasets[store], force=True)
                etl_runs[store].append(time.perf_counter() - t)
                print(f"[store] ETL {store} repeat {rep + 1}: {etl_runs[store][-1]:.1f}s", file=sys.stderr)
            for old in datasets["local"].versions()[:-1]:  # keep the disk bounded
                rmtree(join(datasets["local"].root, old))
    finally:
        spark.stop()

    read_runs = {kind: {s: [] for s in STORES} for kind in READERS}
    rows_read = {}
    for rep in range(args.repeats):
        for kind in READERS:
            for store in STORES:
                dataset_dir = published[store]["dataset_dir"]
                manifest = load_manifest(dataset_dir)
                plan = plan_reading(dataset_dir, manifest, "train", 0, 1, args.batch_size)
                reader = open_reader(kind, plan, Columns.from_manifest(manifest), args.batch_size, 0, 0)
                t = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):  # petastorm prints when a reader closes
                    rows_read[kind] = sum(len(b["label"]) for b in reader.epoch(rep))
                read_runs[kind][store].append(time.perf_counter() - t)
                print(f"[store] {kind} {store} repeat {rep + 1}: {read_runs[kind][store][-1]:.2f}s", file=sys.stderr)

    # A floor for any reader: every train shard's bytes fetched whole (one GET per object on S3), not parsed.
    raw_runs = {s: [] for s in STORES}
    for rep in range(args.repeats):
        for store in STORES:
            dataset_dir = published[store]["dataset_dir"]
            files = plan_reading(dataset_dir, load_manifest(dataset_dir), "train", 0, 1, args.batch_size).files
            t = time.perf_counter()
            nbytes = sum(len(read_bytes(f)) for f in files)
            raw_runs[store].append(time.perf_counter() - t)

    etl_rows = published["local"]["rows_read"]
    measured = {"ETL (Spark, excluding start-up)": summarize(etl_rows, etl_runs)}
    for kind in READERS:
        measured[f"reader `{kind}` (one epoch, 1 rank)"] = summarize(rows_read[kind], read_runs[kind])
    measured[f"whole-object reads of the train shards ({nbytes / 1e6:.1f} MB, bytes only)"] = \
        summarize(rows_read["arrow"], raw_runs)
    return {"rows": args.rows, "repeats": args.repeats, "master": args.master, "batch_size": args.batch_size,
            "server": "moto_server (tests/s3_server.py)", "measured": measured,
            "shards": published["local"]["shards"]}


if __name__ == "__main__":
    main()
