"""One object owns every path of a run; every publication is safe on POSIX, HDFS and object stores.

Layout under `store.root` (a local path, `file://`, `hdfs://`, `s3://` or `s3a://` URI):

    datasets/<name>/v000001/manifest.json   a published dataset version: its manifest, written last
    datasets/<name>/_staging/<id>/          POSIX: an ETL in progress, renamed to vNNNNNN when verified
    datasets/<name>/_data/<id>/             other stores: immutable shards that manifests reference
    datasets/<name>/LATEST                  name of the newest published version (a pointer object)
    runs/<run_id>/checkpoints/              ckpt-<step>.pt, each one whole or absent
    runs/<run_id>/logs/                     one log per rank and attempt
    runs/<run_id>/model/                    the model artifact, complete once artifact.json exists
    runs/<run_id>/metrics.json, metrics.png per-epoch metrics

The protocol (README "Storage and publishing protocol"): readers trust only a version whose
manifest exists, and only a model whose artifact.json exists; the manifest and that marker are
written last. On POSIX a version is a staging folder renamed into place (atomic, and a second
publisher's rename of the same name fails). Object stores and HDFS have no atomic folder rename
(and Hadoop's rename moves a folder *into* an existing one), so there the shards stay where the
executors wrote them and the manifest, created exclusively under the version's name, lists them.

Every function takes plain strings (local paths or URIs), so paths travel to executors as values,
and resolves them through `pyarrow.fs`; filesystem objects are cached per process. Credentials and
endpoints come from the environment (AWS_* incl. AWS_ENDPOINT_URL, the Hadoop environment for
libhdfs), never from files ringtrain writes.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import random
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ringtrain.errors import ConfigError

_SCHEMES = ("file", "s3", "s3a", "hdfs", "viewfs")


def normalize_root(uri: str) -> str:
    """store.root as the store functions take it: an absolute local path, or an s3:// / hdfs:// URI."""
    if "://" not in uri:
        return os.path.abspath(uri)
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"store.root {uri}: scheme {scheme!r} is not supported; use a local path, file://, "
                          f"hdfs://, s3:// or s3a://")
    if scheme == "file":
        return os.path.abspath(uri[len("file://"):])
    if scheme == "s3a":  # Hadoop's name for S3; the same objects
        uri = "s3://" + uri[len("s3a://"):]
    if scheme.startswith("s3") and not urlsplit(uri).netloc:
        raise ConfigError(f"store.root {uri}: an S3 root needs a bucket, e.g. s3://my-bucket/ringtrain")
    return uri.rstrip("/")


def is_posix(path: str) -> bool:
    """True when `path` is on a POSIX filesystem (atomic rename, fsync, hard links)."""
    return "://" not in path or path.startswith("file://")


def _is_object_store(path: str) -> bool:
    """S3 (and its s3a alias): a single PUT makes a whole object visible at once, or nothing."""
    return path.split("://", 1)[0].lower() in ("s3", "s3a") if "://" in path else False


# --- Filesystems: one per process per (scheme, authority, settings).

def filesystem(path: str):
    """(pyarrow.fs FileSystem, path on it): for libraries that take a filesystem object (readers)."""
    return _resolve(path)


def _resolve(path: str):
    """(pyarrow FileSystem, path on it) for a local path or URI."""
    import pyarrow.fs as pafs
    if "://" not in path:
        return _local_fs(), os.path.abspath(path)
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _local_fs(), os.path.abspath(path[len("file://"):])
    if scheme in ("s3", "s3a"):
        return _s3_fs(parts.netloc, *_s3_settings()), parts.netloc + parts.path
    if scheme in ("hdfs", "viewfs"):
        return _hadoop_fs(scheme, parts.netloc), parts.path or "/"
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
    except Exception as exc:
        raise ConfigError(f"{path}: no filesystem for scheme {scheme!r} ({exc}); use a local path, file://, "
                          f"hdfs://, s3:// or s3a://") from exc
    return fs, inner


@functools.lru_cache(maxsize=None)
def _local_fs():
    import pyarrow.fs as pafs
    return pafs.LocalFileSystem()


def _s3_settings() -> tuple:
    """The AWS environment that decides which S3 endpoint and account a filesystem talks to. Part of the
    cache key, so a changed environment (a test's own server, refreshed credentials) gets a new client."""
    env = os.environ
    return (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "",
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "",
            env.get("AWS_ACCESS_KEY_ID") or "", env.get("AWS_SECRET_ACCESS_KEY") or "",
            env.get("AWS_SESSION_TOKEN") or "")


_S3A_TO_AWS = {"fs.s3a.access.key": "AWS_ACCESS_KEY_ID", "fs.s3a.secret.key": "AWS_SECRET_ACCESS_KEY",
               "fs.s3a.session.token": "AWS_SESSION_TOKEN", "fs.s3a.endpoint.region": "AWS_REGION"}


def s3_env_from_hadoop(conf: dict[str, str]) -> dict[str, str]:
    """The AWS_* variables that Spark's `spark.hadoop.fs.s3a.*` settings (or Hadoop's `fs.s3a.*`) stand for,
    so that a cluster configured for s3a needs nothing more for ringtrain's store."""
    def get(key: str) -> str | None:
        return conf.get(f"spark.hadoop.{key}") or conf.get(key)

    env = {name: get(key) for key, name in _S3A_TO_AWS.items() if get(key)}
    endpoint = get("fs.s3a.endpoint")
    if endpoint:
        if "://" not in endpoint:
            secure = (get("fs.s3a.connection.ssl.enabled") or "true").lower() != "false"
            endpoint = ("https://" if secure else "http://") + endpoint
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@functools.lru_cache(maxsize=None)
def _s3_fs(bucket: str, endpoint: str, region: str, key: str, secret: str, token: str):
    """One client per bucket and settings: on AWS, a bucket without AWS_REGION is asked for its region."""
    import pyarrow.fs as pafs
    options: dict[str, Any] = {}
    if endpoint:  # an S3-compatible server (MinIO, Ceph, a test server): http(s)://host:port
        url = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        options.update(endpoint_override=url.netloc, scheme=url.scheme, region=region or "us-east-1")
    else:
        options["region"] = region or pafs.resolve_s3_region(bucket)
    if key and secret:  # otherwise the AWS SDK's own chain: profile, instance or pod role
        options.update(access_key=key, secret_key=secret, session_token=token or None)
    return pafs.S3FileSystem(**options)


@functools.lru_cache(maxsize=None)
def _hadoop_fs(scheme: str, netloc: str):
    """libhdfs through JNI: needs HADOOP_HOME, CLASSPATH (`hadoop classpath --glob`), ARROW_LIBHDFS_DIR and
    JAVA_HOME in this process's environment (on executors: spark.executorEnv.*)."""
    import pyarrow.fs as pafs
    try:
        return pafs.HadoopFileSystem.from_uri(f"{scheme}://{netloc or 'default'}")
    except OSError as exc:
        raise ConfigError(
            f"cannot connect to {scheme}://{netloc}: {exc}. libhdfs needs HADOOP_HOME, JAVA_HOME, "
            f"CLASSPATH=$(hadoop classpath --glob) and ARROW_LIBHDFS_DIR in the environment of the driver "
            f"and of every executor (spark.executorEnv.NAME=...)") from exc


# --- The only functions that touch the store. Nothing under store.root is read or written any other
# way: that is what lets the store live on any filesystem.

def join(base: str, *parts: str) -> str:
    """`base`/`parts`, normalized ("v000002/../_data/x" is "_data/x": manifests on object stores point
    from a version folder to the shards' folder)."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, *parts))}"
    return os.path.normpath(os.path.join(base, *parts))


def _info(path: str):
    fs, inner = _resolve(path)
    return fs.get_file_info(inner)


def exists(path: str) -> bool:
    import pyarrow.fs as pafs
    return _info(path).type != pafs.FileType.NotFound


def isdir(path: str) -> bool:
    import pyarrow.fs as pafs
    return _info(path).type == pafs.FileType.Directory


def _entries(path: str, recursive: bool = False):
    import pyarrow.fs as pafs
    fs, inner = _resolve(path)
    try:
        return fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=recursive)), inner
    except (NotADirectoryError, FileNotFoundError):
        return [], inner


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under `path`, sorted; [] when it does not exist."""
    found, _ = _entries(path)
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in found)


def list_files(path: str) -> list[str]:
    """Every file under `path`, recursively, as paths relative to it (sorted); [] when it does not exist."""
    import pyarrow.fs as pafs
    found, inner = _entries(path, recursive=True)
    prefix = inner.rstrip("/") + "/"
    return sorted(i.path[len(prefix):] for i in found if i.type == pafs.FileType.File)


def makedirs(path: str) -> None:
    """Create a folder (POSIX, HDFS); object stores have no folders, only key prefixes: nothing to do."""
    if _is_object_store(path):
        return
    fs, inner = _resolve(path)
    fs.create_dir(inner, recursive=True)


def remove(path: str) -> None:
    """Delete a file; no error when it is already gone."""
    fs, inner = _resolve(path)
    try:
        fs.delete_file(inner)
    except FileNotFoundError:
        pass


def rmtree(path: str) -> None:
    """Delete a folder (a key prefix on object stores) and everything under it; no error when absent."""
    fs, inner = _resolve(path)
    try:
        fs.delete_dir(inner)
    except FileNotFoundError:
        pass


def mtime(path: str) -> float:
    """Modification time of a file; of a folder, its newest file's (object stores keep no folder times)."""
    import pyarrow.fs as pafs
    info = _info(path)
    if info.type == pafs.FileType.Directory:
        found, _ = _entries(path, recursive=True)
        times = [i.mtime.timestamp() for i in found if i.type == pafs.FileType.File and i.mtime]
        if times or info.mtime is None:
            return max(times, default=0.0)
    if info.mtime is None:
        raise FileNotFoundError(path)
    return info.mtime.timestamp()


def open_input(path: str):
    """A seekable binary file for reading (Parquet footers, checkpoints), read in ranges: no local copy."""
    fs, inner = _resolve(path)
    return fs.open_input_file(inner)


def open_output(path: str):
    """A binary stream for writing, NOT atomic on POSIX or HDFS: only for files that become visible
    through a manifest or marker written after them (shards, logs). On S3 the object appears, whole,
    when the stream is closed. Use atomic_write_bytes for everything else."""
    fs, inner = _resolve(path)
    if not _is_object_store(path):
        fs.create_dir(posixpath.dirname(inner), recursive=True)
    return fs.open_output_stream(inner)


def read_bytes(path: str, attempts: int = 5) -> bytes:
    """The whole file. On an object store a reader learns an object's size in one request and fetches its
    bytes in another: when a writer replaces the object between them (a state record, a pointer), the bytes
    are a prefix of the newer version, or all of a shorter one. So the size is asked again after the read,
    and a read that does not match it is repeated (a GET returns a single version, whole). Not caught: two
    replacements within one read that put back a version of the first one's size."""
    if not _is_object_store(path):
        with open_input(path) as f:
            return f.read()
    fs, inner = _resolve(path)
    for _ in range(attempts):
        with fs.open_input_file(inner) as f:
            data = f.read()
        if len(data) == fs.get_file_info(inner).size:
            return data
    raise OSError(f"{path} changed while it was read, {attempts} times in a row; read it again later")


def upload_file(local: str, path: str) -> None:
    """Copy a local file (not under store.root: a log the launcher keeps) to `path` in the store."""
    with open(local, "rb") as src, open_output(path) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def publish_folder(local: str, path: str, *, marker: str) -> None:
    """Publish the files of the local folder `local` as the folder `path`, replacing what was there; readers
    take it as complete only once `marker` (one of the files) exists in it. POSIX: copied beside `path`,
    then renamed into place whole. Elsewhere: the old marker is removed first, then the old folder, then
    every file is uploaded, the marker last."""
    names = sorted(os.path.relpath(os.path.join(d, n), local) for d, _, files in os.walk(local) for n in files)
    if marker not in names:
        raise ValueError(f"{local} has no {marker}: nothing would mark the published folder complete")
    if is_posix(path):
        target = _resolve(path)[1]
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".publish-", dir=parent)
        try:
            shutil.copytree(local, staging, dirs_exist_ok=True)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return
    remove(join(path, marker))
    rmtree(path)
    for name in names:
        if name != marker:
            upload_file(os.path.join(local, name), join(path, name))
    with open(os.path.join(local, marker), "rb") as f:
        atomic_write_bytes(join(path, marker), f.read())


def share_or_copy(src: str, dst: str) -> None:
    """Make `dst` hold the bytes of the immutable file `src`: a hard link on POSIX (no bytes copied), else a
    copy (server-side on S3). Dataset shards are never copied this way: manifests reference them."""
    if is_posix(src) and is_posix(dst):
        fs, d = _resolve(dst)
        _, s = _resolve(src)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        try:
            os.link(s, d)
            return
        except OSError:  # another filesystem, or links not supported (some FUSE mounts)
            pass
    fs, s = _resolve(src)
    dfs, d = _resolve(dst)
    if fs is dfs:
        if not _is_object_store(dst):
            fs.create_dir(posixpath.dirname(d), recursive=True)
        fs.copy_file(s, d)
    else:
        with open_input(src) as f, open_output(dst) as out:
            shutil.copyfileobj(f, out, 1 << 20)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Readers see the old content or the new one, never a part. POSIX: a temporary file in the same folder,
    fsync, rename over `path`. S3: one PUT (an object is visible whole or not at all). HDFS: a temporary file
    moved into place (Hadoop's rename does not replace, so the old file is deleted first; in that instant
    the file is absent, never partial)."""
    if is_posix(path):
        _posix_atomic_write(_resolve(path)[1], data)
        return
    fs, inner = _resolve(path)
    if _is_object_store(path):
        with fs.open_output_stream(inner) as out:
            out.write(data)
        return
    tmp = f"{posixpath.dirname(inner)}/.tmp-{uuid.uuid4().hex}"
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    try:
        fs.delete_file(inner)
    except FileNotFoundError:
        pass
    fs.move(tmp, inner)


def _posix_atomic_write(path: str, data: bytes) -> None:
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


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist yet; False when it already existed (or another
    writer created it at the same time: exactly one of them gets True).

    POSIX: O_CREAT|O_EXCL. Other stores have no create-if-absent that pyarrow can ask for, so writers
    take turns through claims (`_claim`): correct on any store whose writes and listings are linearizable
    (S3 since December 2020, HDFS)."""
    if is_posix(path):
        return _posix_create_exclusive(_resolve(path)[1], data)
    for attempt in range(8):
        if exists(path):
            return False
        owner = uuid.uuid4().hex
        won = _claim(path, owner)
        if won is None:  # another writer is claiming at the same moment: back off, look again
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
            continue
        try:
            if not won:
                return False
            atomic_write_bytes(path, data)
            return True
        finally:
            remove(_claim_path(path, owner))
    raise RuntimeError(f"{path}: could not create it exclusively after 8 tries (other writers keep claiming it)")


def _posix_create_exclusive(path: str, data: bytes) -> bool:
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


# A claim lives for one small PUT; an older one was left by a killed writer and no longer counts.
_CLAIM_TTL_S = 120.0
_CLAIM = re.compile(r"^\.claim-(.+)-([0-9a-f]{32})$")


def _claim_path(path: str, owner: str) -> str:
    return join(posixpath.dirname(path), f".claim-{posixpath.basename(path)}-{owner}")


def _claim(path: str, owner: str) -> bool | None:
    """Write our claim on `path`, then list the claims: True = ours is the only one and `path` is still
    absent (we may create it); False = `path` exists; None = another claim is there (both back off).

    Why at most one writer wins: a writer that sees only its own claim listed after its claim was stored;
    any other writer stores its claim later, so its own listing shows ours (or, once we removed ours after
    creating `path`, its check of `path` finds it)."""
    mine = _claim_path(path, owner)
    atomic_write_bytes(mine, b"")
    folder, name = posixpath.dirname(path), posixpath.basename(path)
    found, _ = _entries(folder)  # with their times: a claim may be gone before a second look
    others = [i for i in found
              if (m := _CLAIM.match(posixpath.basename(i.path))) and m.group(1) == name and m.group(2) != owner
              and (i.mtime is None or time.time() - i.mtime.timestamp() < _CLAIM_TTL_S)]
    if others or exists(path):
        remove(mine)
        return False if exists(path) else None
    return True


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
            _, src = _resolve(staging)
            _, dst = _resolve(final)
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
            used |= referenced_dirs(read_json(join(self.root, version, "manifest.json")))
        for name in candidates:
            if f"_data/{name}" not in used:
                rmtree(join(folder, name))


def referenced_dirs(manifest: dict) -> set[str]:
    """The shard folders (relative to the dataset root) that a manifest references."""
    return {s["dir"] for info in manifest["splits"].values() for s in info["shards"] if s.get("dir")}


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
