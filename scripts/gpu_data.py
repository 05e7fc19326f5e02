"""Publish the datasets the GPU tests and the GPU benchmark read, with the real ETL (needs Spark and Java).

A GPU machine often has neither, so the datasets are made here and carried there (README "GPU tests and
benchmarks without Spark"):

    .venv/bin/python scripts/gpu_data.py [--out build/gpu-data]      # or: make gpu-data

    <out>/demo/   the demo's dataset (conf/demo.yaml: 120,000 rows), for tests/test_gpu.py
    <out>/bench/  1,000,000 rows of the same schema, for bench/gpu_bench.py

Each is a store root: <root>/datasets/churn/LATEST names the published version. Every path inside a
published version is relative, so the folder can be copied anywhere.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = {
    "demo": ["demo.rows=120000"],
    # Bigger row groups: the benchmark reads batches of 4096-8192 rows.
    "bench": ["demo.rows=1000000", "etl.shards.rows_per_shard=250000", "etl.shards.row_group_rows=16384"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "gpu-data"))
    args = parser.parse_args(argv)
    from ringtrain.config import load_config
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.layout import RunStore
    from ringtrain.spark import get_spark
    spark = None
    try:
        for name, overrides in DATASETS.items():
            root = os.path.abspath(os.path.join(args.out, name))
            cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                              [f"store.root={root}", f"etl.source.path={root}/raw", *overrides])
            spark = spark or get_spark(cfg.spark)
            write_churn_csv(cfg.etl.source.path, cfg.demo.rows, cfg.demo.seed)
            summary = run_etl(spark, cfg.etl, RunStore.create(root).dataset(cfg.etl.dataset))
            print(f"{name}: {summary['dataset_dir']}")
            # The raw CSV is not needed where the dataset goes (and would double what travels).
            for leftover in os.listdir(cfg.etl.source.path):
                os.remove(os.path.join(cfg.etl.source.path, leftover))
    finally:
        if spark is not None:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
