"""ETL job: source -> validated, balanced Parquet shards, published atomically with a manifest.

    spark-submit --master local[2] jobs/etl_job.py --config conf/demo.yaml
    spark-submit --master yarn --deploy-mode client \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        --conf spark.pyspark.driver.python=$PWD/.venv/bin/python \
        jobs/etl_job.py --config conf/yarn.yaml [--partition 2026-11-22]
"""
from ringtrain.cli import add_common, exit_spark_submit, run

if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p)
    p.add_argument("--partition")
    p.add_argument("--force", action="store_true")
    exit_spark_submit(run("etl", p.parse_args()))
