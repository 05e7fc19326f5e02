"""Who this process is in the ring: the one place that reads the rank environment, and writes it for the launcher.

Whoever starts the worker sets the environment; the worker and the engines read it only through
`RankEnvironment.from_environ()`:

    ringtrain's Spark launcher   what `RankEnvironment.to_environ()` returns: RANK, WORLD_SIZE, LOCAL_RANK,
                                 LOCAL_WORLD_SIZE, and the task's GPUs (RINGTRAIN_TASK_GPUS, CUDA_VISIBLE_DEVICES)
    torchrun                     RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
    horovodrun                   HOROVOD_RANK, HOROVOD_SIZE, HOROVOD_LOCAL_RANK, HOROVOD_LOCAL_SIZE
    nobody (alone)               nothing: rank 0 of a world of 1
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

# Per field, the variables that may hold it, the first one set wins: torchrun's names (which
# ringtrain's launcher also sets), then horovodrun's.
_SOURCES = {
    "rank": ("RANK", "HOROVOD_RANK"),
    "size": ("WORLD_SIZE", "HOROVOD_SIZE"),
    "local_rank": ("LOCAL_RANK", "HOROVOD_LOCAL_RANK"),
    "local_size": ("LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE"),
}
TASK_GPUS = "RINGTRAIN_TASK_GPUS"


@dataclass(frozen=True, kw_only=True)
class RankEnvironment:
    rank: int = 0
    size: int = 1
    """World size: the number of ranks."""
    local_rank: int = 0
    """Rank among the ranks on this host."""
    local_size: int = 1
    task_gpus: tuple[str, ...] | None = None
    """The GPUs Spark gave this task (already the only ones CUDA_VISIBLE_DEVICES shows), or None when no
    launcher assigned GPUs per rank (torchrun, horovodrun: every rank sees every GPU of the host)."""

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.size and 0 <= self.local_rank < self.local_size):
            raise ValueError(f"inconsistent rank environment {self}: the launcher set contradicting variables")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "RankEnvironment":
        values = {}
        for name, candidates in _SOURCES.items():
            found = next((environ[c] for c in candidates if environ.get(c)), None)
            if found is not None:
                values[name] = int(found)
        gpus = environ.get(TASK_GPUS)
        return cls(**values, task_gpus=tuple(gpus.split(",")) if gpus else None)

    def to_environ(self) -> dict[str, str]:
        """What a launcher sets so that `from_environ` reads this back (tested as a round trip)."""
        env = {"RANK": str(self.rank), "WORLD_SIZE": str(self.size), "LOCAL_RANK": str(self.local_rank),
               "LOCAL_WORLD_SIZE": str(self.local_size)}
        if self.task_gpus is not None:
            env[TASK_GPUS] = env["CUDA_VISIBLE_DEVICES"] = ",".join(self.task_gpus)
        return env

    def cores(self, allowed: set[int]) -> set[int]:
        """This rank's share of the cores the process may run on (`os.sched_getaffinity`), split by local rank:
        the ranks of a host take disjoint shares while there are enough cores, and share them round-robin
        when there are not."""
        ordered = sorted(allowed)
        per_rank = max(1, len(ordered) // self.local_size)
        first = self.local_rank * per_rank % len(ordered)
        return set(ordered[first:first + per_rank])

    def cuda_index(self, device_count: int) -> int:
        """This rank's GPU among the visible ones: the task's first under Spark (CUDA_VISIBLE_DEVICES holds
        only the task's GPUs), one per local rank under torchrun/horovodrun (all GPUs visible)."""
        return 0 if self.task_gpus is not None else self.local_rank % device_count


def pin_to_cores(cores: set[int]) -> None:
    """Every thread of this process (and every thread it starts later) runs on `cores` only."""
    for thread_id in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread_id), cores)
        except ProcessLookupError:  # a thread that has exited since the listing
            pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for a rendezvous that binds it right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
