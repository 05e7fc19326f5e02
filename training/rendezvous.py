"""How the ranks of a ring find each other: one rendezvous per engine, started by rank 0's barrier task.

The Spark task (training.task) places the ranks on their hosts (`place`), has rank 0's task start the
engine's rendezvous, and gives every rank the variables its engine's library reads to join the ring:

    rendezvous = for_engine(spec.train.engine)
    port = rendezvous.start(slots)                 # rank 0's task only: bound on slots[0].host
    env = rendezvous.environ(slots, rank, addr, port)
    rendezvous.stop()                              # once every rank is done with it

    horovod   Horovod's HTTP rendezvous server (Gloo controller), HOROVOD_* variables for hvd.init()
    ddp       a free port for torch.distributed's TCPStore (rank 0's process binds it), MASTER_ADDR/PORT

Imports no torch (Horovod's server is imported only when a Horovod rendezvous starts): the Spark task
runs it before the worker process starts, and benchmarks use it to start ranks as the launcher does.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from ringtrain.training.environment import free_port


@dataclass(frozen=True, kw_only=True)
class Slot:
    """Where one rank sits: its host, its place among that host's ranks, and among the ranks of its local rank."""
    host: str
    local_rank: int
    local_size: int
    cross_rank: int
    """Among the hosts that have a rank with this local rank, this host's index."""
    cross_size: int


def place(hosts: list[str]) -> list[Slot]:
    """Per rank (in task order, `hosts[rank]` its host): its slot, ranks grouped by host in task order."""
    order = list(dict.fromkeys(hosts))
    local_ranks, seen = [], {}
    for h in hosts:
        local_ranks.append(seen.get(h, 0))
        seen[h] = seen.get(h, 0) + 1
    slots = []
    for h, lr in zip(hosts, local_ranks):
        cross = [x for x in order if seen[x] > lr]  # hosts that have a rank with this local rank
        slots.append(Slot(host=h, local_rank=lr, local_size=seen[h], cross_rank=cross.index(h),
                          cross_size=len(cross)))
    return slots


class Rendezvous(Protocol):
    def start(self, slots: list[Slot]) -> int:
        """On rank 0's task: start the rendezvous on `slots[0].host` (its own address, not every interface:
        neither rendezvous has authentication); its port."""

    def environ(self, slots: list[Slot], rank: int, addr: str, port: int) -> dict[str, str]:
        """What the engine's own library reads to join the ring at `addr:port` (the rank environment,
        `RankEnvironment.to_environ()`, is set apart)."""

    def stop(self) -> None:
        """Release what `start` took; nothing when it did not run (every rank but 0)."""


class HorovodRendezvous:
    """Horovod's HTTP rendezvous server, as horovodrun starts it, with the Gloo controller."""

    def __init__(self) -> None:
        self._server = None

    def start(self, slots: list[Slot]) -> int:
        from horovod.runner.common.util.hosts import SlotInfo
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer
        plan = [SlotInfo(hostname=s.host, rank=rank, local_rank=s.local_rank, cross_rank=s.cross_rank,
                         size=len(slots), local_size=s.local_size, cross_size=s.cross_size)
                for rank, s in enumerate(slots)]
        self._server = RendezvousHTTPServer((slots[0].host, 0), RendezvousHandler, 0)
        self._server.init(plan)
        threading.Thread(target=self._server.serve_forever, name="horovod-rendezvous", daemon=True).start()
        return self._server.server_address[1]

    def environ(self, slots: list[Slot], rank: int, addr: str, port: int) -> dict[str, str]:
        s = slots[rank]
        return {
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": addr, "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
            "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_HOSTNAME": s.host,
            "HOROVOD_RANK": str(rank), "HOROVOD_SIZE": str(len(slots)), "HOROVOD_LOCAL_RANK": str(s.local_rank),
            "HOROVOD_LOCAL_SIZE": str(s.local_size), "HOROVOD_CROSS_RANK": str(s.cross_rank),
            "HOROVOD_CROSS_SIZE": str(s.cross_size),
        }

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TorchRendezvous:
    """torch.distributed's env:// rendezvous: rank 0's process binds a TCPStore on a port free now."""

    def start(self, slots: list[Slot]) -> int:
        return free_port(slots[0].host)

    def environ(self, slots: list[Slot], rank: int, addr: str, port: int) -> dict[str, str]:
        return {"MASTER_ADDR": addr, "MASTER_PORT": str(port)}

    def stop(self) -> None:
        pass  # the store lives in rank 0's worker process, and ends with it


RENDEZVOUS: dict[str, type] = {"horovod": HorovodRendezvous, "ddp": TorchRendezvous}


def for_engine(engine: str) -> Rendezvous:
    """A fresh rendezvous for `train.engine`."""
    if engine not in RENDEZVOUS:
        raise ValueError(f"train.engine: no rendezvous for engine {engine!r}; use one of {', '.join(RENDEZVOUS)}")
    return RENDEZVOUS[engine]()
