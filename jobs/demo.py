"""Demo job: generate the embedded churn dataset, run the ETL, then train with 2 Horovod ranks.

    spark-submit --master local[2] jobs/demo.py --config conf/demo.yaml
"""
from ringtrain.jobs.cli import spark_submit_main

if __name__ == "__main__":
    spark_submit_main("demo", __doc__)
