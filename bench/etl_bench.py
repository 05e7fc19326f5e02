"""ETL: rows/s of the Spark ETL against a plain pyarrow Parquet write of the same rows, as a ratio.

Data: the demo's synthetic churn table (`etl.sample_data.generate_churn`, seed 7), `--rows` rows,
written once as CSV under bench/.data/etl-<rows>/raw (the ETL's source) and held in memory as an
Arrow table (the baseline's input).

- Baseline, `pyarrow_write`: `pyarrow.parquet.write_table` of that Arrow table (snappy), i.e. only the
  cost of writing the same rows as Parquet, with nothing read, validated or shuffled.
- Second baseline, `pyarrow_csv_to_parquet`: `pyarrow.csv.read_csv` of the same CSV + `write_table`:
  what a plain single-process conversion of the same source costs.
- `spark_startup_s`: `ringtrain.spark.get_spark` (session creation, JVM start), measured once, and
  excluded from the ETL time.
- ETL: `etl.pipeline.run_etl(..., force=True)` on conf/demo.yaml's columns and shards, in the session
  above: read CSV, validate, split, fit and apply features, balanced shards, verify, publish. Each
  repeat publishes a new version. The first repeat also pays the JVM's warm-up; it is reported, and
  the medians are over all repeats.
- Ratios: `etl_rows_per_s / pyarrow_write_rows_per_s` (and against the second baseline).

    .venv/bin/python bench/etl_bench.py                          # 1M rows, 3 repeats (a few minutes on 2 cores)
    .venv/bin/python bench/etl_bench.py --rows 50000 --repeats 1 --out smoke-etl   # smoke test
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, warn_if_busy, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated churn data (default 1M)")
    p.add_argument("--repeats", type=int, default=3, help="ETL runs and baseline writes (medians)")
    p.add_argument("--master", default="local[2]", help="Spark master of the ETL session")
    p.add_argument("--out", default="etl", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def render(r: dict) -> str:
    e, b = r["etl"], r["baselines"]
    return "\n".join([
        f"ETL of {r['rows']:,} churn rows on {r['master']} ({r['machine']['cores']} cores), "
        f"medians of {r['repeats']} runs:",
        "",
        "| | seconds | rows/s | ETL / this |",
        "|---|---:|---:|---:|",
        f"| pyarrow `write_table` (Arrow table in memory -> Parquet) | {b['pyarrow_write']['seconds']:.2f} | "
        f"{b['pyarrow_write']['rows_per_s']:,.0f} | **{r['ratio_vs_pyarrow_write']:.3f}** |",
        f"| pyarrow `read_csv` + `write_table` (same CSV -> Parquet) | {b['pyarrow_csv_to_parquet']['seconds']:.2f} | "
        f"{b['pyarrow_csv_to_parquet']['rows_per_s']:,.0f} | {r['ratio_vs_pyarrow_csv_to_parquet']:.3f} |",
        f"| ringtrain ETL (Spark, excluding start-up) | {e['seconds']:.2f} | {e['rows_per_s']:,.0f} | 1 |",
        "",
        f"Spark start-up (session creation): {r['spark_startup_s']:.2f} s, not included above. "
        f"ETL runs: {', '.join(f'{s:.2f}' for s in e['runs_s'])} s (the first includes JVM warm-up).",
    ])


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import generate_churn, write_churn_csv
    from ringtrain.config import load_config
    from ringtrain.spark import get_spark
    from ringtrain.store import RunStore

    root = os.path.join(DATA, f"etl-{args.rows}")
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/raw", f"demo.rows={args.rows}", f"spark.master={args.master}",
        "spark.conf={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false', "
        "spark.sql.shuffle.partitions: '8'}"])
    csv_path = write_churn_csv(cfg.etl.source.path, args.rows, cfg.demo.seed)
    frame, _ = generate_churn(args.rows, cfg.demo.seed)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    del frame
    scratch = os.path.join(root, "baseline")
    os.makedirs(scratch, exist_ok=True)

    started = time.perf_counter()
    spark = get_spark(cfg.spark)
    spark_startup_s = time.perf_counter() - started
    spark.sparkContext.setLogLevel("ERROR")
    datasets = RunStore.create(root).dataset(cfg.etl.dataset)
    try:
        etl_runs, write_runs, convert_runs, summary = [], [], [], None
        for i in range(args.repeats):  # interleaved: drift on a noisy machine hits all three alike
            t = time.perf_counter()
            pq.write_table(table, os.path.join(scratch, "plain.parquet"), compression="snappy")
            write_runs.append(time.perf_counter() - t)

            t = time.perf_counter()
            pq.write_table(pacsv.read_csv(csv_path), os.path.join(scratch, "converted.parquet"), compression="snappy")
            convert_runs.append(time.perf_counter() - t)

            t = time.perf_counter()
            summary = run_etl(spark, cfg.etl, datasets, force=True)
            etl_runs.append(time.perf_counter() - t)
            for old in datasets.versions()[:-1]:  # keep the disk bounded; only the newest is LATEST
                shutil.rmtree(os.path.join(datasets.root, old), ignore_errors=True)
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    rows = args.rows
    etl_s, write_s, convert_s = median(etl_runs), median(write_runs), median(convert_runs)
    result = {
        "rows": rows, "repeats": args.repeats, "master": args.master, "machine": info,
        "spark_startup_s": round(spark_startup_s, 3),
        "etl": {"seconds": round(etl_s, 3), "rows_per_s": round(rows / etl_s, 1),
                "runs_s": [round(x, 3) for x in etl_runs], "rows_good": summary["rows_good"],
                "shards": summary["shards"], "balance_max_min": summary["balance_max_min"]},
        "baselines": {
            "pyarrow_write": {"seconds": round(write_s, 3), "rows_per_s": round(rows / write_s, 1),
                              "runs_s": [round(x, 3) for x in write_runs]},
            "pyarrow_csv_to_parquet": {"seconds": round(convert_s, 3), "rows_per_s": round(rows / convert_s, 1),
                                       "runs_s": [round(x, 3) for x in convert_runs]},
        },
        "ratio_vs_pyarrow_write": round(write_s / etl_s, 4),
        "ratio_vs_pyarrow_csv_to_parquet": round(convert_s / etl_s, 4),
    }
    write_result(args.out, result, render)


if __name__ == "__main__":
    main()
