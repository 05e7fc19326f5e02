"""How the ETL's and predict's cost grows with the rows: rows/s at 1M, 5M and 20M rows, and the driver's peak memory.

Data: the churn generator (`etl.sample_data.generate_churn`) in chunks of 1M rows, one CSV file per chunk (chunk i:
seed 7 + i, keys from i × 1M), so that 20M rows never sit in memory at once; size N is the first N/1M chunks
(the same files for every size) under bench/.data/rows/raw-<N>/ as links.

Per size, each job is its own process, as a scheduler runs it: `ringtrain etl` (conf/demo.yaml, local[2], a new
store per size) and `ringtrain predict` of those rows with one model (conf/demo.yaml's `tabular_mlp`, trained 1
epoch on the 1M ETL's dataset, not timed). Each process is sampled every 0.2 s for the resident memory of the
Python driver and of its JVM (in local mode the JVM holds the executors too, under the default 1 GiB heap):
their peaks are reported. Rows/s is the rows over the job's own seconds (the `seconds` of its summary: from the
job's start in a running Spark session to its publication), and the whole process's wall time is kept too.

    .venv/bin/python bench/rows_bench.py                                   # 1M, 5M, 20M: bench/results/rows.json
    .venv/bin/python bench/rows_bench.py --sizes 1 2 --out smoke-rows      # smoke test (millions of rows)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, quiet_logs, warn_if_busy, write_result  # noqa: E402

CHUNK = 1_000_000
BIN = os.path.dirname(sys.executable)
SPARK_CONF = "spark.conf={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false'}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20], help="millions of rows (default 1 5 20)")
    p.add_argument("--out", default="rows", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def churn_csv(path: str, rows: int, seed: int, first_id: int) -> str:
    """`rows` rows of the churn generator as the CSV file `path`, written once."""
    if not os.path.exists(path):
        from ringtrain.etl.sample_data import generate_churn
        os.makedirs(os.path.dirname(path), exist_ok=True)
        frame, _ = generate_churn(rows, seed, first_id=first_id)
        frame.to_csv(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
    return path


def chunks(count: int) -> list[str]:
    """The first `count` chunk files, written once."""
    folder = os.path.join(DATA, "rows", "chunks")
    return [churn_csv(os.path.join(folder, f"churn-{i:03d}.csv"), CHUNK, 7 + i, i * CHUNK) for i in range(count)]


def raw_folder(millions: int) -> str:
    folder = os.path.join(DATA, "rows", f"raw-{millions}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for path in chunks(millions):
        os.symlink(path, os.path.join(folder, os.path.basename(path)))
    return folder


def run_sampled(cmd: list[str]) -> dict:
    """Run `cmd`; its JSON summary, wall seconds, and the peak RSS (MiB) of the Python process and of the JVMs
    under it, sampled every 0.2 s."""
    import psutil
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"python": 0, "jvm": 0}
    done = threading.Event()

    def sample():
        me = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peaks["python"] = max(peaks["python"], me.memory_info().rss)
                jvm = sum(c.memory_info().rss for c in me.children(recursive=True) if "java" in c.name())
                peaks["jvm"] = max(peaks["jvm"], jvm)
            except psutil.Error:
                pass
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return {"summary": json.loads(stdout[stdout.index("{"):]), "wall_s": round(wall, 2),
            "peak_rss_mib": {k: round(v / 2**20) for k, v in peaks.items()}}


def cli(verb: str, sets: list[str], *extra: str) -> list[str]:
    return [os.path.join(BIN, "ringtrain"), verb, "--config", os.path.join(ROOT, "conf", "demo.yaml"), "--json",
            *[x for s in [*sets, SPARK_CONF] for x in ("--set", s)], *extra]


def render(r: dict) -> str:
    lines = [f"ETL and predict of N million churn rows, each its own process on local[2] "
             f"({r['machine']['cores']} cores), one run per size:", "",
             "| rows | job | seconds | rows/s | ÷ rows/s at the smallest size | process wall s | "
             "peak RSS Python driver (MiB) | peak RSS JVM (MiB) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for job in ("etl", "predict"):
        first = r["sizes"][0][job]["rows_per_s"]
        for size in r["sizes"]:
            m = size[job]
            lines.append(f"| {size['rows']:,} | {job} | {m['seconds']:.1f} | {m['rows_per_s']:,.0f} | "
                         f"{m['rows_per_s'] / first:.2f} | {m['wall_s']:.1f} | {m['peak_rss_mib']['python']:,} | "
                         f"{m['peak_rss_mib']['jvm']:,} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    root = os.path.join(DATA, "rows")
    model_dir = None
    sizes = []
    for millions in sorted(args.sizes):
        rows = millions * CHUNK
        raw = raw_folder(millions)
        store = os.path.join(root, f"store-{millions}")
        shutil.rmtree(store, ignore_errors=True)
        sets = [f"store.root={store}", f"etl.source.path={raw}"]
        etl = run_sampled(cli("etl", sets))
        assert etl["summary"]["rows_read"] == rows, etl["summary"]
        if model_dir is None:  # the model: 1 epoch on the first size's dataset, not timed
            train = run_sampled(cli("train", [*sets, "store.run_id=model", "train.epochs=1"]))
            model_dir = train["summary"]["model_dir"]
        out = os.path.join(root, f"scored-{millions}")
        shutil.rmtree(out, ignore_errors=True)
        predict = run_sampled(cli("predict", sets, "--model", model_dir, "--input", raw, "--output", out))
        scored = predict["summary"]
        assert scored["rows_scored"] + scored["rows_quarantined"] == rows, scored
        shutil.rmtree(out, ignore_errors=True)
        if millions != min(args.sizes):  # the first size's store holds the model
            shutil.rmtree(store, ignore_errors=True)
        etl_s = etl["summary"]["seconds"]
        sizes.append({"rows": rows,
                      "etl": {"seconds": etl_s, "rows_per_s": round(rows / etl_s), "wall_s": etl["wall_s"],
                              "peak_rss_mib": etl["peak_rss_mib"]},
                      "predict": {"seconds": scored["seconds"], "rows_per_s": round(rows / scored["seconds"]),
                                  "wall_s": predict["wall_s"], "peak_rss_mib": predict["peak_rss_mib"]}})
        print(json.dumps(sizes[-1]), flush=True)
    shutil.rmtree(os.path.join(root, f"store-{min(args.sizes)}"), ignore_errors=True)
    write_result(args.out, {"machine": info, "chunk_rows": CHUNK, "sizes": sizes}, render)


if __name__ == "__main__":
    main()
