"""The cost of handing rows to a `mapInArrow` worker, on each stack: the ETL's writing stage, its one `mapInArrow`
stage, is slower on Spark 4 than on Spark 3.5 (BENCHMARKS.md, "ETL: where the gap to plain Spark lives"). Spark 4
also made the Python runner single-threaded (SPARK-44705).

Data: `--rows` rows of 8 columns (6 doubles, a long, a 12-character string), written once as Parquet under
bench/.data/arrow-runner. One local[2] session; each job reads them, shuffles them into 2 tasks and sorts them
within each task (as the ETL's writing stage reads its shuffle and sorts), then:
- `jvm`: writes them to Spark's `noop` sink: the JVM's side alone;
- `feed`: hands them to `mapInArrow`, whose worker only counts the rows: + the Arrow encoding and transfer;
- `both`: the worker also writes each batch as Parquet (snappy) to memory and hashes it, as the ETL's writers do,
  and reports the CPU seconds that work took in each task (`time.process_time`; `work` = their sum ÷ 2 cores).
One untimed warm-up of each, then `--repeats` interleaved rounds; medians. `to Python` = feed − jvm. On 2 busy
cores nothing can overlap: both ≈ feed + work whatever the threading.

    .venv/bin/python bench/arrow_runner_bench.py                           # 5M rows, 5 rounds
    .venv-spark4/bin/python bench/arrow_runner_bench.py --out arrow-runner-spark4
    .venv/bin/python bench/arrow_runner_bench.py --rows 100000 --repeats 1 --out smoke-arrow-runner
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, machine, median, quiet_logs, spark_session, warn_if_busy, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000, help="rows (default 5M)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians)")
    p.add_argument("--out", default="arrow-runner", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def count(batches):
    import pyarrow as pa
    yield pa.RecordBatch.from_pylist([{"rows": sum(b.num_rows for b in batches), "work_cpu_s": 0.0}])


def write(batches):
    import hashlib
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows, cpu = 0, 0.0
    for batch in batches:
        started = time.process_time()
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_batches([batch]), sink, compression="snappy")
        hashlib.sha256(sink.getvalue()).hexdigest()
        cpu += time.process_time() - started
        rows += batch.num_rows
    yield pa.RecordBatch.from_pylist([{"rows": rows, "work_cpu_s": cpu}])


def render(r: dict) -> str:
    j = r["jobs"]
    return "\n".join([
        f"{r['rows']:,} rows, local[2], medians of {r['repeats']} rounds (pyspark "
        f"{r['machine']['versions'].get('pyspark', '?')}):", "",
        "| jvm s (noop sink) | feed s (worker counts) | to Python s (feed − jvm) | both s (worker writes) | "
        "work s (worker's CPU ÷ 2) |", "|---:|---:|---:|---:|---:|",
        f"| {j['jvm']:.2f} | {j['feed']:.2f} | **{j['feed'] - j['jvm']:.2f}** | {j['both']:.2f} | {j['work']:.2f} |"])


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    from pyspark.sql import functions as F
    spark = spark_session(2)
    path = os.path.join(DATA, "arrow-runner", f"rows-{args.rows}")
    try:
        if not os.path.exists(os.path.join(path, "_SUCCESS")):
            cols = [(F.rand(i) * 1000).alias(f"x{i}") for i in range(6)]
            (spark.range(args.rows, numPartitions=2)
             .select(F.col("id"), F.substring(F.sha2(F.col("id").cast("string"), 256), 1, 12).alias("s"), *cols)
             .write.mode("overwrite").parquet(path))
        df = spark.read.parquet(path).repartition(2).sortWithinPartitions("s")
        schema = "rows long, work_cpu_s double"
        jobs = {"jvm": lambda: df.write.format("noop").mode("overwrite").save(),
                "feed": lambda: df.mapInArrow(count, schema).collect(),
                "both": lambda: df.mapInArrow(write, schema).collect()}
        times = {name: [] for name in jobs}
        work = []
        for i in range(args.repeats + 1):
            for name, job in jobs.items():
                started = time.perf_counter()
                out = job()
                if i:
                    times[name].append(time.perf_counter() - started)
                    if name == "both":
                        work.append(sum(r["work_cpu_s"] for r in out) / 2)
                assert out is None or sum(r["rows"] for r in out) == args.rows
    finally:
        spark.stop()
    med = {**{name: median(t) for name, t in times.items()}, "work": median(work)}
    write_result(args.out, {"rows": args.rows, "repeats": args.repeats, "machine": info,
                            "jobs": {k: round(v, 3) for k, v in med.items()},
                            "runs_s": {**{k: [round(x, 3) for x in v] for k, v in times.items()},
                                       "work": [round(x, 3) for x in work]}}, render)


if __name__ == "__main__":
    main()
