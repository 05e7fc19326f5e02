"""Atomic and exclusive publication: how a file or folder under `store.root` becomes visible to readers whole.

Readers trust only what a marker written last makes real (README "Storage and publishing protocol"), so every
marker is written in one atomic step: on POSIX a temporary file (or folder) renamed into place; on S3 one PUT,
which makes an object visible whole or not at all; on HDFS a temporary file moved into place. Object stores and
HDFS have no atomic folder rename (and Hadoop's rename moves a folder *into* an existing one), so a folder is
published there by writing its marker last, and a name that only one writer may take is created exclusively
(`create_exclusive`: O_EXCL on POSIX, claims elsewhere).

Paths and filesystems come from `ringtrain.store`; which files a run or a dataset publishes, from
`ringtrain.layout`.
"""
from __future__ import annotations

import json
import os
import posixpath
import random
import re
import shutil
import tempfile
import time
import uuid
from typing import Any

from ringtrain.store import exists, filesystem, is_object_store, is_posix, join, list_info, remove, rmtree, upload_file


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Readers see the old content or the new one, never a part. POSIX: a temporary file in the same folder,
    fsync, rename over `path`. S3: one PUT (an object is visible whole or not at all). HDFS: a temporary file
    moved into place (Hadoop's rename does not replace, so the old file is deleted first; in that instant
    the file is absent, never partial)."""
    if is_posix(path):
        _posix_atomic_write(filesystem(path)[1], data)
        return
    fs, inner = filesystem(path)
    if is_object_store(path):
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


def publish_folder(local: str, path: str, *, marker: str) -> None:
    """Publish the files of the local folder `local` as the folder `path`, replacing what was there; readers
    take it as complete only once `marker` (one of the files) exists in it. POSIX: copied beside `path`,
    then renamed into place whole. Elsewhere: the old marker is removed first, then the old folder, then
    every file is uploaded, the marker last."""
    names = sorted(os.path.relpath(os.path.join(d, n), local) for d, _, files in os.walk(local) for n in files)
    if marker not in names:
        raise ValueError(f"{local} has no {marker}: nothing would mark the published folder complete")
    if is_posix(path):
        target = filesystem(path)[1]
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


def create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist yet; False when it already existed (or another
    writer created it at the same time: exactly one of them gets True).

    POSIX: O_CREAT|O_EXCL. Other stores have no create-if-absent that pyarrow can ask for, so writers
    take turns through claims (`_claim`): correct on any store whose writes and listings are linearizable
    (S3 since December 2020, HDFS)."""
    if is_posix(path):
        return _posix_create_exclusive(filesystem(path)[1], data)
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
    found = list_info(folder)  # with their times: a claim may be gone before a second look
    others = [i for i in found
              if (m := _CLAIM.match(posixpath.basename(i.path))) and m.group(1) == name and m.group(2) != owner
              and (i.mtime is None or time.time() - i.mtime.timestamp() < _CLAIM_TTL_S)]
    if others or exists(path):
        remove(mine)
        return False if exists(path) else None
    return True
