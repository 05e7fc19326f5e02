"""The dataset manifest: what a published version holds, and the check that training runs on one.

Training refuses a folder without a manifest: a manifest is written last, after the shards were
verified, so its presence is what makes a version real.
"""
from __future__ import annotations

import hashlib
import os

import pyarrow.parquet as pq

from ringtrain.store import read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset folder is missing, unpublished or inconsistent with its manifest."""


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


def verify_staging(folder: str, manifest: dict) -> None:
    """Before publishing: every shard exists with the recorded rows, checksum and one schema."""
    schema = None
    for split, info in manifest["splits"].items():
        total = 0
        for shard in info["shards"]:
            path = os.path.join(folder, split, shard["file"])
            meta = pq.ParquetFile(path)
            if meta.metadata.num_rows != shard["rows"]:
                raise DatasetError(f"{path}: {meta.metadata.num_rows} rows, expected {shard['rows']}")
            if schema is None:
                schema = meta.schema_arrow
            elif not meta.schema_arrow.equals(schema):
                raise DatasetError(f"{path}: schema differs from the other shards")
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != shard["sha256"]:
                    raise DatasetError(f"{path}: checksum mismatch")
            total += shard["rows"]
        if total != info["rows"]:
            raise DatasetError(f"split {split}: shards hold {total} rows, expected {info['rows']}")
