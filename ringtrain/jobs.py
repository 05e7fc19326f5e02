"""The jobs behind every door: `ringtrain etl|train|demo`, `spark-submit jobs/*.py`, and the tests.

Each job: build Spark, run, stop Spark in `finally`, return a summary dict.
"""
from __future__ import annotations

import logging
import time

from ringtrain.manifest import DatasetError, load_manifest
from ringtrain.etl.pipeline import run_etl
from ringtrain.etl.sample_data import write_churn_csv
from ringtrain.config import Config, MonitorConfig
from ringtrain.schema import ConfigError, to_dict
from ringtrain.spark import export_store_settings, get_spark
from ringtrain.store import RunStore, join
from ringtrain.training.contract import dry_run
from ringtrain.training.launcher import launch
from ringtrain.training.spec import WorkerSpec
from ringtrain.training.tasks import task_for_metrics

log = logging.getLogger("ringtrain")


def etl_job(cfg: Config, *, partition: str | None = None, force: bool = False) -> dict:
    export_store_settings(cfg.spark.conf)
    store = RunStore.create(cfg.store.root, cfg.store.run_id)
    started = time.time()
    spark = get_spark(cfg.spark)
    try:
        spark_s = time.time() - started
        summary = run_etl(spark, cfg.etl, store.dataset(cfg.etl.dataset), partition=partition, force=force)
        return {**summary, "spark_startup_s": round(spark_s, 1)}
    finally:
        spark.stop()


def train_job(cfg: Config, *, dataset_dir: str | None = None) -> dict:
    export_store_settings(cfg.spark.conf)  # the store is read before Spark starts
    store = RunStore.create(cfg.store.root, cfg.store.run_id).prepare()
    dataset_dir = dataset_dir or store.dataset(cfg.etl.dataset).latest()
    if dataset_dir is None:
        raise DatasetError(f"no published version of dataset {cfg.etl.dataset!r} under {store.root}/datasets; "
                           f"run `ringtrain etl --config ...` first")
    # Refuse an unpublished folder, and a model that breaks the contract, in seconds and before any executor starts.
    dry_run(cfg.train, dataset_dir, load_manifest(dataset_dir))
    spec = WorkerSpec(train=cfg.train, dataset_dir=dataset_dir, paths=store.paths(), run_id=store.run_id,
                      config=to_dict(cfg))
    started = time.time()
    spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
    try:
        spark_s = time.time() - started
        results = launch(spark.sparkContext, spec)
    finally:
        spark.stop()
    return {"run_dir": store.run_dir, "model_dir": store.model_dir, "dataset_dir": dataset_dir,
            "ranks": results, "spark_startup_s": round(spark_s, 1),
            "train_wall_s": round(time.time() - started - spark_s, 1)}


def demo_job(cfg: Config) -> dict:
    """Generate the embedded dataset (once), ETL it, train on it; return both summaries."""
    if cfg.demo is None:
        raise ConfigError("this config has no `demo` section; use conf/demo.yaml or run `etl` and `train`")
    store = RunStore.create(cfg.store.root, cfg.store.run_id)
    started = time.time()
    source = write_churn_csv(cfg.etl.source.path, cfg.demo.rows, cfg.demo.seed)
    log.info("demo data: %s", source)
    etl = etl_job(cfg)
    train = train_job(cfg.with_run_id(store.run_id), dataset_dir=etl["dataset_dir"])
    return {"etl": etl, "train": train, "wall_s": round(time.time() - started, 1)}


def monitor_direction(monitor: dict) -> str:
    return MonitorConfig(**monitor).direction()


def format_summary(kind: str, summary: dict) -> str:
    lines = []
    etl = summary.get("etl") if kind == "demo" else (summary if kind == "etl" else None)
    train = summary.get("train") if kind == "demo" else (summary if kind == "train" else None)
    if etl:
        q = etl["quarantined"]
        lines += [f"ETL       {etl['rows_read']:,} rows read, {etl['rows_good']:,} good, "
                  f"{sum(q.values()):,} quarantined{' ' + str(q) if q else ''}",
                  f"          splits {etl['split_rows']}; shards {etl['shards']} "
                  f"(train balance max/min {etl['balance_max_min']})",
                  *([f"          partition {etl['partition']} {etl['partition_rows']}; the version holds "
                     f"{len(etl['partitions'])} partition(s): {', '.join(etl['partitions'])}"]
                    if etl.get("partitions") else []),
                  f"          published {etl['dataset_dir']}"
                  f"{' (unchanged source: reused)' if etl.get('reused') else ''} in {etl['seconds']}s "
                  f"(Spark start-up {etl['spark_startup_s']}s)"]
    if train:
        r0 = train["ranks"][0]
        m = r0["metrics"]
        lines += [f"TRAIN     {len(train['ranks'])} ranks ({r0['engine']}, {r0['reader']} reader, {r0['device']}), "
                  f"{r0['epochs_run']} epochs, "
                  f"{r0['steps_per_epoch']} steps/epoch on every rank, {train['train_wall_s']}s "
                  f"(Spark start-up {train['spark_startup_s']}s, ring start-up {r0['ring_init_s']}s)",
                  f"          best epoch {r0['best_epoch'] + 1} of {r0['epochs_run']} by validation "
                  f"{r0['monitor']['metric']} ({'lower' if monitor_direction(r0['monitor']) == 'min' else 'higher'} "
                  f"is better)"
                  f"{', stopped early' if r0['stopped_early'] else ''}: the model is that epoch's",
                  *[f"          {line}" for line in task_for_metrics(m).summary_lines(m)],
                  f"          ranks' parameters identical: "
                  f"{len({r['param_sha256'] for r in train['ranks']}) == 1}",
                  f"          model {train['model_dir']}",
                  f"          metrics {join(train['run_dir'], 'metrics.json')} (+ metrics.png)"]
    if kind == "demo":
        lines.append(f"WALL      {summary['wall_s']}s end to end")
    return "\n".join(lines)
