"""The dataset contract between the ETL (which writes it) and training (which reads it). Core.

A published version is a folder with `manifest.json`, written last, after the shards were verified:
its presence is what makes a version real. Training refuses a folder without one. (On object stores
and HDFS the version folder holds only the manifest and features.json; the manifest references the
shards where they were written, see `shard_paths`.)
"""
from __future__ import annotations

import posixpath

from ringtrain.errors import DatasetError
from ringtrain.store import exists, isdir, join, read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def load_manifest(dataset_dir: str) -> dict:
    path = join(dataset_dir, MANIFEST)
    if not exists(path) and not isdir(dataset_dir):
        raise DatasetError(f"dataset {dataset_dir} does not exist; run `ringtrain etl --config ...` first")
    if not exists(path):
        raise DatasetError(f"{dataset_dir} has no {MANIFEST}: it is not a published ringtrain dataset "
                           f"(an unfinished ETL, or another tool's output); run `ringtrain etl` to publish one")
    manifest = read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: manifest format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def shard_paths(dataset_dir: str, manifest: dict, split: str, *, root: str | None = None) -> list[str]:
    """Where a split's shards are (see `shard_path`)."""
    return [shard_path(dataset_dir, split, s, root=root) for s in manifest["splits"][split]["shards"]]


def shard_path(dataset_dir: str, split: str, shard: dict, *, root: str | None = None) -> str:
    """Where one shard of a manifest is. A shard is in <version>/<split>/ unless it has a `dir`: a folder
    relative to the dataset root (`root`, by default the version folder's parent) that holds <split>/<file>;
    on stores without atomic rename, manifests reference the shards where the executors wrote them."""
    if shard.get("dir"):
        return join(root or posixpath.dirname(dataset_dir.rstrip("/")), shard["dir"], split, shard["file"])
    return join(dataset_dir, split, shard["file"])
