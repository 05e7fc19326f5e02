"""The dataset contract between the ETL (which writes it) and training (which reads it). Core.

A published version is a folder with `manifest.json`, written last, after the shards were verified:
its presence is what makes a version real. Training refuses a folder without one. (On object stores
and HDFS the version folder holds only the manifest and features.json; the manifest references the
shards where they were written, see `shard_paths`.)

The manifest is typed like the config: `Manifest` (a full version) or `IncrementalManifest` (a version of
an incremental dataset, which adds its partitions), built and checked by `ringtrain.schema`; the ETL writes
`to_dict` of one, so a reader gets attributes, and a key the file lacks or misspells fails `load_manifest`
with its name.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

from ringtrain.errors import REPUBLISH, ConfigError, DatasetError
from ringtrain.schema import absent_key, build
from ringtrain.store import exists, isdir, join, read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(kw_only=True)
class Identity:
    """What makes a version (or a partition of an incremental one): the same identity is reused, not rebuilt."""
    source: str
    """The source's fingerprint: sha256 over its input files' paths, sizes and modification times (a table's:
    of its plan)."""
    config: str
    """sha256 of the ETL config."""
    partition: str | None
    """The --partition read, or None for the whole source."""


@dataclass(kw_only=True)
class Source:
    format: str
    """etl.source.format."""
    path: str | None
    """etl.source.path (with {partition} unreplaced), or None for a table."""
    table: str | None
    """etl.source.table, or None for files."""
    fingerprint: str
    """The identity's source fingerprint."""


@dataclass(kw_only=True)
class IncrementalSource(Source):
    partition_column: str | None
    """etl.source.partition_column: the table column a partition is read by (None for files)."""


@dataclass(kw_only=True)
class SchemaColumn:
    """One of etl.columns, as declared."""
    name: str
    type: str
    role: str
    nullable: bool


@dataclass(kw_only=True)
class Schema:
    columns: list[SchemaColumn]
    """etl.columns, in their order."""


@dataclass(kw_only=True)
class Features:
    """What the model reads from the shards; the statistics that encoded them are in features.json."""
    path: str
    """features.json, relative to the version folder."""
    numeric_columns: list[str]
    """The float columns the model reads, in order (a nullable one is followed by its <name>__missing)."""
    categorical_cardinalities: dict[str, int]
    """The integer columns the model reads, in order, each with the size of its embedding table."""
    arrays: dict[str, int]
    """The fixed-length float array columns, in order, each with its length."""
    label: str
    """The label column of the shards."""
    key: str
    """The split key column."""
    task: Literal["binary", "multiclass", "regression"]
    """etl.label.task."""
    label_values: list[str] | None
    """binary: [negative, positive]; multiclass: the classes (class index = position); regression: None."""
    label_stats: dict[str, Any]
    """Of the train split. Classification: {"counts": rows per class, in label_values order}.
    Regression: {"mean", "std", "standardized"}: the shards hold (y - mean) / std when standardized."""


@dataclass(kw_only=True)
class Quarantine:
    path: str | None
    """The folder of the rejected rows (Parquet, every column as a string plus its reason), relative to the
    version folder; None when no row was rejected (or, incremental on object stores, when the partitions'
    quarantines stay at their own paths: `Partition.quarantine`)."""
    counts: dict[str, int]
    """Rejected rows per reason, sorted by reason."""


@dataclass(kw_only=True)
class Shard:
    """One Parquet file of a split."""
    shard: int
    """Its index within the split's shards of one ETL run."""
    rows: int
    bytes: int
    """Its size as stored."""
    row_groups: int
    sha256: str
    """Of its bytes (train.verify_shards: full checks it before training)."""
    chunk_crc32: list[list[int]] | None = absent_key()
    """Every column chunk's [row group, column, offset, length, crc32]: each chunk read is checked against it
    (`ringtrain.rowcheck`). Absent in manifests published before the ETL recorded them (their shards are read
    unchecked)."""
    file: str
    """Its file name, in <split>/ of the version folder, or of `dir`."""
    dir: str | None = absent_key()
    """Absent on POSIX; on stores without atomic rename, the folder (relative to the dataset root) that holds
    <split>/<file>: manifests reference the shards where the executors wrote them."""


@dataclass(kw_only=True)
class Split:
    rows: int
    shards: list[Shard]
    """In order; their count is a multiple of max_world_size, and their rows are balanced (within a partition)."""


@dataclass(kw_only=True)
class Manifest:
    """A full version: the ETL read the whole source (or one --partition of it) into it."""
    format_version: int
    """FORMAT_VERSION: `load_manifest` refuses another."""
    dataset: str
    """etl.dataset."""
    mode: Literal["full", "incremental"]
    """etl.mode: "incremental" manifests are `IncrementalManifest`s."""
    created_utc: str
    """When the version was built, e.g. 2026-11-22T10:00:00Z."""
    identity: Identity
    """Incremental: of the partition this version added or rebuilt."""
    partition: str | None
    """The identity's partition."""
    source: Source
    schema: Schema
    features: Features
    rows_read: int
    rows_good: int
    """Rows that passed validation: the splits' rows."""
    quarantine: Quarantine
    splits: dict[str, Split]
    """train, val and test."""
    row_group_rows: int
    """etl.shards.row_group_rows."""
    max_world_size: int
    """etl.shards.max_world_size: every rank of a run with at most this many ranks gets data."""
    balance_max_min: float
    """The largest over the smallest train shard, in rows (incremental: the worst partition's)."""


@dataclass(kw_only=True)
class Partition:
    """One partition of an incremental dataset: what one `ringtrain etl --partition` run added."""
    name: str
    """The --partition value."""
    tag: str
    """Its file-name-safe name: its shards are part-<tag>-NNNNN.parquet."""
    identity: Identity
    seed: int
    """The shuffle seed of its rows."""
    created_utc: str
    rows_read: int
    rows_good: int
    quarantine: Quarantine
    splits: dict[str, Split]
    """Its own shards; the version's `splits` are every partition's, in partition order."""
    balance_max_min: float


@dataclass(kw_only=True)
class IncrementalManifest(Manifest):
    """A version of an incremental dataset: the previous version's partitions plus the one added (or rebuilt)."""
    source: IncrementalSource
    features_fitted_on: str
    """The base partition, whose train split fitted the frozen features."""
    previous_version: str | None
    """The version this one extends (None for the base)."""
    frozen: dict[str, Any]
    """The settings the base's features and the published shards depend on, by config key: a later
    partition with other values is refused."""
    partitions: list[Partition]
    """In the order they were added (a rebuilt partition keeps its place)."""


def load_manifest(dataset_dir: str) -> Manifest:
    """The manifest of the published version `dataset_dir` (an `IncrementalManifest` for an incremental dataset);
    DatasetError naming the folder, or the key, when it is not one."""
    path = join(dataset_dir, MANIFEST)
    if not exists(path) and not isdir(dataset_dir):
        raise DatasetError(f"dataset {dataset_dir} does not exist; run `ringtrain etl --config ...` first")
    if not exists(path):
        raise DatasetError(f"{dataset_dir} has no {MANIFEST}: it is not a published ringtrain dataset "
                           f"(an unfinished ETL, or another tool's output); run `ringtrain etl` to publish one")
    data = read_json(path)
    found = data.get("format_version") if isinstance(data, dict) else None
    if found != FORMAT_VERSION:
        raise DatasetError(f"{path}: manifest format {found} is not {FORMAT_VERSION}")
    try:
        return build(IncrementalManifest if data.get("mode") == "incremental" else Manifest, data)
    except ConfigError as exc:
        raise DatasetError(f"{path}: not a manifest this ringtrain reads: {exc}. The version is damaged, or was "
                           f"published by another tool or an older ringtrain; {REPUBLISH}") from exc


def shard_paths(dataset_dir: str, manifest: Manifest, split: str, *, root: str | None = None) -> list[str]:
    """Where a split's shards are (see `shard_path`)."""
    return [shard_path(dataset_dir, split, s, root=root) for s in manifest.splits[split].shards]


def shard_path(dataset_dir: str, split: str, shard: Shard, *, root: str | None = None) -> str:
    """Where one shard of a manifest is. A shard is in <version>/<split>/ unless it has a `dir`: a folder
    relative to the dataset root (`root`, by default the version folder's parent) that holds <split>/<file>;
    on stores without atomic rename, manifests reference the shards where the executors wrote them."""
    if shard.dir:
        return join(root or posixpath.dirname(dataset_dir.rstrip("/")), shard.dir, split, shard.file)
    return join(dataset_dir, split, shard.file)
