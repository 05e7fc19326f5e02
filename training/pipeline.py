"""Layer splitting inside one rank: a GPipe-style pipeline over the model's `layers()`.

The model's ordered layers are cut into K contiguous stages; stage i lives on device
`devices[i % len(devices)]` (one GPU per stage when the task owns K GPUs; on CPU, or with
fewer GPUs than stages, stages share a device, so the split is still exercised). Each batch is
cut into M micro-batches, and every optimizer step runs the fill-drain schedule of GPipe:

    stage 0: F0 F1 F2 F3 .  .  .  .  .  .  B3 B2 B1 B0
    stage 1: .  F0 F1 F2 F3 .  .  .  B3 B2 B1 B0 .  .      (K=2, M=4)

Each stage runs in its own thread (so stages on different devices, or CPU cores, work at the
same time) and hands activations forward and gradients backward through queues. A stage
receives its input detached, so its backward is its own: `out.backward(grad)` then passes
`input.grad` to the stage before it. Gradients of the M micro-batches accumulate in `.grad`,
exactly as one backward over the whole batch would (the loss of micro-batch m is weighted by
its share of the batch). With equal stage times, the schedule leaves each stage idle for a
fraction (K-1)/(M+K-1) of the step (the "bubble"); `trace=True` measures the real one.

Data parallelism across ranks is unchanged: the engine averages the accumulated gradients once
per optimizer step (`Engine.wrap(..., pipelined=True)`).

Contract for a model: `model.layers()` returns modules whose composition, applied to the tuple
`(num, cat)` (or `(num, cat, arr)`, see training.models), gives the outputs as [B, 1] or [B, K] (the model's own forward squeezes the last dim).
Autocast and the RNG are per thread, so each stage enters autocast itself; with dropout on a
shared CPU device the order in which stage threads draw masks is not fixed (on GPUs each stage
has its own device generator).
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Callable

import torch
from torch import nn

from ringtrain.errors import ConfigError

_POLL_S = 0.05


class PipelineError(RuntimeError):
    """A stage failed; the step is abandoned on every stage."""


def partition(layers: list[nn.Module], stages: int, balance: list[int] | None = None) -> list[list[int]]:
    """Contiguous layer indices per stage: the given counts, or about equal parameter counts."""
    n = len(layers)
    if stages > n:
        raise ConfigError(f"train.pipeline.stages={stages} but the model has only {n} layers to split; "
                         f"lower the stage count or use a deeper model (e.g. residual_mlp with more num_blocks)")
    if balance is not None:
        if sum(balance) != n:
            raise ConfigError(f"train.pipeline.balance={balance} covers {sum(balance)} layers, the model has {n}")
        bounds, start = [], 0
        for count in balance:
            bounds.append(list(range(start, start + count)))
            start += count
        return bounds
    # Greedy on cumulative parameter count (plus one per layer, so parameter-free layers count),
    # keeping at least one layer for each remaining stage.
    cost = [sum(p.numel() for p in layer.parameters()) + 1 for layer in layers]
    total = sum(cost)
    bounds, start, acc = [], 0, 0
    for stage in range(stages - 1):
        target = total * (stage + 1) / stages
        end = start + 1
        acc += cost[start]
        while end < n - (stages - 1 - stage) and acc + cost[end] / 2 <= target:
            acc += cost[end]
            end += 1
        bounds.append(list(range(start, end)))
        start = end
    bounds.append(list(range(start, n)))
    return bounds


class _Stage(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = layers  # a plain list: the parameters stay registered under the original model only

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class PipelineModel(nn.Module):
    """Runs `module` (which exposes `layers()`) as K pipeline stages over M micro-batches.

    `self.module` is the original model, so `engines.unwrap()` returns it: checkpoints and the
    published artifact hold the model's own state-dict keys, independent of the split.
    """

    wraps_module = True  # engines.unwrap: `self.module` is the model

    def __init__(self, module: nn.Module, stages: int, micro_batches: int | str, devices: list[torch.device],
                 balance: list[int] | None = None):
        super().__init__()
        if not callable(getattr(module, "layers", None)):
            raise ConfigError(f"train.pipeline.stages={stages} needs a model with a layers() method (the ordered "
                             f"modules of its forward pass); {type(module).__name__} has none. Built-in models "
                             f"have it; add it to your model or set train.pipeline.stages=1")
        self.module = module
        layers = module.layers()
        self.bounds = partition(layers, stages, balance)
        self.devices = [devices[i % len(devices)] for i in range(stages)]
        self.micro_batches = micro_batches_for(micro_batches, self.devices)  # train.pipeline.micro_batches
        for idx, dev in zip(self.bounds, self.devices):
            for i in idx:
                layers[i].to(dev)  # in place; _Stage below holds plain references, which .to() would not reach
        self.stages = [_Stage([layers[i] for i in idx]) for idx in self.bounds]
        self.last_trace: list[list[tuple[str, int, float, float]]] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Plain sequential forward across the stages' devices (validation, export)."""
        x = tuple(t.to(self.devices[0]) for t in inputs)
        for stage, device in zip(self.stages, self.devices):
            x = stage(_to(x, device))
        return x.squeeze(-1)

    def forward_backward(self, inputs: tuple[torch.Tensor, ...], label: torch.Tensor,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, scale: float = 1.0,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         poison: bool = False, trace: bool = False) -> torch.Tensor:
        """One GPipe step: forward and backward of every micro-batch; gradients accumulate in .grad.

        `inputs` are the model's inputs (num, cat[, arr]). Returns the batch's mean loss, detached, on the last
        stage's device (nothing here waits for a GPU). `loss_fn(logits, label)` is a mean over its rows;
        micro-batch m's loss is weighted by rows_m / rows, then by `scale` (1 / the gradient-accumulation
        count, and the fp16 loss scale: a float, or a tensor on a GPU) before backward. `poison` multiplies
        the loss by NaN (tests).
        """
        k, rows = self.num_stages, label.shape[0]
        m = min(self.micro_batches, rows)
        chunks = list(zip(*[torch.tensor_split(t, m) for t in (*inputs, label)]))
        fwd = [queue.Queue() for _ in range(k)]   # fwd[i]: inputs of stage i
        bwd = [queue.Queue() for _ in range(k)]   # bwd[i]: gradients of stage i's outputs
        abort = threading.Event()
        errors: list[BaseException] = []
        losses: list[torch.Tensor | None] = [None] * m
        traces: list[list] = [[] for _ in range(k)]
        sync = trace and any(d.type == "cuda" for d in self.devices)

        def run(i: int) -> None:
            try:
                device, stage, last = self.devices[i], self.stages[i], i == k - 1
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                saved = []
                for micro in range(m):
                    item = _get(fwd[i], abort)
                    started = time.perf_counter()
                    if i == 0:
                        x_in = _to(item, device)
                    else:
                        x_in = item.to(device).requires_grad_(item.is_floating_point())
                    with autocast():
                        out = stage(x_in)
                    if last:
                        target = chunks[micro][-1].to(device)
                        loss = loss_fn(out.squeeze(-1).float(), target) * (target.shape[0] / rows)
                        if poison:
                            loss = loss * float("nan")
                        losses[micro] = loss.detach().double()
                        saved.append((x_in, loss * (scale.to(device) if torch.is_tensor(scale) else scale)))
                    else:
                        saved.append((x_in, out))
                    if sync:
                        torch.cuda.synchronize(device)
                    traces[i].append(("F", micro, started, time.perf_counter()))
                    if not last:
                        fwd[i + 1].put(out.detach())
                for micro in reversed(range(m)):
                    x_in, out = saved.pop()
                    grad = None if last else _get(bwd[i], abort).to(device)
                    started = time.perf_counter()
                    out.backward(grad)
                    if sync:
                        torch.cuda.synchronize(device)
                    traces[i].append(("B", micro, started, time.perf_counter()))
                    if i > 0:
                        bwd[i - 1].put(x_in.grad if x_in.grad is not None else torch.zeros_like(x_in))
                    del x_in, out
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                errors.append(exc)
                abort.set()

        threads = [threading.Thread(target=run, args=(i,), name=f"ringtrain-stage{i}", daemon=True)
                   for i in range(k)]
        for t in threads:
            t.start()
        for *x, _ in chunks:
            fwd[0].put(tuple(x))
        for t in threads:
            t.join()
        if errors:
            real = [e for e in errors if not isinstance(e, _Aborted)]
            raise PipelineError(f"pipeline stage failed: {real[0] if real else errors[0]!r}") from (
                real[0] if real else errors[0])
        self.last_trace = traces if trace else None
        return torch.stack(losses).sum()


class _Aborted(Exception):
    """Another stage failed while this one was waiting."""


def _get(q: queue.Queue, abort: threading.Event):
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if abort.is_set():
                raise _Aborted() from None


def _to(x, device: torch.device):
    if isinstance(x, tuple):
        return tuple(t.to(device, non_blocking=True) for t in x)
    return x.to(device, non_blocking=True)


def idle_fraction(trace: list[list[tuple[str, int, float, float]]]) -> float:
    """1 - (busy time summed over stages) / (stages x the step's span)."""
    start = min(op[2] for ops in trace for op in ops)
    end = max(op[3] for ops in trace for op in ops)
    busy = sum(op[3] - op[2] for ops in trace for op in ops)
    return 1.0 - busy / (len(trace) * (end - start))


def replayed_idle_fraction(trace: list[list[tuple[str, int, float, float]]]) -> float:
    """The idle fraction the fill-drain schedule would have with the traced operations' own durations and
    instant hand-offs: each operation starts as soon as its stage's previous one and its input are done
    (forward m after the stage before finished forward m; backward m after the stage after finished
    backward m). `idle_fraction(trace)` minus this is what the hand-offs cost (queues, thread wake-ups,
    bookkeeping between operations); this minus `bubble_fraction` is what unequal durations cost."""
    k = len(trace)
    durations = [{(kind, micro): end - start for kind, micro, start, end in ops} for ops in trace]
    finished: list[dict] = [{} for _ in range(k)]
    for i in range(k):  # forwards: stage by stage, in micro-batch order
        clock = 0.0
        for kind, micro, _, _ in trace[i]:
            if kind == "F":
                clock = max(clock, finished[i - 1][("F", micro)] if i else 0.0) + durations[i][("F", micro)]
                finished[i][("F", micro)] = clock
    for i in reversed(range(k)):  # backwards: from the last stage, in the traced order
        clock = max(t for (kind, _), t in finished[i].items() if kind == "F")
        for kind, micro, _, _ in trace[i]:
            if kind == "B":
                ready = finished[i + 1][("B", micro)] if i < k - 1 else 0.0
                clock = max(clock, ready) + durations[i][("B", micro)]
                finished[i][("B", micro)] = clock
    span = max(max(f.values()) for f in finished)
    busy = sum(sum(d.values()) for d in durations)
    return 1.0 - busy / (k * span)


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """GPipe's idle fraction with equal stage times: (K-1) / (M+K-1)."""
    return (stages - 1) / (micro_batches + stages - 1)


AUTO_MICRO_BATCHES = 4


def micro_batches_for(setting: int | str, devices: list[torch.device]) -> int:
    """train.pipeline.micro_batches for these stage devices. auto: 1 when every stage is on one GPU (it runs
    one stage's kernels at a time, so micro-batches overlap nothing and only multiply the launches), else 4
    (stages on several GPUs, or on CPU cores, work at the same time)."""
    if setting != "auto":
        return int(setting)
    one_gpu = len(set(devices)) == 1 and devices[0].type == "cuda"
    return 1 if one_gpu else AUTO_MICRO_BATCHES


def stage_devices(stages: int, num_gpus: int, local_rank: int, task_gpus: bool) -> list[str]:
    """The devices a rank's stages run on, as names ('cuda:i' among the GPUs this process sees, or 'cpu').

    A pure function of what the process sees, so the placement can be planned (and checked) before
    any device is touched. `num_gpus`: GPUs this process sees (0: CPU). Under Spark,
    CUDA_VISIBLE_DEVICES holds exactly the task's GPUs (`task_gpus`), so stages use all of them.
    Under torchrun/horovodrun every process sees every GPU of the node, so rank r takes GPUs
    [r*K, (r+1)*K) when they exist, otherwise it shares its one GPU (local_rank mod num_gpus).
    """
    if num_gpus == 0:
        return ["cpu"]
    if task_gpus:
        return [f"cuda:{i}" for i in range(num_gpus)]
    first = local_rank * stages
    if first + stages <= num_gpus:
        return [f"cuda:{first + i}" for i in range(stages)]
    return [f"cuda:{local_rank % num_gpus}"]
