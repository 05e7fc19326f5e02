"""Why an attempt failed: each failing rank records its failure, and the driver names the root cause.

A failed barrier stage reaches the driver as whichever task Spark saw fail first, which is often a
rank that was merely left alone: its collective failed ("Horovod has been shut down", "Connection
closed by peer") because the rank that really failed had left the ring. So every failing rank
writes one small record, `<log_dir>/attempt<A>-rank<R>.failure.json`, and after the stage fails the
driver reads them all and reports one:

    1. a rank that failed on its own (a user error, an exception, an exit or kill, a hang) before
       one whose collective failed; among those, the earliest (wall-clock time when it failed);
    2. only when every record is a ring failure: the earliest of them (a peer vanished silently).

The worker writes its record when its exception is raised, before it leaves the ring, so its
record exists before any peer can fail because of it. A worker that dies without a word (a crash,
SIGKILL, a hang) gets its record from the Spark task that watched it.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from ringtrain import publish, store
from ringtrain.errors import UserError

# kind: "user" (retrying cannot help), "error", "exit" (died without an error line), "hang",
# "interrupted" (the user stopped it), "ring" (a collective failed: most likely because of another rank)
_ORDER = {"user": 0, "interrupted": 0, "error": 1, "exit": 1, "hang": 1, "ring": 2}
_RING_TYPES = {"HorovodInternalError", "DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}
_RING_TEXT = re.compile(r"Horovod has been shut down|Connection (closed|reset) by peer|Broken pipe|"
                        r"Socket Timeout|Connection refused|NCCL communicator was aborted", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Failure:
    rank: int | None
    """None: no rank failed, the Spark stage did (a lost executor, a cluster error)."""
    attempt: int
    kind: str
    message: str
    """'<ExceptionType>: <message>', or what the task saw (exit code, no progress)."""
    failed_at: float
    """time.time() when it failed (clocks of different hosts may differ slightly: kinds decide first)."""
    log: str = ""

    def describe(self) -> str:
        if self.rank is None:
            return f"the Spark stage failed: {self.message}"
        return f"rank {self.rank} failed first: {self.message}" + (f". Log: {self.log}" if self.log else "")


def classify(exc: BaseException, *, user_function: bool = False) -> str:
    """The failure's kind. `user_function`: raised while a user's training function ran, where any exception
    other than a ring error or a transient I/O error is the user's (retrying runs the same code on the same
    data: a bug, a bad argument or an out-of-memory fails again); the built-in loop's own exceptions are
    retried unless they are UserErrors."""
    if isinstance(exc, UserError):
        return "user"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if {c.__name__ for c in type(exc).__mro__} & _RING_TYPES or _RING_TEXT.search(str(exc)):
        return "ring"
    if user_function and not transient(exc):
        return "user"
    return "error"


def transient(exc: BaseException) -> bool:
    """An I/O error that may pass (a store or network hiccup), not one about a path the user named."""
    return isinstance(exc, OSError) and not isinstance(exc, _PATH_ERRORS)


_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def from_exception(exc: BaseException, *, rank: int, attempt: int, log: str = "",
                   user_function: bool = False) -> Failure:
    return Failure(rank=rank, attempt=attempt, kind=classify(exc, user_function=user_function),
                   message=f"{type(exc).__name__}: {exc}", failed_at=time.time(), log=log)


def log_path(log_dir: str, attempt: int, rank: int) -> str:
    """The rank's own log (its stdout and stderr), written by the Spark task that runs it."""
    return store.join(log_dir, f"attempt{attempt}-rank{rank}.log")


def record_path(log_dir: str, attempt: int, rank: int) -> str:
    return store.join(log_dir, f"attempt{attempt}-rank{rank}.failure.json")


def write_record(log_dir: str, failure: Failure) -> None:
    """Keep the first record of a rank: the worker's own, when the task also notices the exit."""
    data = json.dumps(failure.__dict__, sort_keys=True).encode()
    store.makedirs(log_dir)
    publish.create_exclusive(record_path(log_dir, failure.attempt, failure.rank), data)


def read_records(log_dir: str, attempt: int) -> list[Failure]:
    pattern = re.compile(rf"attempt{attempt}-rank\d+\.failure\.json$")
    found = []
    for name in store.listdir(log_dir):
        if pattern.match(name):
            try:
                found.append(Failure(**store.read_json(store.join(log_dir, name))))
            except (ValueError, TypeError):  # a record cut short by a killed writer: ignore it
                continue
    return found


def clear_records(log_dir: str) -> None:
    for name in store.listdir(log_dir):
        if name.endswith(".failure.json"):
            store.remove(store.join(log_dir, name))


def root_cause(failures: list[Failure]) -> Failure | None:
    if not failures:
        return None
    return min(failures, key=lambda f: (_ORDER.get(f.kind, 1), f.failed_at, f.rank))
