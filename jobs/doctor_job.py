"""Doctor job: check driver, executors, store, slots and GPUs with the flags the real jobs will use.

Run it with the same spark-submit flags as jobs/train_job.py; it exits 0 when all is well, 2 with
the list of problems and their fixes:

    spark-submit --master yarn --deploy-mode client --num-executors 4 --executor-cores 1 \
        --archives ringtrain-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \
        --conf spark.pyspark.driver.python=$PWD/build/pack-env/bin/python \
        jobs/doctor_job.py --config conf/yarn.yaml
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("doctor", __doc__)
