"""The jobs behind every door: `ringtrain etl|train|demo`, `spark-submit jobs/*.py`, and the tests.

Each job: build Spark, run, stop Spark in `finally`, return a summary dict.
"""
from __future__ import annotations

import logging
import time

from ringtrain.manifest import DatasetError, load_manifest
from ringtrain.etl.pipeline import run_etl
from ringtrain.etl.sample_data import write_churn_csv
from ringtrain.config import Config
from ringtrain.schema import ConfigError
from ringtrain.spark import export_store_settings, get_spark
from ringtrain.layout import RunStore
from ringtrain.store import join
from ringtrain.training.contract import dry_run
from ringtrain.training.launcher import run_training
from ringtrain.training.spec import FunctionResult
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
    store = RunStore.create(cfg.store.root, cfg.store.run_id)
    dataset_dir = dataset_dir or store.dataset(cfg.etl.dataset).latest()
    if dataset_dir is None:
        raise DatasetError(f"no published version of dataset {cfg.etl.dataset!r} under {store.root}/datasets; "
                           f"run `ringtrain etl --config ...` first")
    # Refuse an unpublished folder, and a model that breaks the contract, in seconds and before any executor starts.
    manifest = load_manifest(dataset_dir)
    if cfg.train.function is None:  # a user's function builds its own model: there is no contract to check
        dry_run(cfg.train, dataset_dir, manifest)
    started = time.time()
    spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
    try:
        spark_s = time.time() - started
        results = run_training(spark, cfg, store, dataset_dir)
    finally:
        spark.stop()
    return {"run_dir": store.run_dir, "model_dir": store.model_dir, "dataset_dir": dataset_dir,
            "ranks": results, "spark_startup_s": round(spark_s, 1),
            "train_wall_s": round(time.time() - started - spark_s, 1),
            **({"function": cfg.train.function} if cfg.train.function else {})}


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


def retrain_job(cfg: Config, *, dates: list[str], force: bool = False) -> dict:
    from ringtrain.jobs.retrain import model_lock, retrain
    if cfg.retrain is None:
        raise ConfigError("this config has no `retrain` section (the registry name and the promotion gate); "
                          "see conf/retrain.yaml")
    with model_lock(cfg):  # before Spark starts: a second retrain exits 75 at once
        started = time.time()
        spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
        try:
            spark_s = round(time.time() - started, 1)
            return {**retrain(spark, cfg, dates, force=force), "spark_startup_s": spark_s}
        finally:
            spark.stop()


def evaluate_job(cfg: Config, *, model_ref: str, dataset_dir: str | None, split: str) -> dict:
    """No Spark: the split's shards are read in this process."""
    from ringtrain.training.scoring import evaluate, resolve_model
    store = RunStore.create(cfg.store.root)
    model = resolve_model(model_ref, store_root=store.root, registry_name=registry_name(cfg))
    dataset_dir = dataset_dir or store.dataset(cfg.etl.dataset).latest()
    if dataset_dir is None:
        raise DatasetError(f"no published version of dataset {cfg.etl.dataset!r}: pass --dataset DIR")
    return {"model": model.folder, "version": model.version, **evaluate(model, dataset_dir, split)}


def predict_job(cfg: Config, *, model_ref: str, input_path: str, output_dir: str, input_format: str | None,
                partition: str | None = None, keep: list[str] = ()) -> dict:
    import dataclasses
    from ringtrain.jobs.predict import predict
    from ringtrain.training.scoring import resolve_model
    store = RunStore.create(cfg.store.root)
    model = resolve_model(model_ref, store_root=store.root, registry_name=registry_name(cfg))
    fmt = input_format or cfg.etl.source.format
    source = dataclasses.replace(cfg.etl.source, format=fmt, path=None if fmt == "table" else input_path,
                                 table=input_path if fmt == "table" else None, partition_column=None,
                                 options=cfg.etl.source.options if fmt == cfg.etl.source.format else {})
    spark = get_spark(cfg.spark)
    try:
        return predict(spark, model, source, output_dir, partition=partition, keep=keep)
    finally:
        spark.stop()


def models_job(cfg: Config, *, action: str, ref: str | None, alias: str, reason: str | None) -> dict:
    from ringtrain.registry import Registry
    name = registry_name(cfg)
    if name is None:
        raise ConfigError("`ringtrain models` needs retrain.model in the config: the registry name")
    registry = Registry(RunStore.create(cfg.store.root).root, name)
    if action == "promote":
        registry.promote(ref, alias=alias, reason=reason or "manual promotion (ringtrain models promote)")
    elif action == "rollback":
        registry.rollback(alias=alias, reason=reason or "manual rollback (ringtrain models rollback)")
    state = registry.state()
    if action == "show":
        folder = registry.resolve(ref or alias)
        version = folder.rstrip("/").rsplit("/", 1)[-1]
        return {"model": name, "version": version, "folder": folder, "info": state.versions[version],
                "aliases": [a for a, v in state.aliases().items() if v == version],
                "events": [e for e in state.events if version in (e.get("registers"), e.get("version"))]}
    return {"model": name, "root": registry.root, "aliases": state.aliases(), "versions": state.versions,
            "history": [{k: e.get(k) for k in ("seq", "time_utc", "action", "date", "version", "registers",
                                              "promoted", "champion_before", "champion_after", "reason")}
                        for e in state.events]}


def registry_name(cfg: Config) -> str | None:
    return cfg.retrain.model if cfg.retrain is not None else None


def format_summary(kind: str, summary: dict) -> str:
    """The summary of `etl`, `train` or `demo` (an ETL's and a training's lines)."""
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
    if train and isinstance(train["ranks"][0], FunctionResult):
        ranks = train["ranks"]
        lines += [f"TRAIN     {len(ranks)} ranks ran {train['function']}, {train['train_wall_s']}s "
                  f"(Spark start-up {train['spark_startup_s']}s, ring start-up {ranks[0].ring_init_s}s)",
                  *[f"          rank {r.rank} returned {_short(repr(r.load()))}"
                    + (f"; last metrics {r.metrics}" if r.metrics else "") for r in ranks],
                  f"          run {train['run_dir']}"]
    elif train:
        r0 = train["ranks"][0]  # RankResult
        m = r0.metrics
        lines += [f"TRAIN     {len(train['ranks'])} ranks ({r0.engine}, {r0.reader} reader, {r0.device}), "
                  f"{r0.epochs_run} epochs, "
                  f"{r0.steps_per_epoch} steps/epoch on every rank, {train['train_wall_s']}s "
                  f"(Spark start-up {train['spark_startup_s']}s, ring start-up {r0.ring_init_s}s)",
                  f"          best epoch {r0.best_epoch + 1} of {r0.epochs_run} by validation "
                  f"{r0.monitor.metric} ({'lower' if r0.monitor.direction() == 'min' else 'higher'} "
                  f"is better)"
                  f"{', stopped early' if r0.stopped_early else ''}: the model is that epoch's",
                  *[f"          {line}" for line in task_for_metrics(m).summary_lines(m)],
                  f"          ranks' parameters identical: "
                  f"{len({r.param_sha256 for r in train['ranks']}) == 1}",
                  f"          model {train['model_dir']}",
                  f"          metrics {join(train['run_dir'], 'metrics.json')} (+ metrics.png)"]
    if kind == "demo":
        lines.append(f"WALL      {summary['wall_s']}s end to end")
    return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_retrain(summary: dict) -> str:
    from ringtrain.config import lower_is_better
    from ringtrain.jobs.retrain import baseline
    lines = []
    for r in summary["dates"]:
        d = r["decision"]
        head = f"RETRAIN   {summary['model']} {r['date']}: "
        if r.get("skipped"):
            lines.append(head + f"already done ({d['outcome']}, event {d['event']}): nothing to do; --force redoes it")
            continue
        m = d["metric"]
        champ = f"{d['champion']['overall'][m]:.4f} ({d['champion_before']})" if d["champion"] else "none"
        floor, what = baseline(m, d["challenger"]["overall"])
        t = r["timings_s"]
        lines += [head + (f"PROMOTED {d['version']} to champion" if d["outcome"] == "promoted"
                          else f"champion kept ({d['champion_after'] or 'none'}); {d['version']} registered")
                  + (" (resumed)" if r.get("resumed") else ""),
                  f"          holdout {r['dataset_version']} {d['challenger']['split']} "
                  f"({d['challenger']['overall']['rows']:,} rows): {m} challenger "
                  f"{d['challenger']['overall'][m]:.4f}, champion {champ}",
                  f"          gate metric {m} ({'lower' if lower_is_better(m) else 'higher'} is better); "
                  f"baseline {floor:.4f} ({what})",
                  f"          reason: {d['reason']}",
                  f"          ETL {t.get('etl')}s, training {t.get('train')}s, evaluation {t.get('evaluate')}s"
                  + (f"; MLflow: {r['mlflow']}" if r.get("mlflow") else "")]
    lines.append(f"CHAMPION  {summary['champion'] or 'none'}; plot {summary['plot']}; {summary['wall_s']}s")
    return "\n".join(lines)


def evaluate_metrics(m: dict) -> str:
    """One model's metrics on a split, for the evaluate summary, per task."""
    task = m.get("task", "binary")
    if task == "multiclass":
        return (f"accuracy {m['accuracy']:.4f} (majority class {m['baseline_accuracy']:.4f}), macro-F1 "
                f"{m['macro_f1']:.4f} (majority class {m['baseline_macro_f1']:.4f}), log-loss {m['loss']:.4f} "
                f"(prior {m['baseline_loss']:.4f})")
    if task == "regression":
        return (f"RMSE {m['rmse']:.4f} (train mean {m['baseline_rmse']:.4f}), MAE {m['mae']:.4f} (train mean "
                f"{m['baseline_mae']:.4f}), R^2 {m['r2']:.4f}")
    return (f"accuracy {m['accuracy']:.4f} (baseline {m['baseline_accuracy']:.4f}), AUC {m['auc']:.4f}, "
            f"log-loss {m['loss']:.4f} (prior {m['baseline_loss']:.4f})")


def format_evaluate(summary: dict) -> str:
    o = summary["overall"]
    lines = [f"EVALUATE  {summary['version'] or summary['model']} on {summary['split']} of {summary['dataset_dir']}",
             f"          {o['rows']:,} rows: {evaluate_metrics(o)}"]
    for name, p in summary["partitions"].items():
        lines.append(f"          partition {name}: {p['rows']:,} rows, {evaluate_metrics(p)}")
    return "\n".join(lines)


def format_predict(summary: dict) -> str:
    q = summary["quarantine_reasons"]
    return "\n".join([
        f"PREDICT   {summary['rows_scored']:,} rows scored with {summary['model_version'] or 'the model'}, "
        f"{summary['rows_quarantined']:,} quarantined{' ' + str(q) if q else ''}",
        f"          columns {', '.join(summary['columns'])}; partition {summary['partition']}",
        f"          published {summary['output_dir']} ({summary['files']} files) in {summary['seconds']}s"])


def format_models(summary: dict) -> str:
    if "history" not in summary:
        info = summary["info"]
        return (f"MODEL     {summary['model']} {summary['version']} {summary['aliases'] or ''}\n"
                f"          date {info.get('date')}, run {info.get('run_id')}, dataset {info.get('dataset_version')}\n"
                f"          metrics {info.get('metrics')}\n          {summary['folder']}")
    lines = [f"MODEL     {summary['model']}: aliases {summary['aliases'] or 'none'}; "
             f"{len(summary['versions'])} version(s) under {summary['root']}"]
    for e in summary["history"]:
        what = e["action"] + (f" {e['date']}" if e.get("date") else "")
        version = e.get("registers") or e.get("version")
        lines.append(f"  {e['seq']:>4} {e['time_utc']} {what:<18} {version}  {e['reason']}")
    return "\n".join(lines)
