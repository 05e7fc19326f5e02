"""The dataset and run layouts: one object owns every path of a run, one the versions of a dataset.

Layout under `store.root`:

    datasets/<name>/v000001/manifest.json   a published dataset version: its manifest, written last
    datasets/<name>/_staging/<id>/          POSIX: an ETL in progress, renamed to vNNNNNN when verified
    datasets/<name>/_data/<id>/             other stores: immutable shards that manifests reference
    datasets/<name>/LATEST                  name of the newest published version (a pointer object)
    runs/<run_id>/checkpoints/              ckpt-<step>.pt, each one whole or absent
    runs/<run_id>/logs/                     one log per rank and attempt
    runs/<run_id>/model/                    the model artifact, complete once artifact.json exists
    runs/<run_id>/metrics.json, metrics.png per-epoch metrics

Readers trust only a version whose manifest exists, and only a model whose artifact.json exists; the manifest
and that marker are written last (`ringtrain.publish`). On POSIX a version is a staging folder renamed into
place (atomic, and a second publisher's rename of the same name fails). Object stores and HDFS have no atomic
folder rename, so there the shards stay where the executors wrote them and the manifest, created exclusively
under the version's name, lists them.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass

from ringtrain.manifest import Manifest, load_manifest
from ringtrain.publish import atomic_write_bytes, create_exclusive
from ringtrain.store import (
    exists, filesystem, is_posix, join, listdir, makedirs, mtime, normalize_root, read_bytes, rmtree,
)


_VERSION = re.compile(r"^v(\d{6})$")


class ConcurrentPublish(RuntimeError):
    """Another ETL published a version of the same dataset while this one was running."""


@dataclass(frozen=True)
class DatasetStore:
    """The versions of one dataset."""

    root: str  # datasets/<name>

    @property
    def renames(self) -> bool:
        """POSIX publishes by renaming a staging folder; other stores by referencing shards (module docstring)."""
        return is_posix(self.root)

    def staging_dir(self) -> str:
        """A fresh folder for an ETL's files. POSIX: renamed to the version when published; elsewhere the
        shards stay in it and the manifest references them (`shard_dir`)."""
        stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        path = join(self.root, "_staging" if self.renames else "_data", stamp)
        makedirs(path)
        return path

    def shard_dir(self, staging: str) -> str | None:
        """What a manifest records as the shards' folder (relative to the dataset root), or None when they
        sit in the version folder itself (POSIX)."""
        return None if self.renames else staging[len(self.root) + 1:]

    def version_relative(self, staging: str, name: str) -> str:
        """A manifest's path (relative to the version folder) for `name` written in `staging`."""
        return name if self.renames else f"../{self.shard_dir(staging)}/{name}"

    def versions(self) -> list[str]:
        """Published versions, oldest first: folders named vNNNNNN that hold a manifest."""
        return [d for d in listdir(self.root) if _VERSION.match(d) and exists(join(self.root, d, "manifest.json"))]

    def latest(self) -> str | None:
        """Folder of the newest published version, or None. LATEST is a hint that is checked: without a
        manifest behind it (or while HDFS replaces it) the newest published version is used."""
        pointer = join(self.root, "LATEST")
        try:
            name = read_bytes(pointer).decode().strip()
        except (FileNotFoundError, OSError):
            name = ""
        if _VERSION.match(name) and exists(join(self.root, name, "manifest.json")):
            newer = [v for v in self.versions() if v > name]
            return join(self.root, newer[-1] if newer else name)
        versions = self.versions()
        return join(self.root, versions[-1]) if versions else None

    def publish(self, staging: str, manifest: bytes, *, based_on: str | None = None,
                check_base: bool = False) -> str:
        """Make a verified staging folder the next version, with `manifest` (the file that makes it real).

        With `check_base`, refuse when the newest version is no longer `based_on` (a version name, or None
        for an empty dataset): an incremental version built on an older one would drop a partition.
        """
        existing = self.versions()
        newest = existing[-1] if existing else None
        if check_base and newest != based_on:
            raise ConcurrentPublish(
                f"{self.root}: {newest} was published while this ETL built on {based_on or 'nothing'}; "
                f"nothing was published by this run: run it again")
        name = f"v{int(newest[1:]) + 1 if newest else 1:06d}"
        final = join(self.root, name)
        if self.renames:
            atomic_write_bytes(join(staging, "manifest.json"), manifest)
            _, src = filesystem(staging)
            _, dst = filesystem(final)
            try:
                os.rename(src, dst)  # atomic; fails when a concurrent ETL took the name (non-empty folder)
            except OSError as exc:
                raise ConcurrentPublish(f"{final} was published by another ETL at the same time; nothing was "
                                        f"published by this run: run it again") from exc
        elif not create_exclusive(join(final, "manifest.json"), manifest):
            raise ConcurrentPublish(f"{final} was published by another ETL at the same time; nothing was "
                                    f"published by this run (its shards are removed as stale later): run it again")
        atomic_write_bytes(join(self.root, "LATEST"), name.encode())
        return final

    def clean_stale_staging(self, older_than_s: float = 3600.0) -> None:
        """Remove what killed ETLs left (never visible to readers anyway): POSIX staging folders, and
        elsewhere data folders that no published manifest references, untouched for `older_than_s`."""
        now = time.time()
        if self.renames:
            folder = join(self.root, "_staging")
            for name in listdir(folder):
                if now - mtime(join(folder, name)) > older_than_s:
                    rmtree(join(folder, name))
            return
        folder = join(self.root, "_data")
        candidates = [n for n in listdir(folder) if now - mtime(join(folder, n)) > older_than_s]
        if not candidates:
            return
        used = set()
        for version in self.versions():
            used |= referenced_dirs(load_manifest(join(self.root, version)))
        for name in candidates:
            if f"_data/{name}" not in used:
                rmtree(join(folder, name))


def referenced_dirs(manifest: Manifest) -> set[str]:
    """The shard folders (relative to the dataset root) that a manifest references."""
    return {s.dir for split in manifest.splits.values() for s in split.shards if s.dir}


@dataclass(frozen=True)
class RunStore:
    """Every path of one run: where its data comes from and where everything it writes goes."""

    root: str
    run_id: str

    @classmethod
    def create(cls, root: str, run_id: str | None = None) -> "RunStore":
        run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return cls(root=normalize_root(root), run_id=run_id)

    def prepare(self) -> "RunStore":
        """Create the run's folders (training only: an ETL writes under datasets/)."""
        for path in (self.checkpoint_dir, self.log_dir):
            makedirs(path)
        return self

    def dataset(self, name: str) -> DatasetStore:
        return DatasetStore(join(self.root, "datasets", name))

    @property
    def run_dir(self) -> str:
        return join(self.root, "runs", self.run_id)

    @property
    def checkpoint_dir(self) -> str:
        return join(self.run_dir, "checkpoints")

    @property
    def log_dir(self) -> str:
        return join(self.run_dir, "logs")

    @property
    def model_dir(self) -> str:
        return join(self.run_dir, "model")

    @property
    def metrics_path(self) -> str:
        return join(self.run_dir, "metrics.json")

    @property
    def raw_dir(self) -> str:
        """Where the demo writes its generated source data."""
        return join(self.root, "raw")

    def paths(self) -> dict[str, str]:
        """Plain values for workers, which never receive driver objects."""
        return {"run_dir": self.run_dir, "checkpoint_dir": self.checkpoint_dir,
                "log_dir": self.log_dir, "model_dir": self.model_dir, "metrics_path": self.metrics_path}
