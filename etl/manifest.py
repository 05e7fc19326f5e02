"""The manifest of a dataset version as both ETL modes write it, and the check of a staged version against it
before publishing (the contract itself is `ringtrain.manifest`, which training reads without importing the ETL)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ringtrain.config import EtlConfig
from ringtrain.manifest import (
    FORMAT_VERSION, DatasetError, Features, Identity, IncrementalManifest, IncrementalSource, Manifest, Quarantine,
    Schema, SchemaColumn, Source, Split, shard_paths,
)
from ringtrain.store import open_input

if TYPE_CHECKING:
    from ringtrain.etl.features import FeatureStats


def version_manifest(cfg: EtlConfig, *, identity: Identity, stats: FeatureStats, features_path: str,
                     rows_read: int, rows_good: int, quarantine: Quarantine, splits: dict[str, Split],
                     balance_max_min: float, **incremental) -> Manifest:
    """The manifest of a version, for the full and the incremental ETL.

    `identity`: what makes the version (its source fingerprint and partition); `features_path`: features.json,
    relative to the version folder; `splits`: per split its rows and shard entries; `incremental`: the fields
    only an incremental version records (`IncrementalManifest`'s own: its partitions, the version it extends,
    the frozen features); without them, a full version."""
    fields = dict(
        format_version=FORMAT_VERSION, dataset=cfg.dataset,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        identity=identity, partition=identity.partition,
        schema=Schema(columns=[SchemaColumn(name=c.name, type=c.type, role=c.role, nullable=c.nullable)
                               for c in cfg.columns]),
        features=features_entry(stats, features_path), rows_read=rows_read, rows_good=rows_good,
        quarantine=quarantine, splits=splits, row_group_rows=cfg.shards.row_group_rows,
        max_world_size=cfg.shards.max_world_size, balance_max_min=balance_max_min)
    source = dict(format=cfg.source.format, path=cfg.source.path, table=cfg.source.table,
                  fingerprint=identity.source)
    if incremental:
        return IncrementalManifest(
            mode="incremental", source=IncrementalSource(**source, partition_column=cfg.source.partition_column),
            **fields, **incremental)
    return Manifest(mode="full", source=Source(**source), **fields)


def features_entry(stats: FeatureStats, path: str) -> Features:
    """`path`: features.json, relative to the version folder."""
    return Features(path=path, numeric_columns=stats.numeric_columns(),
                    categorical_cardinalities=stats.categorical_cardinalities(), arrays=stats.arrays,
                    label="label", key=stats.key, task=stats.task, label_values=stats.label_values,
                    label_stats=stats.label_stats)


def check_staged(folder: str, manifest: Manifest, *, root: str | None = None) -> None:
    """Every shard the manifest lists exists with its recorded size, and each split's shards hold its rows.

    One metadata look-up per shard, no byte read: the shards this ETL wrote were checked by the tasks that
    wrote them (footers read back, checksums taken as the bytes went out; see `shards.check_written`).
    This catches a shard carried over from the previous version (incremental mode) that went missing or
    changed size. `root`: see `shard_paths`."""
    for split, info in manifest.splits.items():
        for shard, path in zip(info.shards, shard_paths(folder, manifest, split, root=root)):
            try:
                with open_input(path) as f:
                    size = f.size()
            except OSError as exc:  # missing (pyarrow's message says so on every store)
                raise DatasetError(f"{path}: unreadable in the staged version ({' '.join(str(exc).split())}); "
                                   f"nothing was published. Run the ETL again") from exc
            if size != shard.bytes:
                raise DatasetError(f"{path}: {size} bytes, the manifest says {shard.bytes}; nothing was "
                                   f"published. Run the ETL again")
        total = sum(shard.rows for shard in info.shards)
        if total != info.rows:
            raise DatasetError(f"split {split}: shards hold {total} rows, expected {info.rows}")
