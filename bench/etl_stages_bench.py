"""Where the ETL's time goes against plain Spark's, stage by stage: Spark's own stage times (from its UI's REST API)
of ringtrain's ETL and of the plain typed + sorted conversion (`etl_bench.py`'s main baseline), in one session,
interleaved; and the cost of each piece of the ETL's work, measured by running the plan up to that piece.

Data: `etl_bench.py`'s (the churn CSV, seed 7, under bench/.data/etl-<rows>/raw; made if missing). One local[2]
session (8 shuffle partitions, as etl_bench), one untimed warm-up of each job, then `--repeats` rounds of: the
ETL (`run_etl(..., force=True)`), the plain conversion, and the pieces:
- `read text`: the CSV read as text (every declared column a string, Spark's corrupt-record column), nothing kept;
- `+ validate`: the same, parsed and validated (`etl.steps.validated`), nothing kept;
- `+ fill cache`: the same, cached as the ETL caches it (CACHE_LEVEL, uncompressed) and counted;
- from that cache (dropped at the end of the round, so that the ETL never finds it): `encode`: the good rows
  encoded; `+ shuffle 1, sort, number`: numbered (`etl.shards.number_rows`); `+ shuffle 2`: moved to their shards'
  tasks; `+ sort`: and sorted within them, as `write_shards` does before its Python writers.
Each piece's job writes to Spark's `noop` sink, so it runs whole and writes nothing. A piece's cost is its time
minus the piece before it (medians). Per stage of the ETL and of the plain conversion: wall seconds, task seconds
(both cores), the task threads' CPU seconds, input, shuffle written; the ETL's stages named by the step that
started them (as etl_bench names them) and by what they read and write.

    .venv/bin/python bench/etl_stages_bench.py                         # 1M and 5M rows, 3 rounds (make bench)
    .venv-spark4/bin/python bench/etl_stages_bench.py --repeats 5 --out etl-stages-spark4
    .venv/bin/python bench/etl_stages_bench.py --rows 50000 --repeats 1 --out smoke-etl-stages   # smoke test
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, spark_session, warn_if_busy, write_result  # noqa: E402
from etl_bench import StepClock  # noqa: E402

PIECES = ("read text", "+ validate", "+ fill cache", "encode", "+ shuffle 1, sort, number", "+ shuffle 2", "+ sort")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000], help="sizes (default 1M 5M)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per size (medians)")
    p.add_argument("--out", default="etl-stages", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


class JobTags(StepClock):
    """etl_bench's StepClock, which also tags each Spark job with `<round>:<step>` (its job group)."""

    def __init__(self, sc, tag: str):
        super().__init__()
        self.sc, self.tag = sc, tag

    def _timed(self, fn, step):
        timed = super()._timed(fn, step)

        def tagged(*args, **kwargs):
            if not self.depth:
                self.sc.setJobGroup(f"{self.tag}:{step or self._step()}", self.tag)
            return timed(*args, **kwargs)
        return tagged


def stage_kind(step: str, stage: dict, first_read: bool) -> str:
    """What a stage does, from the step that started it (`plain` for the plain conversion), what it read and
    wrote, and whether it is the first stage of its step to read input (the ETL's first pass reads the CSV and
    fills the cache; its later stages read the cache)."""
    reads_input, reads_shuffle = stage["inputBytes"] > 0, stage["shuffleReadBytes"] > 0
    writes_shuffle = stage["shuffleWriteBytes"] > 0
    if step == "plain":
        if reads_shuffle:
            return "shuffle in, sort, write Parquet"
        return "read CSV, shuffle out" if writes_shuffle else "read CSV (header, types, sort sample)"
    if step == "read, validate, count":
        if reads_input and first_read and stage["inputBytes"] > 1e6:
            return "pass 1: read CSV, validate, fill cache"
        return "count (a pass over the cache)" if reads_input else "count (small)"
    if step == "fit":
        return "fit (passes over the cache)" if reads_input else "fit (small)"
    if step == "encode, shuffle, write":
        if reads_input and writes_shuffle:
            return "read cache, encode, shuffle 1 out"
        if reads_shuffle and writes_shuffle:
            return "shuffle 1 in, sort, number, shuffle 2 out"
        if reads_shuffle:
            return "shuffle 2 in, sort, Python writers"
        return "numbering plan (small)"
    return "CSV header" if step == "other" else step


def rest(url: str, path: str):
    with urllib.request.urlopen(f"{url}{path}") as r:
        return json.load(r)


def _seconds(stage: dict) -> float:
    def at(text):
        return datetime.datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    return at(stage["completionTime"]) - at(stage["submissionTime"])


def stage_table(url: str, app: str, tags: list[str]) -> dict[str, list[dict]]:
    """Per tag (`<job>-<round>`): its completed stages in order, with wall and task seconds and bytes."""
    jobs = rest(url, f"/api/v1/applications/{app}/jobs")
    stages = {s["stageId"]: s for s in rest(url, f"/api/v1/applications/{app}/stages?status=complete")}
    out: dict[str, list[dict]] = {tag: [] for tag in tags}
    read: set[tuple[str, str]] = set()  # (tag, step) that has had a stage reading input
    for job in sorted(jobs, key=lambda j: j["jobId"]):
        tag, _, step = (job.get("jobGroup") or "").partition(":")
        if tag not in out:
            continue
        for sid in sorted(job["stageIds"]):
            s = stages.get(sid)
            if s is None:  # skipped: its output was reused
                continue
            first_read = s["inputBytes"] > 1e6 and (tag, step) not in read
            if s["inputBytes"] > 1e6:
                read.add((tag, step))
            out[tag].append({
                "step": step, "kind": stage_kind(step, s, first_read),
                "wall_s": round(_seconds(s), 3), "task_s": round(s["executorRunTime"] / 1000, 3),
                "task_cpu_s": round(s["executorCpuTime"] / 1e9, 3),
                "input_mb": round(s["inputBytes"] / 1e6, 1), "shuffle_write_mb": round(s["shuffleWriteBytes"] / 1e6, 1),
                "tasks": s["numTasks"]})
    return out


def measure_size(spark, rows: int, repeats: int) -> dict:
    from pyspark.sql import functions as F

    from ringtrain.config import load_config
    from ringtrain.etl.features import SPLIT, apply_features, assign_split, fit_features
    from ringtrain.etl.pipeline import run_etl
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.etl.shards import ORDER, SHARD, ShardPlan, _sort_key, number_rows, shard_count
    from ringtrain.etl.sources import CORRUPT, read_source
    from ringtrain.etl.steps import (
        CACHE_LEVEL, count_rows, input_files, null_on_failure, read_tasks_in_whole_rounds, uncompressed_cache,
        validated)
    from ringtrain.etl.validate import REASON
    from ringtrain.layout import RunStore
    from ringtrain.manifest import SPLITS

    sc = spark.sparkContext
    root = os.path.join(DATA, f"etl-{rows}")
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/raw", f"demo.rows={rows}", "spark.master=local[2]"]).etl
    write_churn_csv(cfg.source.path, rows, 7)
    datasets = RunStore.create(root).dataset(cfg.dataset)
    scratch = os.path.join(root, "stages-baseline")

    def etl(tag):
        sc.setJobGroup(f"{tag}:other", tag)  # jobs outside the timed steps (the CSV's header)
        with JobTags(sc, tag).installed():
            run_etl(spark, cfg, datasets, force=True)
        for old in datasets.versions()[:-1]:
            shutil.rmtree(os.path.join(datasets.root, old), ignore_errors=True)

    def plain(tag):
        sc.setJobGroup(f"{tag}:plain", tag)
        df = spark.read.option("header", "true").option("inferSchema", "true").csv(cfg.source.path)
        df.orderBy(cfg.split.key).write.mode("overwrite").parquet(scratch)

    def noop(df):
        df.write.format("noop").mode("overwrite").save()

    with null_on_failure(spark), uncompressed_cache(spark):
        raw = read_source(spark, cfg.source, cfg.source_columns())
        files = input_files(spark, raw)

        def filled():
            with read_tasks_in_whole_rounds(spark, files):
                cached = validated(raw, cfg).persist(CACHE_LEVEL)
                return cached, count_rows(cached, cfg, cfg.seed)

        cache, counts = filled()  # for the plan; dropped below, so that the ETL's own first pass fills it
        good = assign_split(cache.where(F.col(REASON).isNull()).drop(REASON, CORRUPT), cfg.split)
        stats = fit_features(good.where(F.col(SPLIT) == "train"), cfg)
        plan = ShardPlan(splits=SPLITS, bucket_rows=counts.bucket_rows, row_group_rows=cfg.shards.row_group_rows,
                         shards={s: shard_count(sum(counts.bucket_rows[s]), cfg.shards.rows_per_shard,
                                                cfg.shards.num_shards, cfg.shards.max_world_size) for s in SPLITS})
        encoded = apply_features(good, stats)
        numbered = number_rows(encoded, plan, SPLIT, stats.key, cfg.seed)
        total = sum(plan.shards.values())
        moved = numbered.repartition(total, SHARD)
        cores = sc.defaultParallelism

        def in_rounds(fn):
            def run():
                with read_tasks_in_whole_rounds(spark, files):
                    fn()
            return run

        pieces = {
            "read text": in_rounds(lambda: noop(raw)),
            "+ validate": in_rounds(lambda: noop(validated(raw, cfg))),
            "+ fill cache": filled,  # kept for the pieces after it (the same plan: Spark finds it by plan)
            "encode": lambda: noop(encoded),
            "+ shuffle 1, sort, number": lambda: noop(numbered),
            "+ shuffle 2": lambda: noop(moved.coalesce(min(total, cores))),
            "+ sort": lambda: noop(moved.sortWithinPartitions(_sort_key(F.col(SHARD), total), ORDER, stats.key)
                                   .coalesce(min(total, cores))),
        }
        times = {name: [] for name in ("etl", "plain", *pieces)}
        tags = []
        try:
            # The ETL caches the same plan and drops it at its end: no cache may be left for it to find.
            cache.unpersist(blocking=True)
            etl(f"{rows}-warm-etl")
            plain(f"{rows}-warm-plain")
            for fn in pieces.values():
                fn()
            cache.unpersist(blocking=True)
            for i in range(repeats):
                for name, fn in (("etl", etl), ("plain", plain)):
                    tag = f"{rows}-{name}-{i}"
                    tags.append(tag)
                    started = time.perf_counter()
                    fn(tag)
                    times[name].append(time.perf_counter() - started)
                sc.setJobGroup("pieces", "pieces")
                for name, fn in pieces.items():
                    started = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - started)
                cache.unpersist(blocking=True)
        finally:
            cache.unpersist()
            shutil.rmtree(scratch, ignore_errors=True)
    time.sleep(1)  # the UI's listener catches up with the last stage
    stages = stage_table(sc.uiWebUrl, sc.applicationId, tags)
    medians = {name: round(median(t), 3) for name, t in times.items()}
    piece_cost, before = {}, 0.0
    for name in PIECES:
        before = 0.0 if not name.startswith("+") else before
        piece_cost[name] = round(medians[name] - before, 3)
        before = medians[name]
    return {"rows": rows, "seconds": medians, "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "piece_cost_s": piece_cost, "ratio": round(medians["plain"] / medians["etl"], 4), "stages": stages}


def _summed(stages: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for s in stages:
        row = out.setdefault(s["kind"], {"wall_s": 0.0, "task_s": 0.0, "task_cpu_s": 0.0, "input_mb": 0.0,
                                         "shuffle_write_mb": 0.0})
        for k in row:
            row[k] += s.get(k, 0.0)  # task_cpu_s: not in results before 2026-12-07T02
    return out


def render(r: dict) -> str:
    lines = []
    for size in r["sizes"]:
        rows, runs = size["rows"], size["runs_s"]
        lines += [f"{rows:,} rows: ETL {size['seconds']['etl']:.2f} s, plain Spark typed + sorted "
                  f"{size['seconds']['plain']:.2f} s, **ratio {size['ratio']:.2f}** (medians of {r['repeats']}; "
                  f"ETL runs {', '.join(f'{x:.2f}' for x in runs['etl'])}; plain "
                  f"{', '.join(f'{x:.2f}' for x in runs['plain'])}).", "",
                  "| job | stage (what it does) | wall s per round | task s (both cores) | task threads' CPU s | "
                  "input MB | shuffle written MB |", "|---|---|---|---:|---:|---:|---:|"]
        for job in ("etl", "plain"):
            cpu = all("task_cpu_s" in s for s in size["stages"][f"{rows}-{job}-0"])  # recorded since 2026-12-07
            rounds = [_summed(size["stages"][f"{rows}-{job}-{i}"]) for i in range(r["repeats"])]
            name = "ETL" if job == "etl" else "plain"
            for kind in rounds[-1]:
                walls = [x[kind]["wall_s"] for x in rounds if kind in x]
                last = rounds[-1][kind]
                task_cpu = f"{last['task_cpu_s']:.2f}" if cpu else ""
                lines.append(f"| {name} | {kind} | {', '.join(f'{w:.2f}' for w in walls)} | {last['task_s']:.2f} | "
                             f"{task_cpu} | {last['input_mb']:.0f} | {last['shuffle_write_mb']:.0f} |")
            idle = [t - sum(x["wall_s"] for x in rs.values()) for t, rs in zip(runs[job], rounds)]
            idle_s = ", ".join(f"{w:.2f}" for w in idle)
            lines.append(f"| {name} | driver alone (no stage running) | {idle_s} | | | | |")
        lines += ["", "| piece of the ETL's work | cost s (median) | its job's runs (s) |",
                  "|---|---:|---|"]
        for name in PIECES:
            lines.append(f"| {name} | {size['piece_cost_s'][name]:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in runs[name])} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    spark = spark_session(2, {"spark.ui.enabled": "true", "spark.ui.port": "0",  # its REST API: the stages
                              "spark.ui.retainedJobs": "100000", "spark.ui.retainedStages": "100000"})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        sizes = [measure_size(spark, rows, args.repeats) for rows in args.rows]
    finally:
        spark.stop()
    write_result(args.out, {"repeats": args.repeats, "master": "local[2]", "machine": info, "sizes": sizes}, render)


if __name__ == "__main__":
    main()
