"""A lock file on the store with an owner and an expiry, so that one retrain of a model runs at a time. Core.

The lock is one JSON file created exclusively (`publish.create_exclusive`): host, pid, the process's start
time, when it was taken, when it expires, and a random token. Its owner renews the expiry every
ttl/4 from a daemon thread. Another process that finds the file:
  - exits with ModelLocked (exit 75) while the owner is alive and the lock not expired;
  - takes it over when it is stale: expired, or owned by a process of this host that no longer runs
    (the pid is gone, or was reused by a process that started later). The log says whose lock it took.

A takeover deletes the stale file and creates its own exclusively, so of two processes taking over at
once only one wins the creation. (A process that read the stale lock and deletes it just after another
took it over could delete the new one: the window is the time between one read and one delete, and
the expiry makes it matter only for locks stale already. The registry's own writes are exclusive
creations as well, so even then no registry change is lost or doubled.)
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import psutil

from ringtrain.errors import ModelLocked
from ringtrain.publish import atomic_write_json, create_exclusive
from ringtrain.store import exists, read_json, remove

log = logging.getLogger("ringtrain.lock")


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stale_reason(owner: dict, now: float) -> str | None:
    """Why a lock held by `owner` may be taken over, or None while it is valid."""
    if now > owner.get("expires", 0):
        return f"expired {now - owner['expires']:.0f}s ago"
    if owner.get("host") == socket.gethostname():
        started = _process_start(owner["pid"])
        if started is None:
            return f"its owner, pid {owner['pid']}, no longer runs"
        if abs(started - owner.get("pid_start", started)) > 1.0:
            return f"pid {owner['pid']} now belongs to another process"
    return None


class FileLock:
    """`with FileLock(path, ttl_s, what):` holds the lock for the block, or raises ModelLocked."""

    def __init__(self, path: str, ttl_s: float, what: str):
        self.path, self.ttl_s, self.what = path, ttl_s, what
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._taken = time.time()

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                "taken_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._taken)),
                "expires": time.time() + self.ttl_s, "token": self.token}

    def acquire(self) -> None:
        for _ in range(3):  # a holder may release between our failed create and our read
            if create_exclusive(self.path, json.dumps(self._owner(), indent=2).encode()):
                break
            try:
                owner = read_json(self.path)
            except (FileNotFoundError, ValueError):  # released, or being written: try again
                time.sleep(0.2)
                continue
            reason = stale_reason(owner, time.time())
            if reason is None:
                raise ModelLocked(
                    f"{self.what} is locked by pid {owner['pid']} on {owner['host']} since {owner['taken_utc']} "
                    f"(lock {self.path}, expires in {owner['expires'] - time.time():.0f}s): nothing was changed; "
                    f"retry later")
            log.warning("taking over the stale lock of %s (pid %s on %s, taken %s): %s", self.what, owner["pid"],
                        owner["host"], owner["taken_utc"], reason)
            remove(self.path)
        else:
            raise ModelLocked(f"{self.what}: could not take the lock {self.path}; retry later")
        self._renewer = threading.Thread(target=self._renew, name="ringtrain-lock-renewal", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if read_json(self.path).get("token") != self.token:
                    log.error("the lock %s was taken over by another process", self.path)
                    return
                atomic_write_json(self.path, {**self._owner(), "expires": time.time() + self.ttl_s})
            except Exception as exc:  # a store hiccup: the next renewal tries again, well before expiry
                log.warning("could not renew the lock %s: %s", self.path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            if exists(self.path) and read_json(self.path).get("token") == self.token:
                remove(self.path)
        except (FileNotFoundError, ValueError):
            pass

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
