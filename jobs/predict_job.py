"""Predict job: score rows on the executors with a registered model (encoded as in training).

    spark-submit --master local[2] jobs/predict_job.py --config conf/retrain.yaml \
        --model champion --input runs/retrain/raw/dt=2026-11-23 --output runs/retrain/scores/2026-11-23 \
        [--partition VALUE] [--keep COL ...]
    spark-submit --master yarn --num-executors 8 --conf spark.task.resource.gpu.amount=1 \
        --conf spark.executor.resource.gpu.amount=1 --conf spark.executor.resource.gpu.discoveryScript=gpus.sh \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        jobs/predict_job.py --config conf/retrain.yaml --model champion --input hdfs:///data/in --output /shared/scores
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("predict", __doc__)
