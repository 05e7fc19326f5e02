"""Retrain job, one date (or a backfill) per run: ETL of the date, challenger, evaluation, promotion gate.

    spark-submit --master local[2] jobs/retrain_job.py --config conf/retrain.yaml --date 2026-11-22
    spark-submit --master yarn --deploy-mode client --num-executors 2 --executor-cores 1 \
        --conf spark.dynamicAllocation.enabled=false \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        jobs/retrain_job.py --config conf/retrain.yaml --from 2026-11-01 --to 2026-11-22

Exit codes: 0 done (promoted, champion kept, or already done), 75 locked by another retrain (retry
later), 2 bad input or config, 1 failure.
"""
from ringtrain.cli import add_common, add_retrain_args, exit_spark_submit, run

if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p)
    add_retrain_args(p)
    exit_spark_submit(run("retrain", p.parse_args()))
