"""Shared by the training benchmarks: the machine, the dataset (built by the real ETL), results files.

Every benchmark script prints one JSON object (its result) and a markdown table, and writes the
JSON to bench/results/<name>.json. Datasets and scratch run folders go under bench/.data/
(gitignored).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "bench", ".data")
RESULTS = os.path.join(ROOT, "bench", "results")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def median(values) -> float:
    return float(statistics.median(values))


def machine() -> dict:
    """What the numbers were measured on, and how busy it was when the benchmark started."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for name in ("torch", "horovod", "pyarrow", "petastorm", "pyspark", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not importable here: leave it out
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "versions": versions,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def warn_if_busy(info: dict) -> None:
    load1 = info["loadavg_at_start"][0]
    if load1 > 0.5:
        print(f"WARNING: 1-minute load average is {load1} before the benchmark starts: other work is running, "
              f"the numbers will be skewed", file=sys.stderr)


def settings(pairs: list[str]) -> dict[str, str]:
    """--conf KEY=VALUE arguments as a dict of Spark settings."""
    out = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise SystemExit(f"--conf {pair}: give KEY=VALUE, e.g. spark.sql.codegen.hugeMethodLimit=65535")
        out[key] = value
    return out


def spark_session(cores: int = 2, conf: dict[str, str] | None = None):
    """A local[cores] session like the tests' (UI off, scratch dirs under bench/.data), plus `conf`."""
    from ringtrain.config import SparkConfig
    from ringtrain.spark import get_spark, scratch_conf
    tmp = os.path.join(DATA, "spark")
    os.makedirs(tmp, exist_ok=True)
    conf = {**scratch_conf(tmp), "spark.sql.shuffle.partitions": "8", **(conf or {})}
    session = get_spark(SparkConfig(master=f"local[{cores}]", app_name="ringtrain-bench", conf=conf))
    session.sparkContext.setLogLevel("ERROR")
    return session


def bench_config(root: str, rows: int, overrides: list[str] | None = None):
    """conf/demo.yaml (its columns, shards and model), with the store under `root`.

    Validation is excluded from the timings but still runs after every epoch, so the split gives it
    only 5% of the rows."""
    from ringtrain.config import load_config
    return load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                       [f"store.root={root}", f"etl.source.path={root}/raw", f"demo.rows={rows}",
                        "etl.split.train=0.9", "etl.split.val=0.05", "etl.split.test=0.05"] + list(overrides or []))


def build_dataset(spark, rows: int, seed: int = 7) -> tuple[object, str, dict]:
    """Generate the churn CSV and publish it with the real ETL, under bench/.data/train-<rows>.

    A later benchmark with the same rows reuses the version (the ETL is idempotent when the source
    and config are unchanged). Returns (config, dataset_dir, ETL summary)."""
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore
    root = os.path.join(DATA, f"train-{rows}")
    cfg = bench_config(root, rows)
    write_churn_csv(cfg.etl.source.path, rows, seed)
    summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
    etl = {"dataset_dir": summary["dataset_dir"], "reused": bool(summary.get("reused")),
           "split_rows": summary.get("split_rows"), "shards": summary.get("shards"),
           "seconds": summary.get("seconds")}
    return cfg, summary["dataset_dir"], etl


def start(rows: int):
    """What every training benchmark does first: quiet logs, record the machine (warning when it is
    busy), start a local[2] session and publish the dataset. Returns (machine, spark, cfg,
    dataset_dir, ETL summary); the caller stops the session."""
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    spark = spark_session(2)
    try:
        cfg, dataset_dir, etl = build_dataset(spark, rows)
    except BaseException:
        spark.stop()
        raise
    return info, spark, cfg, dataset_dir, etl


def write_result(name: str, result: dict, render) -> str:
    """Print the JSON and its markdown table (`render(result)`); write the JSON to bench/results/<name>.json."""
    result = {"benchmark": name, "finished_utc": datetime.datetime.now(datetime.timezone.utc)
              .strftime("%Y-%m-%dT%H:%M:%SZ"), **result}
    result.setdefault("machine", {})["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result))
    print()
    print(render(result))
    print(f"\n(written to {os.path.relpath(path, ROOT)})")
    return path


def quiet_logs() -> None:
    import logging
    import warnings
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("petastorm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
