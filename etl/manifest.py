"""Before publishing: the staged shards are checked against the manifest (the contract itself is
`ringtrain.manifest`, which training reads without importing the ETL)."""
from __future__ import annotations

import hashlib

import pyarrow.parquet as pq

from ringtrain.manifest import DatasetError, shard_paths
from ringtrain.store import is_posix, open_input


def verify_staging(folder: str, manifest: dict, *, root: str | None = None) -> None:
    """Every shard exists with the recorded rows, size, one schema and (on POSIX) checksum.

    The executors hashed each shard while writing it. Remote stores are not read back whole: that would
    pull every byte through the driver; their uploads are integrity-checked by the client, and the size and
    the Parquet footer are checked here. `root`: see `shard_paths`."""
    schema = None
    for split, info in manifest["splits"].items():
        total = 0
        for shard, path in zip(info["shards"], shard_paths(folder, manifest, split, root=root)):
            with open_input(path) as f:
                size = f.size()
                meta = pq.ParquetFile(f)
                digest = _sha256(f) if is_posix(path) else None
            if size != shard["bytes"]:
                raise DatasetError(f"{path}: {size} bytes, expected {shard['bytes']}")
            if meta.metadata.num_rows != shard["rows"]:
                raise DatasetError(f"{path}: {meta.metadata.num_rows} rows, expected {shard['rows']}")
            if schema is None:
                schema = meta.schema_arrow
            elif not meta.schema_arrow.equals(schema):
                raise DatasetError(f"{path}: schema differs from the other shards")
            if digest is not None and digest != shard["sha256"]:
                raise DatasetError(f"{path}: checksum mismatch")
            total += shard["rows"]
        if total != info["rows"]:
            raise DatasetError(f"split {split}: shards hold {total} rows, expected {info['rows']}")


def _sha256(f) -> str:
    digest = hashlib.sha256()
    f.seek(0)
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
