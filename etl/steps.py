"""The ETL's steps, shared by a full run (`etl.pipeline`) and an incremental one (`etl.incremental`): Spark session
settings for the ETL's queries, validation, the first pass that counts rows, writing the splits' shards into a
staging folder, and publishing it; and the source's identity (its files and their fingerprint)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ringtrain.config import EtlConfig
from ringtrain.errors import BadDataError
from ringtrain.etl.features import (
    SPLIT, FeatureStats, apply_features, assign_split, fit_features, known_label, split_of,
)
from ringtrain.etl.manifest import check_staged
from ringtrain.etl.shards import (
    BUCKET_COUNT, ShardPlan, number_rows, order_bucket, shard_count, shuffle_order, write_quarantine, write_shards,
)
from ringtrain.etl.sources import CORRUPT
from ringtrain.etl.validate import REASON, parse_and_validate
from ringtrain.layout import DatasetStore
from ringtrain.manifest import SPLITS, Manifest, Shard, Split
from ringtrain.schema import to_dict
from ringtrain.spark import session_conf
from ringtrain.store import join, rmtree


@contextlib.contextmanager
def null_on_failure(spark: SparkSession):
    """ANSI mode off for the ETL's queries, restored after. Validation and etl.derived rely on a value that does
    not cast (or an expression that fails, e.g. a division by zero) giving null, so that the row is quarantined
    with its reason. Spark 4 turns ANSI mode on by default, under which they raise and fail the whole job."""
    with session_conf(spark, "spark.sql.ansi.enabled", "false"):
        yield


# Where the ETL keeps its validated rows between passes. Not in the JVM's heap: a task's partition is cached whole
# (PySpark's levels are serialized), and at 20M rows on local[2] (1 GiB heap) two tasks building theirs next to
# the blocks already held ran it out of memory (java.lang.OutOfMemoryError, the JVM gone) with MEMORY_AND_DISK.
# On local disk the heap holds one batch at a time, the OS page cache keeps the bytes when it has room, and the
# ETL was no slower: 17.2/18.1 s against 17.9/19.1 s at 1M rows, 40.9/40.8 against 42.6 s at 5M (BENCHMARKS.md,
# "Rows"). The shards are the same bytes.
CACHE_LEVEL = StorageLevel.DISK_ONLY


@contextlib.contextmanager
def uncompressed_cache(spark: SparkSession):
    """The validated rows, which the ETL caches for its later passes, cached without compression, restored
    after. Compressing them was the largest part of the first pass on local[2]: that pass took 2.4 s instead
    of 1.9 s at 1M rows, 13.4 s instead of 10.3 s at 5M (the later passes read the cache about as fast
    either way). The cost: more bytes on local disk (CACHE_LEVEL), which the page cache mostly keeps."""
    with session_conf(spark, "spark.sql.inMemoryColumnarStorage.compressed", "false"):
        yield


@contextlib.contextmanager
def staging_area(datasets: DatasetStore):
    """A fresh staging folder, removed if anything fails before it is published."""
    staging = datasets.staging_dir()
    try:
        yield staging
    except BaseException:
        rmtree(staging)
        raise


def publish_version(datasets: DatasetStore, staging: str, manifest: Manifest, **publish_args) -> str:
    """Check the staged files against the manifest (`check_staged`), then publish: the manifest is written
    last (its presence makes a version), see `DatasetStore.publish`."""
    check_staged(staging, manifest, root=datasets.root)
    data = json.dumps(to_dict(manifest), indent=2, sort_keys=True).encode()
    return datasets.publish(staging, data, **publish_args)


def validated(raw: DataFrame, cfg: EtlConfig) -> DataFrame:
    raw_strings = cfg.source.format in ("csv", "json")
    return parse_and_validate(raw, cfg.columns, cfg.label, raw_strings=raw_strings, key=cfg.split.key,
                              derived=cfg.derived)


@dataclass
class RowCounts:
    """What the first pass over the validated rows counts, in one aggregate: bad rows by reason, and good
    rows per split and bucket of the shuffled order (the offsets that number the rows, see `ShardPlan`)."""
    reasons: dict[str, int]
    rows_read: int
    bucket_rows: dict[str, list[int]]

    @property
    def rows_good(self) -> int:
        return sum(sum(rows) for rows in self.bucket_rows.values())


def count_rows(checked: DataFrame, cfg: EtlConfig, seed: int, where: str = "") -> RowCounts:
    """Count the validated rows (one pass, which also fills the cache of `checked`); BadDataError over
    etl.max_bad_fraction. `seed`: the shuffle seed that the rows will be written with."""
    bucket = order_bucket(shuffle_order(cfg.split.key, seed))
    grouped = checked.groupBy(F.col(REASON).alias("reason"), split_of(cfg.split).alias("split"),
                              bucket.alias("bucket")).count().collect()
    reasons: dict[str, int] = {}
    bucket_rows = {s: [0] * BUCKET_COUNT for s in SPLITS}
    for r in grouped:
        if r["reason"] is None:
            bucket_rows[r["split"]][r["bucket"]] += r["count"]
        else:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + r["count"]
    counts = RowCounts(reasons=reasons, rows_read=sum(r["count"] for r in grouped), bucket_rows=bucket_rows)
    rows_bad = counts.rows_read - counts.rows_good
    if counts.rows_read == 0:
        raise BadDataError(f"the source{where} has no rows; check etl.source.path (and the partition)")
    bad_fraction = rows_bad / counts.rows_read
    if bad_fraction > cfg.max_bad_fraction:
        raise BadDataError(
            f"{rows_bad} of {counts.rows_read} rows{where} ({bad_fraction:.2%}) failed validation, over "
            f"etl.max_bad_fraction={cfg.max_bad_fraction}; nothing was published. Reasons: "
            f"{json.dumps(dict(sorted(reasons.items())))}. Fix the source, or raise the threshold.")
    return counts


def summary(final: str, manifest: Manifest, started: float) -> dict:
    """What `run_etl` returns (and `ringtrain etl` prints) for the version `final`."""
    splits = manifest.splits
    return {
        "dataset_dir": final, "version": os.path.basename(final), "rows_read": manifest.rows_read,
        "rows_good": manifest.rows_good, "quarantined": manifest.quarantine.counts,
        "split_rows": {s: splits[s].rows for s in SPLITS},
        "shards": {s: len(splits[s].shards) for s in SPLITS},
        "balance_max_min": manifest.balance_max_min, "seconds": round(time.time() - started, 1),
    }


def config_hash(cfg: EtlConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def write_splits(cfg: EtlConfig, checked: DataFrame, staging: str, counts: RowCounts, *, seed: int,
                 prefix: str = "part", quarantine: str = "quarantine", stats: FeatureStats | None = None,
                 shard_dir: str | None = None) -> tuple[FeatureStats, dict[str, Split]]:
    """Quarantine, split, encode and shard the validated rows into `staging`.

    Features are fitted on the train split unless `stats` (frozen ones) are given. Shards are named
    <split>/<prefix>-NNNNN.parquet, rows are ordered across them by a hash seeded with `seed` (the seed
    `counts` were taken with). Unseen classes join `counts.reasons`.
    `shard_dir` (stores without rename): the staging folder relative to the dataset root, recorded with
    each shard so that the manifest references it (`DatasetStore.shard_dir`).
    """
    if counts.reasons:  # keep the bad rows, with their reason, for people to look at
        write_quarantine(checked.where(F.col(REASON).isNotNull()), join(staging, quarantine))
    good = assign_split(checked.where(F.col(REASON).isNull()).drop(REASON, CORRUPT), cfg.split)
    if stats is None:
        stats = fit_features(good.where(F.col(SPLIT) == "train"), cfg)
    kept = _quarantine_unseen_classes(good, stats, join(staging, quarantine), counts, seed)
    plan = ShardPlan(splits=SPLITS, bucket_rows=counts.bucket_rows, row_group_rows=cfg.shards.row_group_rows,
                     shards={s: shard_count(sum(counts.bucket_rows[s]), cfg.shards.rows_per_shard,
                                            cfg.shards.num_shards, cfg.shards.max_world_size) for s in SPLITS})
    numbered = number_rows(apply_features(kept, stats), plan, SPLIT, stats.key, seed)
    written = write_shards(numbered, plan, {s: join(staging, s) for s in SPLITS}, split_column=SPLIT,
                           key=stats.key, prefix=prefix)
    splits = {}
    for split in SPLITS:
        shards = [replace(s, dir=shard_dir) for s in written[split]]
        splits[split] = Split(rows=plan.rows(split), shards=shards)
    return stats, splits


def _quarantine_unseen_classes(good: DataFrame, stats: FeatureStats, quarantine: str, counts: RowCounts,
                               seed: int) -> DataFrame:
    """Multiclass with classes fitted on the train split: a val/test row (or a later partition's row) of a
    class the train split never had cannot be encoded; it joins the quarantine as `unseen_label` (counted
    into `counts.reasons`, and out of its split's bucket counts). Listed classes were already checked by
    validation (`bad_label`)."""
    if stats.task != "multiclass":
        return good
    unseen = good.where(~known_label(stats))
    bucket = order_bucket(shuffle_order(stats.key, seed))
    found = unseen.groupBy(F.col(SPLIT).alias("split"), bucket.alias("bucket")).count().collect()
    if found:
        columns = [c for c in good.columns if c != SPLIT]
        write_quarantine(unseen.select(*columns, F.lit(None).cast("string").alias(CORRUPT),
                                       F.lit("unseen_label").alias(REASON)), quarantine, prefix="unseen")
        for r in found:
            counts.bucket_rows[r["split"]][r["bucket"]] -= r["count"]
        counts.reasons["unseen_label"] = counts.reasons.get("unseen_label", 0) + sum(r["count"] for r in found)
    return good.where(known_label(stats))


def balance(shards: list[Shard]) -> float:
    sizes = [s.rows for s in shards]
    return round(max(sizes) / max(1, min(sizes)), 4)


def input_files(spark: SparkSession, raw: DataFrame) -> list[tuple[str, int, int]]:
    """(path, bytes, modification time) of each input file, sorted by path; empty for a table."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    files = []
    for name in sorted(raw.inputFiles()):
        path = jvm.org.apache.hadoop.fs.Path(name)
        status = path.getFileSystem(conf).getFileStatus(path)
        files.append((name, status.getLen(), status.getModificationTime()))
    return files


def source_fingerprint(raw: DataFrame, files: list[tuple[str, int, int]]) -> str:
    """sha256 over the input files' paths, sizes and modification times (or the table's plan)."""
    if not files:
        # Without expression ids (#123), which differ on every read of the same table.
        plan = re.sub(r"#\d+", "#", raw._jdf.queryExecution().analyzed().toString())
        return hashlib.sha256(plan.encode()).hexdigest()
    digest = hashlib.sha256()
    for name, size, modified in files:
        digest.update(f"{name}\t{size}\t{modified}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def read_tasks_in_whole_rounds(spark: SparkSession, files: list[tuple[str, int, int]]):
    """Split the input files into a multiple of the cores' worth of read tasks (each at most
    spark.sql.files.maxPartitionBytes, as Spark would), for the block. Spark cuts a 320 MB file into 128 MB
    splits: 3 tasks on 2 cores, the last running alone while the other core idles, in the first pass over
    the source (the ETL's longest) and in every pass over its cache, which keeps those partitions. 4 tasks of
    80 MB keep both cores busy. The scan reads the setting when it first runs: keep the block around the
    first action."""
    if not files:  # a table: its own partitioning
        yield
        return
    limit = spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes()
    cores = max(1, spark.sparkContext.defaultParallelism)
    total = max(1, sum(size for _, size, _ in files))
    tasks = cores * math.ceil(total / (cores * limit))
    with session_conf(spark, "spark.sql.files.maxPartitionBytes", str(math.ceil(total / tasks))):
        yield
