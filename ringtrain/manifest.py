"""The dataset contract between the ETL (which writes it) and training (which reads it). Core.

A published version is a folder with `manifest.json`, written last, after the shards were verified:
its presence is what makes a version real. Training refuses a folder without one.
"""
from __future__ import annotations

import os

from ringtrain.errors import DatasetError
from ringtrain.store import read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def load_manifest(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"dataset {dataset_dir} does not exist; run `ringtrain etl --config ...` first")
    if not os.path.exists(path):
        raise DatasetError(f"{dataset_dir} has no {MANIFEST}: it is not a published ringtrain dataset "
                           f"(an unfinished ETL, or another tool's output); run `ringtrain etl` to publish one")
    manifest = read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: manifest format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def shard_paths(dataset_dir: str, manifest: dict, split: str) -> list[str]:
    return [os.path.join(dataset_dir, split, s["file"]) for s in manifest["splits"][split]["shards"]]
