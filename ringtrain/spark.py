"""The one place that builds a SparkSession, so every door (CLI, spark-submit, tests) gets the same settings."""
from __future__ import annotations

import contextlib
import os
import sys

from pyspark.sql import SparkSession

from ringtrain.config import SparkConfig
from ringtrain.store import s3_env_from_hadoop


SESSION_DEFAULTS = {
    # Whole-stage codegen makes one Java method of the validation and the encoding of all columns together; it
    # is larger than the 8000 bytes of bytecode HotSpot's JIT compiles (DontCompileHugeMethods), so the JVM ran
    # it interpreted: the ETL's and predict's encoding took 10.6 s per 1M rows instead of 2.0 (BENCHMARKS.md,
    # "Batch scoring"). At 8000, the value Spark's documentation gives for HotSpot, Spark runs such a stage
    # without whole-stage codegen: each operator's own generated code, split into methods the JIT compiles.
    # A SQL setting, so it reaches every executor without JVM flags.
    "spark.sql.codegen.hugeMethodLimit": "8000",
    # Spark 4 cuts the Arrow batches it hands to Python workers (the ETL's shard writers, predict's scoring) at
    # 64 MiB as well as at spark.sql.execution.arrow.maxRecordsPerBatch rows (10,000), and checking the bytes made
    # the hand-off slow: the ETL of 5M rows took 29.7 s with it and 26.4 s without on local[2] (medians of 3, the
    # same shards; BENCHMARKS.md, "ETL: where the gap to plain Spark lives"). The row limit alone still bounds every
    # batch, as on Spark 3.5, which has no byte limit (there this setting does nothing).
    "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
}


def get_spark(cfg: SparkConfig, *, barrier_slots: int = 0) -> SparkSession:
    """Under spark-submit the master comes from the command line; the CLI falls back to cfg.master."""
    builder = SparkSession.builder.appName(cfg.app_name)
    # spark-submit starts the JVM first and hands Python its gateway; a master set here would override --master.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        master = cfg.master or f"local[{max(2, barrier_slots)}]"
        builder = builder.master(master)
        if master.startswith("local"):
            # Executors on this machine run this interpreter (the venv), not whatever `python3` is on PATH.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Barrier mode refuses dynamic allocation; training stages need a fixed set of executors.
        "spark.dynamicAllocation.enabled": "false",
        "spark.sql.adaptive.enabled": "true",
    }
    for key, value in {**defaults, **cfg.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    given = spark.sparkContext.getConf()
    for key, value in SESSION_DEFAULTS.items():  # unless the config, spark-submit or spark-defaults set them
        if key not in cfg.conf and not given.contains(key):
            spark.conf.set(key, value)
    export_store_settings(dict(spark.sparkContext.getConf().getAll()), spark.sparkContext.environment)
    return spark


def scratch_conf(folder: str) -> dict[str, str]:
    """Settings for a throwaway session (tests, benchmarks): no UI, and Spark's scratch folders under `folder`."""
    return {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.sql.warehouse.dir": os.path.join(folder, "warehouse"),
            "spark.local.dir": os.path.join(folder, "local"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder}"}


def export_store_settings(conf: dict[str, str], executor_env: dict | None = None) -> None:
    """Make `spark.hadoop.fs.s3a.*` settings (endpoint, keys) reach ringtrain's store on the driver and in the
    executors' Python workers, as AWS_* variables; variables already set win (they are the usual place)."""
    for name, value in s3_env_from_hadoop(conf).items():
        os.environ.setdefault(name, value)
        if executor_env is not None:
            executor_env.setdefault(name, os.environ[name])


@contextlib.contextmanager
def session_conf(spark: SparkSession, key: str, value: str):
    """`key` set to `value` in this session for the block, then restored (unset when it was not set)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
