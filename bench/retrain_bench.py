"""Scheduled retraining: what the retrain job and batch scoring cost beyond the work they wrap.

Data: `--days` days of the churn generator (`etl.sample_data.write_daily_churn`, `--rows` rows each, the
last day drifted), under bench/.data/retrain-<rows>/ (a fresh store every run); conf/retrain.yaml's
model, training and gate; one local[2] Spark session (its start-up excluded).

- Retrain overhead, in ONE run per day: `retrain(spark, cfg, [day])` wall time against the ETL + training
  time of the same run, as the date's record times them. The ratio `retrain_wall / (etl + train)` is
  what the lock, the registry copy, both evaluations, the decision and the records add (1.0: nothing).
- Predict: `ringtrain.jobs.predict.predict` of the last day's raw CSV with the champion (read, validate, encode,
  score with mapInArrow, write, publish), against the plain eager model's `model(num, cat)` + sigmoid on
  in-memory tensors of the same rows, already encoded (the ETL's shards of that day). Ratio:
  `predict_rows_per_s / plain_rows_per_s` (medians of `--repeats`).

    .venv/bin/python bench/retrain_bench.py                                    # 200k rows a day, 2 days
    .venv/bin/python bench/retrain_bench.py --rows 5000 --repeats 1 --out smoke-retrain   # smoke test
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, warn_if_busy, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="rows per day (default 200k)")
    p.add_argument("--days", type=int, default=2, help="days to retrain on, in order (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="predict runs and plain-model runs (medians)")
    p.add_argument("--out", default="retrain", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def render(r: dict) -> str:
    lines = [f"Retrain of {r['days']} days x {r['rows']:,} rows on local[2] ({r['machine']['cores']} cores):", "",
             "| day | decision | ETL s | training s | retrain wall s | wall / (ETL + training) |",
             "|---|---|---:|---:|---:|---:|"]
    for d in r["retrain"]:
        lines.append(f"| {d['date']} | {d['outcome']} | {d['etl_s']:.1f} | {d['train_s']:.1f} | {d['wall_s']:.1f} | "
                     f"**{d['ratio']:.3f}** |")
    p = r["predict"]
    lines += ["", f"Predict of {p['rows']:,} rows (medians of {r['repeats']}):", "",
              "| | seconds | rows/s | ratio |", "|---|---:|---:|---:|",
              f"| plain eager `model(num, cat)` on in-memory tensors | {p['plain_s']:.3f} | {p['plain_rows_per_s']:,.0f} | 1 |",
              f"| `ringtrain predict` (Spark, read to published output) | {p['predict_s']:.2f} | "
              f"{p['predict_rows_per_s']:,.0f} | **{p['ratio']:.4f}** |"]
    return "\n".join(lines)


def plain_rows_per_s(model, dataset_dir, repeats):
    """The eager model on the day's encoded rows, in memory: (rows, median seconds)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from ringtrain.manifest import load_manifest
    from ringtrain.training.data import Columns
    from ringtrain.training.models import build_model
    manifest = load_manifest(dataset_dir)
    cols = Columns.from_manifest(manifest)
    last = manifest.partitions[-1].splits
    tables = [pq.read_table(os.path.join(dataset_dir, s, x.file)) for s in last for x in last[s].shards]
    num = torch.from_numpy(np.concatenate([np.stack([t.column(c).to_numpy() for c in cols.numeric], 1) for t in tables]).astype(np.float32))
    cat = torch.from_numpy(np.concatenate([np.stack([t.column(c).to_numpy() for c in cols.categorical], 1) for t in tables]).astype(np.int64))
    eager = build_model(model.artifact["train_config"]["model"], len(cols.numeric),
                        list(manifest.features.categorical_cardinalities.values()))
    eager.load_state_dict(torch.load(os.path.join(model.folder, "state_dict.pt")))
    eager.eval()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.no_grad():
            torch.sigmoid(eager(num, cat).reshape(-1))
        runs.append(time.perf_counter() - t)
    return len(num), median(runs)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    from ringtrain.config import SourceConfig, load_config
    from ringtrain.etl.sample_data import write_daily_churn
    from ringtrain.jobs.predict import predict
    from ringtrain.jobs.retrain import Records, retrain
    from ringtrain.registry import Registry
    from ringtrain.training.scoring import resolve_model
    from ringtrain.spark import get_spark

    root = os.path.join(DATA, f"retrain-{args.rows}")
    shutil.rmtree(root, ignore_errors=True)
    days = [dict(date=f"2026-01-{i + 1:02d}", rows=args.rows, drift=1.0 if i == args.days - 1 and i else 0.0)
            for i in range(args.days)]
    dates = write_daily_churn(os.path.join(root, "raw"), days)
    cfg = load_config(os.path.join(ROOT, "conf", "retrain.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/raw/dt={{partition}}",
        "spark.conf={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false', spark.sql.shuffle.partitions: '8'}"])
    started = time.perf_counter()
    spark = get_spark(cfg.spark, barrier_slots=cfg.train.num_workers)
    spark_startup_s = time.perf_counter() - started
    spark.sparkContext.setLogLevel("ERROR")
    try:
        runs = []
        for date in dates:
            t = time.perf_counter()
            retrain(spark, cfg, [date])
            wall = time.perf_counter() - t
            record = Records(Registry(cfg.store.root, cfg.retrain.model)).load(date)
            etl_s, train_s = record["timings_s"]["etl"], record["timings_s"]["train"]
            runs.append({"date": date, "outcome": record["decision"]["outcome"], "etl_s": etl_s, "train_s": train_s,
                         "wall_s": round(wall, 2), "ratio": round(wall / (etl_s + train_s), 4)})
        model = resolve_model("champion", store_root=cfg.store.root, registry_name=cfg.retrain.model)
        source = SourceConfig(format="csv", path=os.path.join(root, "raw", f"dt={dates[-1]}"))
        predict_runs = []
        for i in range(args.repeats):
            t = time.perf_counter()
            scored = predict(spark, model, source, os.path.join(root, "scores"))
            predict_runs.append(time.perf_counter() - t)
        dataset_dir = read_dataset_dir(model)
        rows, plain_s = plain_rows_per_s(model, dataset_dir, args.repeats)
    finally:
        spark.stop()
    predict_s = median(predict_runs)
    result = {
        "rows": args.rows, "days": args.days, "repeats": args.repeats, "machine": info,
        "spark_startup_s": round(spark_startup_s, 3), "retrain": runs,
        "predict": {"rows": scored["rows_scored"], "plain_rows": rows, "predict_s": round(predict_s, 3),
                    "predict_runs_s": [round(x, 3) for x in predict_runs],
                    "predict_rows_per_s": round(scored["rows_scored"] / predict_s, 1),
                    "plain_s": round(plain_s, 4), "plain_rows_per_s": round(rows / plain_s, 1),
                    "ratio": round((scored["rows_scored"] / predict_s) / (rows / plain_s), 5)},
    }
    write_result(args.out, result, render)


def read_dataset_dir(model) -> str:
    from ringtrain.store import join, read_json
    return read_json(join(model.folder, "version.json"))["dataset_dir"]


if __name__ == "__main__":
    main()
