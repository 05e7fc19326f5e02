"""All-reduce bus bandwidth, Horovod vs torch.distributed (Gloo), against memcpy bandwidth.

Two ranks on this machine, as two processes whose environment is set exactly as the Spark launcher
sets it (training.rendezvous: Horovod's HTTP rendezvous for hvd.init(), MASTER_ADDR/PORT for
torch.distributed's Gloo group), each pinned to its own core as the training worker pins its rank
(train.pin_cores; --unpinned: not); both libraries live in the same two processes, one torch thread
each, so they are measured interleaved under the same conditions. For every float32 tensor size
(default 4 KiB to 64 MiB, x4 steps), each repeat times, in turn:

  - `hvd.allreduce_(t, op=Sum)` (in place, Horovod's Gloo ops),
  - `dist.all_reduce(t)` (in place, Gloo process group),
  - `dst.copy_(src)` on rank 0 alone (rank 1 waits at a barrier),
  - a loopback TCP exchange: over one plain socket between the two ranks, each rank sends the
    tensor's bytes and receives the peer's at the same time. A 2-rank all-reduce must move exactly
    that much each way (half in its reduce-scatter, half in its all-gather), so this is the ceiling
    any all-reduce over loopback TCP can reach here, with no reduction and no library,

each `iters` times in a row after a barrier (memcpy 20 x iters), where iters = clamp(budget / size, min, max).
time per op = max over ranks of the elapsed time / iters; median over repeats.
bus bandwidth = bytes x 2(n-1)/n / time (n = 2: bytes / time), for the TCP exchange bytes / time;
memcpy bandwidth = bytes / time.

    .venv/bin/python bench/allreduce_bench.py                                  # full run (about a minute)
    .venv/bin/python bench/allreduce_bench.py --max-bytes 262144 --repeats 1 --max-iters 50  # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, machine, median, warn_if_busy, write_result  # noqa: E402
from render import render_allreduce  # noqa: E402

RESULT = "ALLREDUCE_RESULT "
KINDS = ("horovod", "ddp", "memcpy", "tcp")
MEMCPY_ITERS = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-bytes", type=int, default=4 << 10)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--factor", type=int, default=4, help="step between sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-bytes", type=int, default=128 << 20,
                   help="bytes per timed repeat: iters = clamp(budget / size, min-iters, max-iters)")
    p.add_argument("--min-iters", type=int, default=3)
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--unpinned", action="store_true", help="do not pin each rank to its own core (train.pin_cores)")
    p.add_argument("--timeout", type=float, default=540, help="seconds before the ranks are killed")
    p.add_argument("--out", default="allreduce", help="results name: bench/results/<out>.json")
    p.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sizes(args) -> list[int]:
    out, n = [], args.min_bytes
    while n <= args.max_bytes:
        out.append(n)
        n *= args.factor
    return out


def iters_for(nbytes: int, args) -> int:
    return max(args.min_iters, min(args.max_iters, args.budget_bytes // nbytes))


# ----------------------------------------------------------------------------- in each rank

def rank_main(args) -> None:
    import torch
    import torch.distributed as dist
    import horovod.torch as hvd
    from ringtrain.training.environment import RankEnvironment, pin_to_cores
    if not args.unpinned:  # as the training worker does with train.pin_cores (the default)
        pin_to_cores(RankEnvironment.from_environ().cores(os.sched_getaffinity(0)))
    torch.set_num_threads(1)
    hvd.init()
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    rank = dist.get_rank()
    assert hvd.rank() == rank and hvd.size() == dist.get_world_size() == 2
    tcp = TcpExchange(rank, int(os.environ["ALLREDUCE_TCP_PORT"]))

    def timed(kind: str, t: torch.Tensor, src: torch.Tensor, iters: int) -> float:
        dist.barrier()
        started = time.perf_counter()
        if kind == "horovod":
            for _ in range(iters):
                hvd.allreduce_(t, op=hvd.Sum, name=f"bench.{t.numel()}")
        elif kind == "ddp":
            for _ in range(iters):
                dist.all_reduce(t)
        elif kind == "tcp":
            view = memoryview(t.numpy()).cast("B")
            for _ in range(iters):
                tcp.exchange(view, memoryview(src.numpy()).cast("B"))
        elif rank == 0:  # memcpy: one process alone, MEMCPY_ITERS times as many (it is that much faster)
            iters *= MEMCPY_ITERS
            for _ in range(iters):
                t.copy_(src)
        elapsed = time.perf_counter() - started
        dist.barrier()
        return elapsed / iters

    out = []
    for nbytes in sizes(args):
        numel = nbytes // 4
        t, src = torch.zeros(numel, dtype=torch.float32), torch.zeros(numel, dtype=torch.float32)
        iters = iters_for(nbytes, args)
        for kind in KINDS:  # warm-up: connections, Horovod's response cache, pages of the tensors
            timed(kind, t, src, max(1, iters // 5))
        for rep in range(args.repeats):
            for kind in KINDS:
                out.append({"bytes": nbytes, "kind": kind, "repeat": rep, "iters": iters,
                            "seconds_per_op": timed(kind, t, src, iters)})
    print(RESULT + json.dumps({"rank": rank, "timings": out}), flush=True)
    tcp.close()
    dist.destroy_process_group()
    hvd.shutdown()


class TcpExchange:
    """One loopback TCP connection between the two ranks; `exchange` sends and receives at the same time
    (a sender thread, the calling thread receives), as both directions of a 2-rank ring are busy at once."""

    def __init__(self, rank: int, port: int):
        if rank == 0:
            with socket.create_server(("127.0.0.1", port)) as server:
                self.sock, _ = server.accept()
        else:
            deadline = time.time() + 60
            while True:
                try:
                    self.sock = socket.create_connection(("127.0.0.1", port))
                    break
                except ConnectionRefusedError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.outbox: list = []
        self.ready, self.sent = threading.Semaphore(0), threading.Semaphore(0)
        threading.Thread(target=self._send_forever, daemon=True).start()

    def _send_forever(self) -> None:
        while True:
            self.ready.acquire()
            data = self.outbox.pop()
            if data is None:
                return
            self.sock.sendall(data)
            self.sent.release()

    def exchange(self, recv: memoryview, send: memoryview) -> None:
        self.outbox.append(send)
        self.ready.release()
        got, n = 0, len(recv)
        while got < n:
            got += self.sock.recv_into(recv[got:], n - got)
        self.sent.acquire()

    def close(self) -> None:
        self.outbox.append(None)
        self.ready.release()
        self.sock.close()


# ----------------------------------------------------------------------------- the parent

def run_ranks(args, argv: list[str]) -> list[dict]:
    from ringtrain.training.environment import RankEnvironment, free_port
    from ringtrain.training.rendezvous import HorovodRendezvous, TorchRendezvous, place
    host = "127.0.0.1"
    slots = place([host, host])
    horovod, torch_group = HorovodRendezvous(), TorchRendezvous()
    hvd_port, torch_port, tcp_port = horovod.start(slots), torch_group.start(slots), free_port(host)
    procs = []
    try:
        for rank in range(2):
            rank_env = RankEnvironment(rank=rank, size=2, local_rank=slots[rank].local_rank,
                                       local_size=slots[rank].local_size)
            env = {**os.environ, **rank_env.to_environ(), **horovod.environ(slots, rank, host, hvd_port),
                   **torch_group.environ(slots, rank, host, torch_port), "ALLREDUCE_TCP_PORT": str(tcp_port),
                   "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, os.path.abspath(__file__), "--rank-child"] + argv
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
        deadline = time.time() + args.timeout
        outputs = []
        for proc in procs:
            try:
                stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                raise SystemExit(f"all-reduce ranks did not finish within {args.timeout:.0f}s (--timeout)")
            if proc.returncode != 0:
                raise SystemExit(f"an all-reduce rank exited with code {proc.returncode}")
            line = next((x for x in stdout.splitlines() if x.startswith(RESULT)), None)
            if line is None:
                raise SystemExit("an all-reduce rank printed no result")
            outputs.append(json.loads(line[len(RESULT):]))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        horovod.stop()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.rank_child:
        rank_main(args)
        return 0
    info = machine()
    warn_if_busy(info)
    started = time.time()
    ranks = run_ranks(args, argv)
    # per (size, kind, repeat): the slower rank's time (memcpy: rank 0's, the only one that copies)
    per_op: dict[tuple, float] = {}
    for r in ranks:
        for m in r["timings"]:
            if m["kind"] == "memcpy" and r["rank"] != 0:
                continue
            key = (m["bytes"], m["kind"], m["repeat"])
            per_op[key] = max(per_op.get(key, 0.0), m["seconds_per_op"])
    n = 2
    rows = []
    for nbytes in sizes(args):
        t = {k: median(v for (b, kind, _), v in per_op.items() if b == nbytes and kind == k) for k in KINDS}
        bus = {k: nbytes * 2 * (n - 1) / n / t[k] for k in ("horovod", "ddp")}
        memcpy, tcp = nbytes / t["memcpy"], nbytes / t["tcp"]
        rows.append({"bytes": nbytes, "iters": iters_for(nbytes, args),
                     "seconds_per_op": t, "busbw_horovod": bus["horovod"], "busbw_ddp": bus["ddp"],
                     "memcpy_bw": memcpy, "tcp_bw": tcp, "horovod_over_memcpy": bus["horovod"] / memcpy,
                     "ddp_over_memcpy": bus["ddp"] / memcpy, "tcp_over_memcpy": tcp / memcpy,
                     "horovod_over_tcp": bus["horovod"] / tcp, "ddp_over_tcp": bus["ddp"] / tcp,
                     "horovod_over_ddp": bus["horovod"] / bus["ddp"]})
    params = {k: v for k, v in vars(args).items() if k != "rank_child"}
    result = {"machine": info, "params": params, "ranks": n, "dtype": "float32", "threads_per_rank": 1,
              "seconds": round(time.time() - started, 1), "sizes": rows,
              "raw": [{"bytes": b, "kind": k, "repeat": r, "seconds_per_op": v} for (b, k, r), v in sorted(per_op.items())]}
    write_result(args.out, result, render_allreduce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
