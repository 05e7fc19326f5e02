"""Before publishing: the staged version is checked against its manifest (the contract itself is
`ringtrain.manifest`, which training reads without importing the ETL)."""
from __future__ import annotations

from ringtrain.manifest import DatasetError, shard_paths
from ringtrain.store import open_input


def check_staged(folder: str, manifest: dict, *, root: str | None = None) -> None:
    """Every shard the manifest lists exists with its recorded size, and each split's shards hold its rows.

    One metadata look-up per shard, no byte read: the shards this ETL wrote were checked by the tasks that
    wrote them (footers read back, checksums taken as the bytes went out; see `shards.check_written`).
    This catches a shard carried over from the previous version (incremental mode) that went missing or
    changed size. `root`: see `shard_paths`."""
    for split, info in manifest["splits"].items():
        for shard, path in zip(info["shards"], shard_paths(folder, manifest, split, root=root)):
            try:
                with open_input(path) as f:
                    size = f.size()
            except OSError as exc:  # missing (pyarrow's message says so on every store)
                raise DatasetError(f"{path}: unreadable in the staged version ({' '.join(str(exc).split())}); "
                                   f"nothing was published. Run the ETL again") from exc
            if size != shard["bytes"]:
                raise DatasetError(f"{path}: {size} bytes, the manifest says {shard['bytes']}; nothing was "
                                   f"published. Run the ETL again")
        total = sum(shard["rows"] for shard in info["shards"])
        if total != info["rows"]:
            raise DatasetError(f"split {split}: shards hold {total} rows, expected {info['rows']}")
