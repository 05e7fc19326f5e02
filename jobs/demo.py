"""Demo job: generate the embedded churn dataset, run the ETL, then train with 2 Horovod ranks.

    spark-submit --master local[2] jobs/demo.py --config conf/demo.yaml
"""
from ringtrain.cli import add_common, exit_spark_submit, run

if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(p)
    exit_spark_submit(run("demo", p.parse_args()))
