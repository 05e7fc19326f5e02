"""Before publishing: the staged shards are checked against the manifest (the contract itself is
`ringtrain.manifest`, which training reads without importing the ETL)."""
from __future__ import annotations

import hashlib
import os

import pyarrow.parquet as pq

from ringtrain.manifest import DatasetError


def verify_staging(folder: str, manifest: dict) -> None:
    """Every shard exists with the recorded rows, checksum and one schema."""
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
