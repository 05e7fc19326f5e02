"""Training job: N Spark barrier tasks form a Horovod (or DDP) ring and train on the latest dataset.

    spark-submit --master local[2] jobs/train_job.py --config conf/demo.yaml
    spark-submit --master yarn --deploy-mode client --num-executors 4 --executor-cores 1 \
        --conf spark.dynamicAllocation.enabled=false \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        --conf spark.pyspark.driver.python=$PWD/.venv/bin/python \
        jobs/train_job.py --config conf/yarn.yaml
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("train", __doc__)
