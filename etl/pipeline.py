"""The ETL job: extract -> validate -> split -> features -> balanced shards -> verify -> publish. A full run here;
an incremental one (one partition) in `etl.incremental`; the steps both share in `etl.steps`."""
from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession

from ringtrain.config import EtlConfig
from ringtrain.etl.incremental import check_partition, run_incremental
from ringtrain.etl.manifest import version_manifest
from ringtrain.etl.sources import read_source
from ringtrain.etl.steps import (
    CACHE_LEVEL, RowCounts, balance, config_hash, count_rows, input_files, null_on_failure, publish_version,
    read_tasks_in_whole_rounds, source_fingerprint, staging_area, summary, uncompressed_cache, validated,
    write_splits,
)
from ringtrain.layout import DatasetStore
from ringtrain.manifest import Identity, Manifest, Quarantine, load_manifest
from ringtrain.publish import atomic_write_json
from ringtrain.store import join

log = logging.getLogger("ringtrain.etl")


def run_etl(spark: SparkSession, cfg: EtlConfig, datasets: DatasetStore, partition: str | None = None,
            force: bool = False) -> dict:
    """Publish a new dataset version; with an unchanged source and config, return the latest one (idempotent).

    etl.mode incremental: add (or replace) one partition, keeping the other partitions' shards (see
    `etl.incremental`).
    """
    if cfg.mode == "incremental":
        check_partition(partition)  # a usage error: before Spark is touched
        with null_on_failure(spark), uncompressed_cache(spark):
            return run_incremental(spark, cfg, datasets, partition, force)
    with null_on_failure(spark), uncompressed_cache(spark):
        return _run_full(spark, cfg, datasets, partition, force)


def _run_full(spark: SparkSession, cfg: EtlConfig, datasets: DatasetStore, partition: str | None,
              force: bool) -> dict:
    started = time.time()
    datasets.clean_stale_staging()
    raw = read_source(spark, cfg.source, cfg.source_columns(), partition)
    checked = validated(raw, cfg)  # lazy; a derived expression that does not fit the source fails here
    files = input_files(spark, raw)
    identity = Identity(source=source_fingerprint(raw, files), config=config_hash(cfg), partition=partition)
    latest = datasets.latest()
    if latest and not force:
        manifest = load_manifest(latest)
        if manifest.identity == identity:
            log.info("source and config unchanged since %s: reusing it", latest)
            return {**summary(latest, manifest, started), "reused": True}
    checked = checked.persist(CACHE_LEVEL)
    try:
        with read_tasks_in_whole_rounds(spark, files):  # the first pass fills the cache
            counts = count_rows(checked, cfg, cfg.seed)
        with staging_area(datasets) as staging:
            manifest = _write_version(cfg, checked, datasets, staging, counts, identity)
            final = publish_version(datasets, staging, manifest)
    finally:
        checked.unpersist()
    return {**summary(final, manifest, started), "reused": False}


def _write_version(cfg: EtlConfig, checked: DataFrame, datasets: DatasetStore, staging: str, counts: RowCounts,
                   identity: Identity) -> Manifest:
    stats, splits = write_splits(cfg, checked, staging, counts, seed=cfg.seed,
                                 shard_dir=datasets.shard_dir(staging))
    reasons = counts.reasons  # with any unseen classes write_splits quarantined
    atomic_write_json(join(staging, "features.json"), stats.to_json())
    return version_manifest(
        cfg, identity=identity, stats=stats,
        features_path=datasets.version_relative(staging, "features.json"),
        rows_read=counts.rows_read, rows_good=counts.rows_good,
        quarantine=Quarantine(path=datasets.version_relative(staging, "quarantine") if reasons else None,
                              counts=dict(sorted(reasons.items()))),
        splits=splits, balance_max_min=balance(splits["train"].shards))
