"""ETL: rows/s of ringtrain's ETL against plain Spark conversions of the same CSV, in the same session, as ratios;
and where the ETL's time goes (per-step breakdown).

Data: the demo's synthetic churn table (`etl.sample_data.generate_churn`, seed 7), `--rows` rows (one or more
sizes, each its own data set), written once as CSV under bench/.data/etl-<rows>/raw (the ETL's source).

Per size, after one untimed warm-up of each, `--repeats` rounds, each running in turn, in one Spark session:
- `spark_typed_sorted`: plain Spark, `spark.read.csv(header, inferSchema)`, `orderBy` the key, `write.parquet`
  (the converter a user would write, with a global sort).
- `spark_strings`: plain Spark, `spark.read.csv(header)` (every column a string), `write.parquet`.
- `pyarrow_csv_to_parquet`: `pyarrow.csv.read_csv` + `pyarrow.parquet.write_table` (one process).
- ETL: `etl.pipeline.run_etl(..., force=True)` on conf/demo.yaml's columns and shards: read CSV, validate,
  split, fit and apply features, balanced shards, verify, publish. Each round publishes a new version.
Medians over rounds; ratio = ETL rows/s ÷ baseline rows/s (= baseline seconds ÷ ETL seconds).

Per-step breakdown of the ETL (driver wall time, medians over rounds): the script times every Spark action
the ETL starts (`DataFrame.collect`, which `first` and `count` of a group use too) and the verification,
and names each by the ETL function that started it; the rest (CSV header, source fingerprint, planning,
publishing) is `other`. Spark is lazy, so reading and validating the CSV happens in the first action, which
also counts the rows: that step is "read, validate, count". The same script measures any version of the
ETL (the step names cover today's functions and those before them), so "before" and "after" compare like
with like: run it with the interpreter of a checkout of the older code (`--label before`).

    .venv/bin/python bench/etl_bench.py                                  # 1M and 5M rows, 3 rounds (make bench)
    .venv/bin/python bench/etl_bench.py --rows 200000 --repeats 3 --out etl-small
    /path/to/old-checkout/.venv/bin/python bench/etl_bench.py --rows 200000 --label before --out etl-small-before
    .venv/bin/python bench/etl_bench.py --conf spark.sql.codegen.hugeMethodLimit=65535 --label before --out etl-before
    .venv/bin/python bench/etl_bench.py --rows 50000 --repeats 1 --out smoke-etl   # smoke test
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, settings, warn_if_busy, write_result  # noqa: E402
from render import ETL_STEPS, render_etl  # noqa: E402

# ETL function that started a Spark action -> step. The innermost listed function on the stack names it.
STEPS = {
    "count_rows": "read, validate, count", "count_reasons": "read, validate, count",
    "fit_features": "fit", "_fit_label": "fit", "_moments": "fit", "_value_counts": "fit",
    "_quarantine_unseen_classes": "counts", "assign_shards": "counts", "write_splits": "counts",
    "write_shards": "encode, shuffle, write", "group_partitions": "encode, shuffle, write",
    "write_quarantine": "quarantine",
}
VERIFIERS = ("check_staged", "verify_staging")  # ringtrain.etl.steps names of the driver's verification


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000],
                   help="rows of the generated churn data; several sizes run one after the other (default 1M 5M)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per size (medians)")
    p.add_argument("--master", default="local[2]", help="Spark master of the session")
    p.add_argument("--label", default="after", help="what code this measures (recorded; e.g. before, after)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for the session (recorded), e.g. spark.sql.codegen.hugeMethodLimit=65535 "
                        "to measure the ETL with Spark's default limit, as before ringtrain set its own")
    p.add_argument("--out", default="etl", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def _dataframe_class():
    """The class of a session's DataFrames, whose `collect` is the one that runs: Spark 4 splits DataFrame
    into an interface and the classic (JVM) implementation, which has its own `collect`."""
    try:
        from pyspark.sql.classic.dataframe import DataFrame
    except ImportError:  # Spark 3.5: one class
        from pyspark.sql import DataFrame
    return DataFrame


class StepClock:
    """Driver wall time per ETL step while `run_etl` runs (see the module docstring)."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.depth = 0

    @contextlib.contextmanager
    def installed(self):
        import ringtrain.etl.steps as steps
        DataFrame = _dataframe_class()
        saved = [(DataFrame, "collect", DataFrame.collect)]
        saved += [(steps, name, getattr(steps, name)) for name in VERIFIERS if hasattr(steps, name)]
        DataFrame.collect = self._timed(DataFrame.collect, None)
        for owner, name, fn in saved[1:]:
            setattr(owner, name, self._timed(fn, "verify"))
        try:
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)

    def _timed(self, fn, step):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.depth:  # nested in a timed call: counted there
                return fn(*args, **kwargs)
            name = step or self._step()
            self.depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.seconds[name] += time.perf_counter() - started
        return timed

    @staticmethod
    def _step() -> str:
        for frame in reversed(traceback.extract_stack()):
            if frame.name in STEPS and "/etl/" in frame.filename.replace(os.sep, "/"):
                return STEPS[frame.name]
        return "other"


def spark_baselines(spark, csv_dir: str, scratch: str, key: str) -> dict:
    """The plain Spark conversions, as callables."""
    def typed_sorted():
        df = spark.read.option("header", "true").option("inferSchema", "true").csv(csv_dir)
        df.orderBy(key).write.mode("overwrite").parquet(os.path.join(scratch, "typed_sorted"))

    def strings():
        spark.read.option("header", "true").csv(csv_dir).write.mode("overwrite").parquet(
            os.path.join(scratch, "strings"))
    return {"spark_typed_sorted": typed_sorted, "spark_strings": strings}


def measure_size(spark, rows: int, repeats: int, master: str) -> dict:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from ringtrain.config import load_config
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore

    root = os.path.join(DATA, f"etl-{rows}")
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/raw", f"demo.rows={rows}", f"spark.master={master}"])
    csv_path = write_churn_csv(cfg.etl.source.path, rows, cfg.demo.seed)
    scratch = os.path.join(root, "baseline")
    os.makedirs(scratch, exist_ok=True)
    datasets = RunStore.create(root).dataset(cfg.etl.dataset)
    steps: list[dict] = []
    summary = {}

    def etl():
        clock = StepClock()
        started = time.perf_counter()
        with clock.installed():
            summary.update(run_etl(spark, cfg.etl, datasets, force=True))
        total = time.perf_counter() - started
        clock.seconds["other"] += total - sum(clock.seconds.values())
        steps.append({k: round(v, 3) for k, v in clock.seconds.items()})
        for old in datasets.versions()[:-1]:  # keep the disk bounded; only the newest is LATEST
            shutil.rmtree(os.path.join(datasets.root, old), ignore_errors=True)

    def pyarrow_convert():
        pq.write_table(pacsv.read_csv(csv_path), os.path.join(scratch, "converted.parquet"), compression="snappy")

    runs = {**spark_baselines(spark, cfg.etl.source.path, scratch, cfg.etl.split.key),
            "pyarrow_csv_to_parquet": pyarrow_convert, "etl": etl}
    times = {name: [] for name in runs}
    try:
        for name, fn in runs.items():  # warm-up: JIT, class loading, first Python workers
            fn()
        steps.clear()
        for _ in range(repeats):  # interleaved: drift on a noisy machine hits all alike
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    etl_s = median(times["etl"])
    result = {"rows": rows, "etl": {
        "seconds": round(etl_s, 3), "rows_per_s": round(rows / etl_s, 1), "runs_s": [round(x, 3) for x in times["etl"]],
        "rows_good": summary["rows_good"], "shards": summary["shards"], "balance_max_min": summary["balance_max_min"],
        "steps_s": {step: round(median([s.get(step, 0.0) for s in steps]), 3) for step in ETL_STEPS},
        "steps_per_run_s": steps}, "baselines": {}, "ratios": {}}
    for name in runs:
        if name == "etl":
            continue
        s = median(times[name])
        result["baselines"][name] = {"seconds": round(s, 3), "rows_per_s": round(rows / s, 1),
                                     "runs_s": [round(x, 3) for x in times[name]]}
        result["ratios"][name] = round(s / etl_s, 4)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    from ringtrain.config import SparkConfig
    from ringtrain.spark import get_spark, scratch_conf

    tmp = os.path.join(DATA, "spark")
    os.makedirs(tmp, exist_ok=True)
    started = time.perf_counter()
    # The demo's settings (8 shuffle partitions), UI off, Spark's scratch under bench/.data.
    spark = get_spark(SparkConfig(master=args.master, app_name="ringtrain-etl-bench",
                                  conf={**scratch_conf(tmp), "spark.sql.shuffle.partitions": "8",
                                        **settings(args.conf)}))
    spark_startup_s = time.perf_counter() - started
    spark.sparkContext.setLogLevel("ERROR")
    try:
        sizes = [measure_size(spark, rows, args.repeats, args.master) for rows in args.rows]
    finally:
        spark.stop()
    write_result(args.out, {"label": args.label, "conf": settings(args.conf), "repeats": args.repeats,
                            "master": args.master, "machine": info,
                            "spark_startup_s": round(spark_startup_s, 3), "sizes": sizes}, render_etl)


if __name__ == "__main__":
    main()
