"""Horovod and torch.distributed behind one small interface; the loop never knows which it has.

Both take their rank and world size from the `RankEnvironment` their launcher set (ringtrain's Spark
launcher, torchrun or horovodrun; nothing: a world of one). Horovod also reads its rendezvous from
HOROVOD_* and torch.distributed from MASTER_ADDR/PORT, which only the launchers set.
"""
from __future__ import annotations

import contextlib
import gc
import os
from datetime import timedelta
from typing import Protocol

import torch

from ringtrain.training.environment import RankEnvironment
from ringtrain.training.spec import COLLECTIVE_TIMEOUT_S


class Engine(Protocol):
    rank: int
    size: int
    local_rank: int

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, accumulation: int,
             pipelined: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Make gradients all-reduced (averaged) across ranks; start every rank from rank 0's state.

        `pipelined`: the model is a training.pipeline.PipelineModel, whose backward runs stage by
        stage outside any wrapper; gradients are then averaged explicitly in synchronize().
        """

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Context for a backward pass that accumulates locally (not the last of an accumulation)."""

    def synchronize(self, optimizer: torch.optim.Optimizer) -> None:
        """Wait until the averaged gradients are in .grad (before clipping or checking them)."""

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step() after synchronize()."""

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a small CPU or device tensor over ranks (metrics, flags)."""

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's value on every rank."""

    def shutdown(self, clean: bool = True) -> None:
        """Leave the ring. `clean`: every rank finished, so they may wait for each other once more; after a
        failure no rank waits (a peer may be gone)."""


class HorovodEngine:
    name = "horovod"

    def __init__(self, env: RankEnvironment) -> None:
        import horovod.torch as hvd  # imported here: DDP users need no Horovod build
        self.hvd = hvd
        hvd.init()
        self.rank, self.size, self.local_rank = env.rank, env.size, env.local_rank
        if (hvd.rank(), hvd.size(), hvd.local_rank()) != (env.rank, env.size, env.local_rank):
            raise RuntimeError(f"Horovod's rendezvous placed this process as rank {hvd.rank()}/{hvd.size()}, "
                               f"local rank {hvd.local_rank()}, but its environment says {env}")

    manual: list | None = None  # parameters averaged explicitly (pipelined models)

    def wrap(self, model, optimizer, accumulation, pipelined=False):
        hvd = self.hvd
        if pipelined:
            hvd.broadcast_parameters(model.state_dict(), root_rank=0)
            self.manual = [p for p in model.parameters() if p.requires_grad]
            return model, optimizer
        if self.size == 1:
            return model, optimizer  # a world of one: nothing to average, no wrapper to pay for
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # No broadcast_optimizer_state: on resume every rank loads the same checkpoint, and on a
        # fresh optimizer Horovod would take a zero-gradient step (weight decay, step count).
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             backward_passes_per_step=accumulation, op=hvd.Average,
                                             groups=gradient_groups(model, GRADIENT_GROUP_BYTES))
        return model, optimizer

    def no_sync(self, model):
        return contextlib.nullcontext()  # backward_passes_per_step already defers the all-reduce

    def synchronize(self, optimizer):
        if self.size == 1:
            return  # a world of one has nothing to average
        if self.manual is None:
            optimizer.synchronize()
            return
        average_flat(self.manual, self.manual[0].device,
                     lambda flat: self.hvd.allreduce_(flat, op=self.hvd.Average, name="ringtrain.pipeline.grads"))

    def step(self, optimizer):
        if self.manual is not None or self.size == 1:
            optimizer.step()
            return
        with optimizer.skip_synchronize():
            optimizer.step()

    def allreduce_sum(self, tensor):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def broadcast_object(self, obj):
        # A fixed name: Horovod names the broadcast after type(obj) by default, and ranks that pass objects of
        # different types (rank 0 a value, the others None) would wait for each other's names forever.
        return self.hvd.broadcast_object(obj, root_rank=0, name="ringtrain.broadcast_object")

    def shutdown(self, clean=True):
        self.hvd.shutdown()  # Horovod's own shutdown already coordinates the ranks


class TorchDDPEngine:
    name = "ddp"

    def __init__(self, device: torch.device, env: RankEnvironment, collective_timeout_s: float) -> None:
        import torch.distributed as dist
        self.dist, self.device = dist, device
        self.rank, self.size, self.local_rank = env.rank, env.size, env.local_rank
        timeout = timedelta(seconds=collective_timeout_s)
        if self.size == 1 and "MASTER_PORT" not in os.environ:
            # Alone (no launcher gave a rendezvous): an in-memory store. A TCP store on a port picked
            # beforehand can lose that port to another process before it binds it (EADDRINUSE, seen in CI).
            dist.init_process_group(ddp_backend(device), store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
            return
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group(ddp_backend(device), rank=self.rank, world_size=self.size, timeout=timeout)

    manual: list | None = None  # parameters averaged explicitly (pipelined models)

    def wrap(self, model, optimizer, accumulation, pipelined=False):
        from torch.nn.parallel import DistributedDataParallel
        if pipelined:
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    self.dist.broadcast(tensor, src=0)
            self.manual = [p for p in model.parameters() if p.requires_grad]
            return model, optimizer
        if self.size == 1:
            return model, optimizer  # a world of one: nothing to average, no wrapper to pay for (as Ray does)
        ids = [self.device.index] if self.device.type == "cuda" and self._single_device(model) else None
        # DDP broadcasts rank 0's parameters at construction; the optimizer has no state yet.
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def _single_device(self, model) -> bool:
        return len({p.device for p in model.parameters()}) == 1

    def no_sync(self, model):
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def synchronize(self, optimizer):
        if self.manual is None or self.size == 1:
            return  # DDP has averaged gradients by the end of backward(); a world of one has nothing to average

        def average(flat: torch.Tensor) -> torch.Tensor:
            self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
            return flat.div_(self.size)
        average_flat(self.manual, self.device, average)

    def step(self, optimizer):
        optimizer.step()

    def allreduce_sum(self, tensor):
        tensor = tensor.clone()
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj):
        holder = [obj]
        self.dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def shutdown(self, clean=True):
        if not self.dist.is_initialized():
            return
        if clean:
            # Free what DDP holds on the group (its reducer's gloo work), then leave together: a rank that
            # exits while such C++ work outlives the group, or while a peer still talks to rank 0's TCPStore,
            # can abort at interpreter exit ("terminate called without an active exception", seen under
            # torchrun). After a failure no rank waits: a peer may be gone.
            gc.collect()
            self.dist.barrier(**({"device_ids": [self.device.index]} if self.device.type == "cuda" else {}))
        self.dist.destroy_process_group()


# Horovod hands each gradient to its background thread as backward produces it, and every cycle of that
# thread (1 ms) all-reduces what has arrived: a backward of a few ms becomes several rounds of
# negotiation and all-reduce. Grouped, the gradients of a group go as one request once all of them are
# ready, as DDP's buckets (25 MiB) do; measured in BENCHMARKS.md ("Training: where a step's time goes").
GRADIENT_GROUP_BYTES = 25 << 20


def gradient_groups(model: torch.nn.Module, group_bytes: int) -> int | None:
    """How many groups Horovod's DistributedOptimizer splits the gradients into (about `group_bytes` each);
    None (no grouping: one request per gradient) when `group_bytes` is 0."""
    if not group_bytes:
        return None
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return max(1, -(-total // group_bytes))


def ddp_backend(device: torch.device) -> str:
    """The torch.distributed backend for a rank on `device`. On a GPU the group is NCCL for CUDA tensors and
    Gloo for CPU ones: the loop all-reduces its metrics and flags as CPU tensors, which a plain NCCL group
    refuses ("No backend type associated with device type cpu")."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def average_flat(params: list, device: torch.device, allreduce_average) -> None:
    """Average the gradients of `params` across ranks in one flat all-reduce per dtype, on `device`.

    A pipelined model's stages may sit on several GPUs of the rank; NCCL binds a rank to one device, so
    every stage's gradients travel through the rank's own device (a device-to-device copy, small next to
    the all-reduce). `allreduce_average(flat)` averages `flat` in place over the ranks."""
    by_dtype: dict = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(_grad(p))
    for grads in by_dtype.values():
        flat = torch._utils._flatten_dense_tensors([g.to(device, non_blocking=True) for g in grads])
        allreduce_average(flat)
        for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced, non_blocking=True)


def _grad(p: torch.Tensor) -> torch.Tensor:
    """The parameter's gradient, zeros if it got none (every rank must send the same tensors)."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def make_engine(name: str, device: torch.device, env: RankEnvironment, *,
                collective_timeout_s: float = COLLECTIVE_TIMEOUT_S) -> Engine:
    """`collective_timeout_s`: DDP only (WorkerSpec.collective_timeout_s); Horovod keeps its own."""
    if name == "horovod":
        return HorovodEngine(env)
    if name == "ddp":
        return TorchDDPEngine(device, env, collective_timeout_s)
    raise ValueError(f"train.engine: unknown engine {name!r}; use 'horovod' or 'ddp'")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside the wrappers training puts around it: torch.compile's (`_orig_mod`), DDP's and
    the pipeline's (`module`). By type, not by attribute name: a user's model may have a `module` of its own."""
    from torch.nn.parallel import DistributedDataParallel
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel) or getattr(model, "wraps_module", False):
            model = model.module
        else:
            return model

