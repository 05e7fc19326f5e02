"""Retrain job, one date (or a backfill) per run: ETL of the date, challenger, evaluation, promotion gate.

    spark-submit --master local[2] jobs/retrain_job.py --config conf/retrain.yaml --date 2026-11-22
    spark-submit --master yarn --deploy-mode client --num-executors 2 --executor-cores 1 \
        --conf spark.dynamicAllocation.enabled=false \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        jobs/retrain_job.py --config conf/retrain.yaml --from 2026-11-01 --to 2026-11-22

Exit codes: 0 done (promoted, champion kept, or already done), 75 locked by another retrain (retry
later), 2 bad input or config, 1 failure.
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("retrain", __doc__)
