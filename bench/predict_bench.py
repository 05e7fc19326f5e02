"""`ringtrain predict` against its I/O floor and against the scoring job a Spark user would write instead.

Data: the churn generator (`etl.sample_data.write_churn_csv`, seed 7) writes `--rows` rows as CSV under
bench/.data/predict-<rows>/raw. The model: conf/demo.yaml's `tabular_mlp`, trained 1 epoch by the real ETL and
training on `--train-rows` rows of the same generator (seed 8) in the same store; its exported program and
features.json are what all three jobs use. One local[2] session (UI off, 8 shuffle partitions); its start-up and
the model's training are not timed. Per round, interleaved, each job from the same CSV or encoded rows to Parquet:

- `predict`: `ringtrain.jobs.predict.predict` (read the declared columns, validate every value, quarantine,
  encode with the frozen features, score with mapInArrow, write, checksum, publish);
- `floor`: plain Spark, the I/O floor: read the same CSV with the declared types (a schema, no inference) and
  write Parquet; no validation, no encoding, no model;
- `peer`: `pyspark.ml.functions.predict_batch_udf` with the same exported program, over the same rows already
  encoded (written once, untimed, by the ETL's own `apply_features` with the model's features.json) and
  written as Parquet with the key and the score: the scoring job a Spark user would write.

Ratios are rows/s ÷ rows/s of medians over `--repeats` rounds: predict ÷ floor (issue 21 asks >= 0.5), and
predict ÷ peer (whose input is already encoded: it reads fewer bytes and validates and encodes nothing).
Where predict's time goes: in the same rounds, predict's own plan run up to each piece of its work (`pieces`).

    .venv/bin/python bench/predict_bench.py                                  # 1M rows, 3 rounds (make bench)
    .venv/bin/python bench/predict_bench.py --rows 5000000 --out predict-5m
    .venv/bin/python bench/predict_bench.py --rows 20000 --repeats 1 --out smoke-predict   # smoke test
    .venv/bin/python bench/predict_bench.py --conf spark.sql.codegen.hugeMethodLimit=65535 --label before \
        --out predict-before                                                 # Spark's default codegen limit
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DATA, ROOT, machine, median, quiet_logs, settings, warn_if_busy, write_result  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default 1M)")
    p.add_argument("--train-rows", type=int, default=50_000, help="rows the model is trained on (default 50k)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for the timed session (recorded), e.g. "
                        "spark.sql.codegen.hugeMethodLimit=65535: Spark's default, as before ringtrain set its own")
    p.add_argument("--label", default="after", help="what code this measures (recorded; e.g. before, after)")
    p.add_argument("--out", default="predict", help="results name: bench/results/<out>.json")
    return p.parse_args(argv)


def render(r: dict) -> str:
    rows = r["rows"]
    lines = [f"Scoring {rows:,} CSV rows on local[2] ({r['machine']['cores']} cores), medians of {r['repeats']} "
             f"interleaved rounds:", "",
             "| job | seconds | rows/s | predict ÷ it | per round (s) |", "|---|---:|---:|---:|---|"]
    for name, what in (("predict", "`ringtrain predict` (CSV → validated, encoded, scored, published Parquet)"),
                       ("floor", "I/O floor: Spark, CSV with the declared types → Parquet"),
                       ("peer", "`predict_batch_udf`, same program, on the encoded rows → Parquet")):
        job = r["jobs"][name]
        ratio = "" if name == "predict" else f"**{r['ratios'][name]:.3f}**"
        lines.append(f"| {what} | {job['seconds']:.2f} | {rows / job['seconds']:,.0f} | {ratio} | "
                     f"{', '.join(f'{s:.2f}' for s in job['runs_s'])} |")
    if all(name in r["jobs"] for name in PIECES):
        lines += ["", "Where predict's time goes (its own plan, run up to each piece; cost: the piece's median minus "
                  "the one before):", "", "| piece | cost s | its job's runs (s) |", "|---|---:|---|"]
        before = 0.0
        for name in (*PIECES, "predict"):
            job = r["jobs"][name]
            what = "+ score, write Parquet, publish (predict itself)" if name == "predict" else name
            lines.append(f"| {what} | {job['seconds'] - before:.2f} | "
                         f"{', '.join(f'{s:.2f}' for s in job['runs_s'])} |")
            before = job["seconds"]
    return "\n".join(lines)


def train_model(root: str, rows: int) -> str:
    """ETL and 1 epoch of training of conf/demo.yaml on `rows` rows (seed 8); returns the model folder."""
    from ringtrain.config import load_config
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.jobs.commands import etl_job, train_job
    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [
        f"store.root={root}", f"etl.source.path={root}/train-raw", "store.run_id=model", "train.epochs=1",
        "spark.conf={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false'}"])
    write_churn_csv(cfg.etl.source.path, rows, 8)
    etl_job(cfg)
    return train_job(cfg)["model_dir"]


def floor_job(spark, source: str, specs, out: str) -> None:
    from ringtrain.etl.sources import SPARK_TYPES
    from pyspark.sql.types import StructField, StructType
    schema = StructType([StructField(c.name, SPARK_TYPES[c.type]) for c in specs])
    spark.read.schema(schema).option("header", True).csv(source).write.mode("overwrite").parquet(out)


def encode_once(spark, model, source: str, out: str) -> list[str]:
    """The good rows encoded by the ETL's own functions with the model's features, as Parquet; returns the
    model's input columns in order (num, cat)."""
    from ringtrain.config import SourceConfig
    from ringtrain.etl.features import FeatureStats, apply_features
    from ringtrain.etl.sources import read_source
    from ringtrain.etl.validate import REASON, parse_and_validate
    from ringtrain.etl.sources import CORRUPT
    from ringtrain.jobs.predict import model_columns
    specs, _ = model_columns(model)
    stats = FeatureStats.from_json(model.features())
    raw = read_source(spark, SourceConfig(format="csv", path=source), specs)
    checked = parse_and_validate(raw, specs, None, raw_strings=True, key=stats.key)
    good = apply_features(checked.where(checked[REASON].isNull()).drop(REASON, CORRUPT), stats, key_as_string=False)
    inputs = model.artifact["inputs"]
    columns = [c for name in ("num", "cat") if name in inputs for c in inputs[name]["columns"]]
    good.select(stats.key, *columns).write.mode("overwrite").parquet(out)
    return columns


def peer_job(spark, model, encoded: str, columns: list[str], key: str, out: str) -> None:
    """Spark's own batch-inference UDF: the exported program, loaded once per Python worker."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType
    inputs = model.artifact["inputs"]
    widths = [len(inputs[name]["columns"]) for name in ("num", "cat") if name in inputs]
    dtypes = [inputs[name]["dtype"] for name in ("num", "cat") if name in inputs]
    folder, features, artifact = model.folder, model.features_json, model.artifact

    def make_predict_fn():
        import numpy as np
        import torch
        from ringtrain.training.scoring import ModelFiles, load_program
        module = load_program(ModelFiles(folder, features, artifact), torch.device("cpu"))

        def scores(*inputs):  # one [rows, width] array per model input (num, cat)
            with torch.no_grad():
                logits = module(*(torch.from_numpy(np.ascontiguousarray(a, dtype=d)) for a, d in zip(inputs, dtypes)))
            return torch.sigmoid(logits.reshape(-1)).double().numpy()

        # predict_batch_udf counts the function's named parameters to match the input columns.
        if len(widths) == 2:
            return lambda num, cat: scores(num, cat)
        return lambda num: scores(num)

    # Multiple inputs: one array column each, with its shape (predict_batch_udf's own convention).
    score = predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=8192,
                              input_tensor_shapes=[[w] for w in widths])
    from pyspark.sql import functions as F
    groups, at = [], 0
    for width in widths:
        groups.append(F.array(*columns[at:at + width]))
        at += width
    df = spark.read.parquet(encoded)
    df.select(key, score(*groups).alias("score")).write.mode("overwrite").parquet(out)


PIECES = ("read text", "+ validate, encode", "+ Arrow to Python workers")


def pieces(spark, model, source: str) -> dict:
    """predict's own plan run up to a piece of its work, each to Spark's `noop` sink (it runs whole, writes
    nothing): the input read as text; validated and encoded (`jobs.predict.scoring_input`, what predict scores);
    and handed to Python workers that only count the rows. predict minus the last: scoring, writing, publishing."""
    import pyarrow as pa
    from ringtrain.config import SourceConfig
    from ringtrain.etl.features import FeatureStats
    from ringtrain.etl.steps import null_on_failure
    from ringtrain.jobs.predict import input_columns, model_columns, scoring_input
    src = SourceConfig(format="csv", path=source)
    specs, label = model_columns(model)
    specs, present = input_columns(spark, src, specs, label)
    raw, rows, _ = scoring_input(spark, src, specs, present, FeatureStats.from_json(model.features()), [])

    def count(batches):
        yield pa.RecordBatch.from_pylist([{"rows": sum(b.num_rows for b in batches)}])

    def ansi_off(job):  # as predict runs its queries
        def run(out):
            with null_on_failure(spark):
                job()
        return run
    return {
        "read text": ansi_off(lambda: raw.write.format("noop").mode("overwrite").save()),
        "+ validate, encode": ansi_off(lambda: rows.write.format("noop").mode("overwrite").save()),
        "+ Arrow to Python workers": ansi_off(lambda: rows.mapInArrow(count, "rows long").collect()),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_logs()
    info = machine()
    warn_if_busy(info)
    from _common import spark_session
    from ringtrain.config import SourceConfig
    from ringtrain.etl.features import FeatureStats
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.jobs.predict import model_columns, predict
    from ringtrain.training.scoring import resolve_model

    root = os.path.join(DATA, f"predict-{args.rows}")
    shutil.rmtree(os.path.join(root, "out"), ignore_errors=True)
    model_dir = train_model(os.path.join(root, "model-store"), args.train_rows)
    model = resolve_model(model_dir, store_root=root, registry_name=None)
    source = write_churn_csv(os.path.join(root, "raw"), args.rows, 7)
    specs, _ = model_columns(model)
    key = FeatureStats.from_json(model.features()).key
    spark = spark_session(2, settings(args.conf))
    runs = {name: [] for name in ("predict", "floor", "peer", *PIECES)}
    try:
        encoded = os.path.join(root, "encoded")
        columns = encode_once(spark, model, source, encoded)
        jobs = {
            "predict": lambda out: predict(spark, model, SourceConfig(format="csv", path=source), out),
            "floor": lambda out: floor_job(spark, source, specs, out),
            "peer": lambda out: peer_job(spark, model, encoded, columns, key, out),
            **pieces(spark, model, source),
        }
        for name, job in jobs.items():  # warm-up, untimed
            job(os.path.join(root, "out", f"warm-{name}"))
        scored = None
        for i in range(args.repeats):
            for name, job in jobs.items():
                out = os.path.join(root, "out", f"{name}-{i}")
                t = time.perf_counter()
                result = job(out)
                runs[name].append(time.perf_counter() - t)
                if name == "predict":
                    scored = result
                shutil.rmtree(out, ignore_errors=True)
    finally:
        spark.stop()
    assert scored is not None and scored["rows_scored"] + scored["rows_quarantined"] == args.rows, scored
    medians = {name: median(times) for name, times in runs.items()}
    result = {
        "rows": args.rows, "train_rows": args.train_rows, "repeats": args.repeats, "machine": info,
        "label": args.label, "conf": settings(args.conf),
        "rows_scored": scored["rows_scored"], "rows_quarantined": scored["rows_quarantined"],
        "jobs": {name: {"seconds": round(medians[name], 3), "runs_s": [round(t, 3) for t in runs[name]]}
                 for name in runs},
        "ratios": {name: round(medians[name] / medians["predict"], 4) for name in ("floor", "peer")},
    }
    write_result(args.out, result, render)


if __name__ == "__main__":
    main()
