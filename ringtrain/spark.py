"""The one place that builds a SparkSession, so every door (CLI, spark-submit, tests) gets the same settings."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from ringtrain.config import SparkConfig


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
    return builder.getOrCreate()


def scratch_conf(folder: str) -> dict[str, str]:
    """Settings for a throwaway session (tests, benchmarks): no UI, and Spark's scratch folders under `folder`."""
    return {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.sql.warehouse.dir": os.path.join(folder, "warehouse"),
            "spark.local.dir": os.path.join(folder, "local"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder}"}
