"""ETL job: source -> validated, balanced Parquet shards, published atomically with a manifest.

    spark-submit --master local[2] jobs/etl_job.py --config conf/demo.yaml
    spark-submit --master yarn --deploy-mode client \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        --conf spark.pyspark.driver.python=$PWD/.venv/bin/python \
        jobs/etl_job.py --config conf/yarn.yaml [--partition 2026-11-22]
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("etl", __doc__)
