"""Where a fresh process's fixed cost goes: the ETL of 10k rows, then of 1M, then of the same 1M again, in one
new local[2] session, once with the JVM's default JIT and once with the quick compiler only (C1,
-XX:TieredStopAtLevel=1), each in its own process.

Per ETL: its seconds (run_etl, in the running session), and the JVM's CPU seconds by thread: the JIT compiler
threads (those alive at the ETL's end: a lower bound), the driver's threads (py4j: planning, code generation,
class loading), the executors' task threads (the work on the rows), and the garbage collector; the classes
loaded and the seconds spent loading them (the JVM's own counters, by jcmd); and the Python workers' CPU
seconds. The rows are bench/rows_bench.py's first 1M chunk and 10k rows of the same generator (seed 99).

    .venv/bin/python bench/warmup_bench.py                         # bench/results/warmup.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, quiet_logs, warn_if_busy, write_result  # noqa: E402

MODES = {"default JIT": "", "C1 only": "-XX:TieredStopAtLevel=1"}
SMALL = 10_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="warmup", help="results name: bench/results/<out>.json")
    p.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)  # one process's measurements, as JSON
    return p.parse_args(argv)


def small_folder() -> str:
    from rows_bench import churn_csv
    folder = os.path.join(DATA, "rows", "small")
    churn_csv(os.path.join(folder, "churn.csv"), SMALL, 99, 50_000_000)
    return folder


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (group, CPU seconds so far)} of the JVM's live threads (from /proc: names and times)."""
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        if "Compiler" in name:  # "C2 CompilerThre", "C1 CompilerThre"
            group = "jit"
        elif name.startswith("Executor task"):
            group = "tasks"
        elif name.startswith(("GC Thread", "G1 ")) or name == "VM Thread":
            group = "gc"
        elif re.fullmatch(r"Thread-\d+", name) or name == "java":
            group = "driver"
        else:
            group = "other"
        threads[int(os.path.basename(task))] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return threads


def cpu_between(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by group between two thread_cpu samples: of the threads alive at the end (a thread that
    ended in between, e.g. a compiler thread the JVM retired, is left out: a lower bound)."""
    groups: dict[str, float] = {}
    for tid, (group, seconds) in after.items():
        groups[group] = groups.get(group, 0.0) + seconds - before.get(tid, (group, 0.0))[1]
    return {g: round(v, 1) for g, v in groups.items()}


def class_counters(pid: int) -> dict[str, float]:
    """Classes loaded and seconds spent loading them, from the JVM's performance counters (jcmd)."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return {}
    out = subprocess.run([jcmd, str(pid), "PerfCounter.print"], capture_output=True, text=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    hz = int(values.get("sun.os.hrt.frequency", "0") or 0)
    if not hz:
        return {}
    return {"classes": int(values.get("java.cls.loadedClasses", "0")),
            "class_load_s": int(values.get("sun.cls.time", "0")) / hz}


def child(mode: str) -> None:
    """In a new process (SPARK_SUBMIT_OPTS set by the parent): the three ETLs, one JSON line of figures."""
    import psutil
    from ringtrain.config import SparkConfig, load_config
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.layout import RunStore
    from ringtrain.spark import get_spark, scratch_conf
    quiet_logs()
    root = os.path.join(DATA, "warmup")
    shutil.rmtree(root, ignore_errors=True)
    spark = get_spark(SparkConfig(master="local[2]", app_name="ringtrain-bench",
                                  conf={**scratch_conf(os.path.join(DATA, "spark")),
                                        "spark.ui.showConsoleProgress": "false"}))
    spark.sparkContext.setLogLevel("ERROR")
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    jvm = psutil.Process(pid)
    steps = []
    small, million = small_folder(), os.path.join(DATA, "rows", "raw-1")  # both made by the parent
    for i, (label, folder) in enumerate([("10k rows, first", small), ("1M rows, second", million),
                                         ("1M rows, third", million)]):
        cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                          [f"store.root={root}/{i}", f"etl.source.path={folder}"])
        threads0, classes0 = thread_cpu(pid), class_counters(pid)
        workers0 = sum(sum(p.cpu_times()[:2]) for p in jvm.children(recursive=True))
        started = time.perf_counter()
        summary = run_etl(spark, cfg.etl, RunStore.create(cfg.store.root).dataset(cfg.etl.dataset), force=True)
        seconds = time.perf_counter() - started
        threads1, classes1 = thread_cpu(pid), class_counters(pid)
        workers1 = sum(sum(p.cpu_times()[:2]) for p in jvm.children(recursive=True))
        steps.append({"etl": label, "rows": summary["rows_read"], "seconds": round(seconds, 2),
                      "jvm_cpu_s": cpu_between(threads0, threads1),
                      "classes_loaded": classes1.get("classes", 0) - classes0.get("classes", 0),
                      "class_load_s": round(classes1.get("class_load_s", 0) - classes0.get("class_load_s", 0), 2),
                      "python_workers_cpu_s": round(workers1 - workers0, 1)})
    spark.stop()
    shutil.rmtree(root, ignore_errors=True)
    print("RESULT " + json.dumps({"mode": mode, "steps": steps}), flush=True)


def render(r: dict) -> str:
    lines = [f"One new local[2] session per JIT mode ({r['machine']['cores']} cores): three ETLs in a row. JVM CPU "
             "seconds by thread group during each ETL:", "",
             "| JIT | ETL | seconds | JIT compiler CPU s | driver threads CPU s | task threads CPU s | GC CPU s | "
             "classes loaded (s loading) | Python workers CPU s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        for s in run["steps"]:
            cpu = s["jvm_cpu_s"]
            lines.append(f"| {run['mode']} | {s['etl']} | {s['seconds']:.1f} | {cpu.get('jit', 0):.1f} | "
                         f"{cpu.get('driver', 0):.1f} | {cpu.get('tasks', 0):.1f} | {cpu.get('gc', 0):.1f} | "
                         f"{s['classes_loaded']:,} ({s['class_load_s']:.1f}) | {s['python_workers_cpu_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args.child)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    from rows_bench import raw_folder
    raw_folder(1), small_folder()  # the data first, outside the timed processes
    runs = []
    for mode, opts in MODES.items():
        env = {**os.environ, "SPARK_SUBMIT_OPTS": opts}
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {mode} process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
        runs.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(runs[-1]), flush=True)
    write_result(args.out, {"machine": info, "runs": runs}, render)


if __name__ == "__main__":
    main()
