"""URIs and filesystems: how a path under `store.root` is resolved, read, listed, written and deleted.

`store.root` is a local path, `file://`, `hdfs://`, `s3://` or `s3a://` URI. Every function takes plain strings
(local paths or URIs), so paths travel to executors as values, and resolves them through `pyarrow.fs`;
filesystem objects are cached per process. Credentials and endpoints come from the environment (AWS_* incl.
AWS_ENDPOINT_URL, the Hadoop environment for libhdfs), never from files ringtrain writes.

Writes here are not atomic: `ringtrain.publish` makes files and folders visible whole (atomic and exclusive
writes), and `ringtrain.layout` names where a run's and a dataset's files go.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
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


def is_object_store(path: str) -> bool:
    """S3 (and its s3a alias): a single PUT makes a whole object visible at once, or nothing."""
    return path.split("://", 1)[0].lower() in ("s3", "s3a") if "://" in path else False


# --- Filesystems: one per process per (scheme, authority, settings).

def filesystem(path: str):
    """(pyarrow.fs FileSystem, path on it): for libraries that take a filesystem object (readers), and for
    `ringtrain.publish` and `ringtrain.layout`, which rename and create exclusively on POSIX paths themselves."""
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


# --- The only functions that touch the store, with ringtrain.publish's. Nothing under store.root is read or
# written any other way: that is what lets the store live on any filesystem.

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


def list_info(path: str) -> list:
    """The pyarrow FileInfo (path, type, size, mtime) of each entry directly under `path`; [] when it does not
    exist. For callers that need more than names from one listing (times, in a single request)."""
    return _entries(path)[0]


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
    if is_object_store(path):
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
    when the stream is closed. Use `ringtrain.publish.atomic_write_bytes` for everything else."""
    fs, inner = _resolve(path)
    if not is_object_store(path):
        fs.create_dir(posixpath.dirname(inner), recursive=True)
    return fs.open_output_stream(inner)


def read_bytes(path: str, attempts: int = 5) -> bytes:
    """The whole file. On an object store a reader learns an object's size in one request and fetches its
    bytes in another: when a writer replaces the object between them (a state record, a pointer), the bytes
    are a prefix of the newer version, or all of a shorter one. So the size is asked again after the read,
    and a read that does not match it is repeated (a GET returns a single version, whole). Not caught here: two
    replacements within one read that put back a version of the first one's size (read_json catches it)."""
    if not is_object_store(path):
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
        if not is_object_store(dst):
            fs.create_dir(posixpath.dirname(d), recursive=True)
        fs.copy_file(s, d)
    else:
        with open_input(src) as f, open_output(dst) as out:
            shutil.copyfileobj(f, out, 1 << 20)


def read_json(path: str, attempts: int = 5) -> Any:
    """A JSON document, whole. On an object store a read that raced two replacements can pass read_bytes'
    size check and still be a prefix of a longer version (see read_bytes). A proper prefix of a JSON object or
    array never parses, so there a document that does not parse is read again, up to `attempts` times; one
    that never parses is damaged and raises json.JSONDecodeError, as a local file does at once."""
    for _ in range(attempts - 1 if is_object_store(path) else 0):
        try:
            return json.loads(read_bytes(path))
        except json.JSONDecodeError:
            continue
    return json.loads(read_bytes(path))
