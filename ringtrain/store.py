"""One object owns every path of a run, and every publication is atomic.

Layout under `store.root`:

    datasets/<name>/v000001/          a published dataset version (manifest.json inside)
    datasets/<name>/_staging/<id>/    an ETL in progress; never read, removed when stale
    datasets/<name>/LATEST            name of the newest published version (atomically replaced)
    runs/<run_id>/checkpoints/        ckpt-<step>.pt, written by rank 0 with write-then-rename
    runs/<run_id>/logs/               one log per rank and attempt
    runs/<run_id>/model/              the model artifact, published by renaming a finished folder
    runs/<run_id>/metrics.json        per-epoch metrics

Readers only ever follow LATEST or a version folder that has a manifest, so a killed writer
leaves nothing half-visible: its staging folder is simply never published.

Paths are local or on a shared POSIX mount (NFS, a FUSE-mounted HDFS) that every executor
sees; `file://` URIs are accepted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ringtrain.errors import ConfigError


def local_path(uri: str) -> str:
    """Strip file:// from a URI; other schemes are not local filesystems."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        raise ConfigError(f"store.root {uri}: only local or shared-mount paths (or file://) are supported for the store root")
    return os.path.abspath(uri)


# --- The only functions that touch the store. Every path is a plain string (a local path or a URI),
# so paths travel to executors and workers as values. Nothing under store.root is read or written
# any other way: that is what lets the store live on another filesystem.

def join(base: str, *parts: str) -> str:
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    return os.path.exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under `path`, sorted; [] when it does not exist."""
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def makedirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Delete a file; no error when it is already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def mtime(path: str) -> float:
    return os.path.getmtime(path)


def open_input(path: str):
    """A seekable binary file for reading (Parquet footers, checkpoints)."""
    return open(path, "rb")


def open_output(path: str):
    """A binary file for writing, NOT atomic: only for files that become visible through a manifest or
    marker written after them (shards, log files). Use atomic_write_bytes for everything else."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "wb")


def read_bytes(path: str) -> bytes:
    with open_input(path) as f:
        return f.read()


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist yet; False when it already existed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Readers see the old content or the new one, never a part: a temporary file in the same folder,
    fsync, then rename over `path`."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


_VERSION = re.compile(r"^v(\d{6})$")


class ConcurrentPublish(RuntimeError):
    """Another ETL published a version of the same dataset while this one was running."""


@dataclass(frozen=True)
class DatasetStore:
    """The versions of one dataset."""

    root: str  # datasets/<name>

    def staging_dir(self) -> str:
        path = os.path.join(self.root, "_staging", f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
        os.makedirs(path)
        return path

    def versions(self) -> list[str]:
        """Published versions, oldest first: folders named vNNNNNN that hold a manifest."""
        if not os.path.isdir(self.root):
            return []
        found = [d for d in os.listdir(self.root)
                 if _VERSION.match(d) and os.path.exists(os.path.join(self.root, d, "manifest.json"))]
        return sorted(found)

    def latest(self) -> str | None:
        """Folder of the newest published version, or None."""
        pointer = os.path.join(self.root, "LATEST")
        if os.path.exists(pointer):
            with open(pointer) as f:
                name = f.read().strip()
            if os.path.exists(os.path.join(self.root, name, "manifest.json")):
                return os.path.join(self.root, name)
        versions = self.versions()
        return os.path.join(self.root, versions[-1]) if versions else None

    def publish(self, staging: str, *, based_on: str | None = None, check_base: bool = False) -> str:
        """Make a verified staging folder (manifest.json written last) the next version.

        With `check_base`, refuse when the newest version is no longer `based_on` (a version name, or None
        for an empty dataset): an incremental version built on an older one would drop a partition.
        """
        if not os.path.exists(os.path.join(staging, "manifest.json")):
            raise RuntimeError(f"{staging} has no manifest.json: refusing to publish an unverified dataset")
        existing = self.versions()
        if check_base and (existing[-1] if existing else None) != based_on:
            raise ConcurrentPublish(
                f"{self.root}: {existing[-1]} was published while this ETL built on {based_on or 'nothing'}; "
                f"nothing was published by this run: run it again")
        number = int(existing[-1][1:]) + 1 if existing else 1
        name = f"v{number:06d}"
        final = os.path.join(self.root, name)
        os.rename(staging, final)  # atomic within one filesystem; fails if a concurrent ETL took the name
        atomic_write_bytes(os.path.join(self.root, "LATEST"), name.encode())
        return final

    def clean_stale_staging(self, older_than_s: float = 3600.0) -> None:
        """Remove staging folders left by killed runs (never visible to readers anyway)."""
        folder = os.path.join(self.root, "_staging")
        if not os.path.isdir(folder):
            return
        now = time.time()
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if now - os.path.getmtime(path) > older_than_s:
                shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class RunStore:
    """Every path of one run: where its data comes from and where everything it writes goes."""

    root: str
    run_id: str

    @classmethod
    def create(cls, root: str, run_id: str | None = None) -> "RunStore":
        run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return cls(root=local_path(root), run_id=run_id)

    def prepare(self) -> "RunStore":
        """Create the run's folders (training only: an ETL writes under datasets/)."""
        for path in (self.checkpoint_dir, self.log_dir):
            os.makedirs(path, exist_ok=True)
        return self

    def dataset(self, name: str) -> DatasetStore:
        return DatasetStore(os.path.join(self.root, "datasets", name))

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "runs", self.run_id)

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.run_dir, "checkpoints")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.run_dir, "logs")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.run_dir, "model")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.json")

    @property
    def raw_dir(self) -> str:
        """Where the demo writes its generated source data."""
        return os.path.join(self.root, "raw")

    def paths(self) -> dict[str, str]:
        """Plain values for workers, which never receive driver objects."""
        return {"run_dir": self.run_dir, "checkpoint_dir": self.checkpoint_dir,
                "log_dir": self.log_dir, "model_dir": self.model_dir, "metrics_path": self.metrics_path}
