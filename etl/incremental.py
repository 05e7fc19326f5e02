"""Incremental mode: every run adds (or replaces) one source partition as a new dataset version.

    ringtrain etl --config conf/incremental.yaml --partition 2026-11-22

- The first partition into an empty dataset makes the base version and fits the feature statistics and
  vocabularies (train split only). They are frozen: every later partition is encoded with the base's
  `features.json` (a category never seen in the base goes to the unknown bucket), so the shards already
  published never need rewriting.
- A new version = the previous version's shards + the new partition's shards (balanced within the
  partition, their count a multiple of max_world_size). On POSIX the previous shards are hard-linked
  into the staging folder (copied where linking fails); on object stores and HDFS the new manifest
  references them where they are (no byte is copied). Shard files are named
  `part-<partition tag>-NNNNN.parquet`, so partitions never collide. The manifest lists the partitions (name, identity, rows per split, quarantine, shards) and
  the totals per split, in the same `splits` layout as a full version: readers need nothing new.
- The split of a row is a hash of its key (as in full mode), and the row order across a partition's
  shards is seeded with etl.seed + the partition name: the same input gives byte-identical shards,
  whether the partition was built first, later, or rebuilt.
- A partition that the latest version holds with the same source fingerprint and config is reused (no
  new version). --force, or a changed source or config, rebuilds it into a new version in which only its
  shards are replaced.
- A change of what the frozen features depend on (columns, label, split, feature settings,
  max_world_size) is refused: incremental runs cannot re-encode published partitions.

Publishing is as in full mode: staging -> verify -> manifest last -> rename -> LATEST. A published
version is never modified (hard links share bytes that nobody writes again).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time

from pyspark.sql import SparkSession

from ringtrain.etl.features import FeatureStats
from ringtrain.etl.manifest import version_manifest
from ringtrain.manifest import (
    SPLITS, Identity, IncrementalManifest, Manifest, Partition, Quarantine, Split, load_manifest,
)
from ringtrain.etl.steps import (
    CACHE_LEVEL, balance, config_hash, count_rows, input_files, publish_version, read_tasks_in_whole_rounds,
    source_fingerprint, staging_area, summary, validated, write_splits,
)
from ringtrain.etl.sources import read_source
from ringtrain.config import EtlConfig
from ringtrain.layout import DatasetStore
from ringtrain.publish import atomic_write_json
from ringtrain.schema import ConfigError, to_dict
from ringtrain.store import join, list_files, read_json, share_or_copy

log = logging.getLogger("ringtrain.etl")

FEATURES = "features.json"
_GLOB = set("*?[]{},")


def partition_tag(partition: str) -> str:
    """A file-name-safe, collision-free name for a partition: readable part + 8 hex of its sha256."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", partition)[:48]
    return f"{readable}-{hashlib.sha256(partition.encode()).hexdigest()[:8]}"


def partition_seed(seed: int, partition: str) -> int:
    """The shuffle seed of one partition: a pure function of etl.seed and the partition name."""
    return int(hashlib.sha256(f"{seed}\0{partition}".encode()).hexdigest()[:7], 16)


def frozen_settings(cfg: EtlConfig) -> dict:
    """What the base's features and the published shards depend on: it may not change between partitions."""
    return {
        "etl.columns": to_dict(cfg.columns),
        # Only when set, so that datasets built before etl.derived existed stay compatible.
        **({"etl.derived": to_dict(cfg.derived)} if cfg.derived else {}),
        "etl.label": to_dict(cfg.label),
        "etl.split": to_dict(cfg.split),
        "etl.min_category_count": cfg.min_category_count,
        "etl.default_hash_buckets": cfg.default_hash_buckets,
        "etl.shards.max_world_size": cfg.shards.max_world_size,
    }


def check_partition(partition: str | None) -> None:
    """The --partition an incremental run needs: one plain value (a usage error, raised before Spark is used)."""
    if partition is None:
        raise ConfigError("etl.mode is incremental: pass --partition VALUE, the source partition to add "
                          "(it replaces {partition} in etl.source.path), e.g. --partition 2026-11-22")
    if not partition or _GLOB & set(partition):
        raise ConfigError(f"--partition {partition!r}: in incremental mode a partition is one plain, non-empty "
                          f"value (no glob characters *?[]{{}},); to read many partitions at once, rebuild in "
                          f"full mode (--set etl.mode=full)")


def run_incremental(spark: SparkSession, cfg: EtlConfig, datasets: DatasetStore, partition: str | None,
                    force: bool = False) -> dict:
    started = time.time()
    check_partition(partition)
    datasets.clean_stale_staging()
    latest = datasets.latest()
    previous = load_manifest(latest) if latest else None
    frozen = frozen_settings(cfg)
    if previous is not None:
        _check_compatible(cfg, previous, frozen, latest)
    raw = read_source(spark, cfg.source, cfg.source_columns(), partition)
    checked = validated(raw, cfg)  # lazy; a derived expression that does not fit the source fails here
    files = input_files(spark, raw)
    identity = Identity(source=source_fingerprint(raw, files), config=config_hash(cfg), partition=partition)
    entries = list(previous.partitions) if previous else []
    old = next((p for p in entries if p.name == partition), None)
    if old is not None and old.identity == identity and not force:
        log.info("partition %s unchanged in %s: reusing it", partition, latest)
        return {**summary(latest, previous, started), **_partition_summary(previous, partition), "reused": True}
    if old is not None:
        log.info("partition %s: rebuilding it (%s)", partition,
                 "forced" if force else "source or config changed")

    seed = partition_seed(cfg.seed, partition)
    checked = checked.persist(CACHE_LEVEL)
    try:
        with read_tasks_in_whole_rounds(spark, files):  # the first pass fills the cache
            counts = count_rows(checked, cfg, seed, f" of partition {partition!r}")
        with staging_area(datasets) as staging:
            stats, features_path = None, datasets.version_relative(staging, FEATURES)
            if previous is not None:
                features_path = previous.features.path
                stats = _frozen_stats(join(latest, features_path), cfg)
                if datasets.renames:  # elsewhere the manifest references the shards and features where they are
                    share_or_copy(join(latest, features_path), join(staging, FEATURES))
                    for entry in entries:
                        if entry.name != partition:
                            _carry_over(latest, staging, entry)
            tag = partition_tag(partition)
            quarantine = f"quarantine/{tag}"
            stats_used, splits = write_splits(cfg, checked, staging, counts, seed=seed, prefix=f"part-{tag}",
                                              quarantine=quarantine, stats=stats,
                                              shard_dir=datasets.shard_dir(staging))
            reasons = counts.reasons  # with any unseen classes write_splits quarantined
            if previous is None:  # the base: its features are frozen from now on
                atomic_write_json(join(staging, FEATURES), stats_used.to_json())
            entry = Partition(
                name=partition, tag=tag, identity=identity, seed=seed,
                created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                rows_read=counts.rows_read, rows_good=counts.rows_good,
                quarantine=Quarantine(path=datasets.version_relative(staging, quarantine) if reasons else None,
                                      counts=dict(sorted(reasons.items()))),
                splits=splits, balance_max_min=balance(splits["train"].shards),
            )
            if old is not None:
                entries[entries.index(old)] = entry  # replaced in place: partition order stays
            else:
                entries.append(entry)
            manifest = _manifest(cfg, previous, latest, entries, stats_used, frozen, identity, features_path)
            final = publish_version(datasets, staging, manifest,
                                    based_on=os.path.basename(latest) if latest else None, check_base=True)
    finally:
        checked.unpersist()
    return {**summary(final, manifest, started), **_partition_summary(manifest, partition), "reused": False}


def _check_compatible(cfg: EtlConfig, previous: Manifest, frozen: dict, latest: str) -> None:
    version = os.path.basename(latest)
    if not isinstance(previous, IncrementalManifest):
        raise ConfigError(
            f"etl.mode is incremental, but {version}, the latest version of dataset {cfg.dataset!r}, was built in "
            f"full mode, and incremental versions must grow from an empty dataset: set etl.dataset to a new "
            f"name, or keep etl.mode=full")
    for key in sorted(set(frozen) | set(previous.frozen)):
        value = frozen.get(key)
        if previous.frozen.get(key) != value:
            raise ConfigError(
                f"{key} differs from the setting that dataset {cfg.dataset!r} was built with (frozen since its "
                f"base version, latest {version}: {previous.frozen.get(key)!r}); published partitions cannot be "
                f"re-encoded incrementally. Rebuild in full: --set etl.mode=full (e.g. with --partition '*' to "
                f"read every partition), or start a new dataset (etl.dataset=<new name>) in incremental mode")


def _frozen_stats(path: str, cfg: EtlConfig) -> FeatureStats:
    """The base's statistics, in the column order of etl.columns (features.json is stored with sorted
    keys), so that new shards have the same column order, hence the same schema, as the base's."""
    stats = FeatureStats.from_json(read_json(path))
    order = {c.name: i for i, c in enumerate(cfg.columns)}
    for name in ("numeric", "categorical", "hashed", "arrays"):
        setattr(stats, name, dict(sorted(getattr(stats, name).items(), key=lambda kv: order[kv[0]])))
    return stats


def _carry_over(latest: str, staging: str, entry: Partition) -> None:
    """POSIX: bring one partition of the previous version into staging, unchanged (hard links)."""
    for split, info in entry.splits.items():
        for shard in info.shards:
            share_or_copy(join(latest, split, shard.file), join(staging, split, shard.file))
    q = entry.quarantine.path
    if q:
        for rel in list_files(join(latest, q)):
            share_or_copy(join(latest, q, rel), join(staging, q, rel))


def _manifest(cfg: EtlConfig, previous: IncrementalManifest | None, latest: str | None, entries: list[Partition],
              stats: FeatureStats, frozen: dict, identity: Identity, features_path: str) -> IncrementalManifest:
    splits = {s: Split(rows=sum(e.splits[s].rows for e in entries),
                       shards=[shard for e in entries for shard in e.splits[s].shards]) for s in SPLITS}
    counts: dict[str, int] = {}
    quarantines = [e.quarantine.path for e in entries if e.quarantine.path]
    for e in entries:
        for reason, n in e.quarantine.counts.items():
            counts[reason] = counts.get(reason, 0) + n
    return version_manifest(
        cfg, identity=identity,  # identity: of the partition this version added or rebuilt
        stats=stats, features_path=features_path,
        rows_read=sum(e.rows_read for e in entries), rows_good=sum(e.rows_good for e in entries),
        # Each partition's quarantine is at its own path (partitions[].quarantine.path); one folder holds
        # them all only where they were carried into the version (POSIX).
        quarantine=Quarantine(path="quarantine" if quarantines and all(q.startswith("quarantine/") for q in quarantines)
                              else None, counts=dict(sorted(counts.items()))),
        splits=splits,
        # Shards are balanced within each partition (and every partition has a multiple of max_world_size
        # shards, so whole-shard reading gives every rank the same rows): the worst partition's ratio.
        balance_max_min=max(e.balance_max_min for e in entries),
        features_fitted_on=previous.features_fitted_on if previous else identity.partition,
        previous_version=os.path.basename(latest) if latest else None,
        frozen=frozen, partitions=entries)


def _partition_summary(manifest: IncrementalManifest, partition: str) -> dict:
    entry = next(p for p in manifest.partitions if p.name == partition)
    return {"partition": partition, "partitions": [p.name for p in manifest.partitions],
            "partition_rows": {s: entry.splits[s].rows for s in SPLITS}}
