"""Batch scoring on Spark executors: `ringtrain predict --model champion --input SRC --output DIR`.

Rows are encoded exactly as in training, by the ETL's own Spark functions: `read_source` (the model's
declared columns; the label column may be present or not), `parse_and_validate`, then `apply_features`
with the model's frozen features.json. Rows that fail validation are not scored: they go to
quarantine with their reason. The good rows are scored with `mapInArrow`: each task loads the model
once (on its GPU when Spark gave it one), scores Arrow batches, and writes its own Parquet file
through the store functions, so the output can live on any store.

Output folder:
    part-NNNNN.parquet            key column (its declared type) + `score` (the probability, for binary)
    quarantine/part-NNNNN.parquet the rejected rows as text, with `_reason`
    _manifest.json                model, input, counts, every file with rows and sha256
    _SUCCESS                      written last: the output is published

A rerun first removes `_SUCCESS` and `_manifest.json` (the old output is no longer published), then
the old files, then writes the new ones: readers that wait for `_SUCCESS` never see a mix. The same
input and model give byte-identical files (Spark splits the same files the same way).
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ringtrain.config import ColumnSpec, SourceConfig
from ringtrain.errors import BadDataError, ConfigError
from ringtrain.etl.features import FeatureStats, apply_features
from ringtrain.etl.steps import null_on_failure
from ringtrain.etl.sources import CORRUPT, read_source, source_path
from ringtrain.etl.validate import REASON, parse_and_validate
from ringtrain.schema import build
from ringtrain.training.scoring import TASK_SCORES, ModelFiles
from ringtrain.publish import atomic_write_bytes, atomic_write_json
from ringtrain.store import join, listdir, open_output, read_bytes, remove, rmtree

log = logging.getLogger("ringtrain.jobs.predict")
SUCCESS, MANIFEST = "_SUCCESS", "_manifest.json"
_FILES = "part int, rows long, sha256 string, file string"


def model_columns(model: ModelFiles) -> tuple[list[ColumnSpec], str]:
    """The columns the model was trained on (from its artifact's config) and the label column's name."""
    etl = model.artifact.get("config", {}).get("etl")
    if not etl:
        raise BadDataError(f"{model.folder}/artifact.json records no etl config: this model predates scoring "
                           f"support; retrain it with this version of ringtrain")
    return [build(ColumnSpec, c, "etl.columns") for c in etl["columns"]], etl["label"]["column"]


def input_columns(spark: SparkSession, source: SourceConfig, specs: list[ColumnSpec], label: str) -> list[ColumnSpec]:
    """The model's columns without the label, or with it (ignored) when the input has it too."""
    path = source_path(source, None)
    if source.format == "table":
        present = spark.table(source.table).columns
    elif source.format == "csv":
        present = spark.read.options(header="true", **source.options).csv(path).columns
    else:
        present = spark.read.options(**source.options).format(source.format).load(path).columns
    out = []
    for spec in specs:
        if spec.name == label:
            if spec.name in present:
                out.append(ColumnSpec(name=spec.name, type=spec.type, role="ignore"))
        else:
            out.append(spec)
    return out


def predict(spark: SparkSession, model: ModelFiles, source: SourceConfig, output_dir: str) -> dict:
    # As in the ETL: a value that does not cast must give null and quarantine its row, also on Spark 4
    # (ANSI mode on by default there, under which the cast raises and fails the whole job).
    with null_on_failure(spark):
        return _predict(spark, model, source, output_dir)


def _predict(spark: SparkSession, model: ModelFiles, source: SourceConfig, output_dir: str) -> dict:
    started = time.time()
    if model.task not in TASK_SCORES:
        raise ConfigError(f"{model.folder}: predict scores binary models only for now (this one is "
                          f"{model.task!r}); add its score function to ringtrain.training.scoring.TASK_SCORES")
    specs, label = model_columns(model)
    stats = FeatureStats.from_json(model.features())
    specs = input_columns(spark, source, specs, label)
    raw = read_source(spark, source, specs)
    checked = parse_and_validate(raw, specs, None, raw_strings=source.format in ("csv", "json"), key=stats.key)
    unpublish(output_dir)
    bad = checked.where(F.col(REASON).isNotNull()).select(*[F.col(c).cast("string") for c in checked.columns])
    quarantined = write_parts(bad, join(output_dir, "quarantine"))
    good = apply_features(checked.where(F.col(REASON).isNull()).drop(REASON, CORRUPT), stats, key_as_string=False)
    scored = score_and_write(good, model, output_dir, stats.key)
    reasons = {r[REASON]: r["count"] for r in bad.groupBy(REASON).count().collect()} if quarantined else {}
    manifest = {
        "model": {"folder": model.folder, "version": model.version, "program": model.artifact["program"]},
        "input": {"format": source.format, "path": source.path, "table": source.table},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": stats.key, "score": "probability of label = 1" if model.task == "binary" else model.task,
        "rows_scored": sum(f["rows"] for f in scored), "rows_quarantined": sum(f["rows"] for f in quarantined),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "files": scored, "quarantine_files": quarantined,
    }
    atomic_write_json(join(output_dir, MANIFEST), manifest)
    atomic_write_bytes(join(output_dir, SUCCESS), b"")
    return {"output_dir": output_dir, "model_version": model.version, "rows_scored": manifest["rows_scored"],
            "rows_quarantined": manifest["rows_quarantined"], "quarantine_reasons": manifest["quarantine_reasons"],
            "files": len(scored), "seconds": round(time.time() - started, 1)}


def unpublish(output_dir: str) -> None:
    """Take a previous output down, marker first, so that no reader sees old and new files mixed."""
    remove(join(output_dir, SUCCESS))
    remove(join(output_dir, MANIFEST))
    rmtree(join(output_dir, "quarantine"))
    for name in listdir(output_dir):
        if name.startswith("part-"):
            remove(join(output_dir, name))


def write_parts(df: DataFrame, folder: str) -> list[dict]:
    """Each task writes its rows (if any) as <folder>/part-<partition>.parquet; returns the files written."""
    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from _write_task(folder, batches)
    return _collect(df.mapInArrow(write, _FILES))


def score_and_write(df: DataFrame, model: ModelFiles, folder: str, key: str) -> list[dict]:
    """Score each task's rows (the model loaded once per task) and write them with the key column, in the type
    `df` has it (the declared one)."""
    # The model's positional inputs, in order (num, cat[, arr]), as training.artifact.input_schema wrote them.
    # artifact.json is written with sorted keys, so the order comes from the names, not from the file.
    inputs = model.artifact["inputs"]
    schema = [(name, inputs[name]["columns"], inputs[name]["dtype"]) for name in ("num", "cat", "arr") if name in inputs]
    model_folder, artifact, features, task = model.folder, model.artifact, model.features_json, model.task

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from ringtrain.training.scoring import ModelFiles, load_program, score_arrays
        module = None
        def scored() -> Iterator[pa.RecordBatch]:
            nonlocal module
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                if module is None:  # once per task, and only for a task that has rows
                    files = ModelFiles(model_folder, features, artifact)
                    module = load_program(files, task_device())
                inputs = [_matrix(batch, columns, dtype, arrays=name == "arr") for name, columns, dtype in schema]
                out_schema = pa.schema([batch.schema.field(key), ("score", pa.float64())])
                yield pa.RecordBatch.from_arrays(
                    [batch.column(key), pa.array(score_arrays(module, task, inputs))], schema=out_schema)
        yield from _write_task(folder, scored())
    return _collect(df.mapInArrow(score, _FILES))


def task_device():
    """This task's GPU when Spark assigned one (spark.task.resource.gpu.amount), else the CPU."""
    import torch
    from pyspark import TaskContext
    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses and torch.cuda.is_available():
        return torch.device("cuda", int(gpus.addresses[0]))
    return torch.device("cpu")


def _matrix(batch: pa.RecordBatch, columns: list[str], dtype: str, *, arrays: bool = False):
    """[rows, columns] for scalar columns; for array columns, their values side by side (as in training)."""
    import numpy as np
    if not columns:
        return np.zeros((batch.num_rows, 0), dtype)
    if arrays:
        return np.concatenate([np.asarray(batch.column(c).to_pylist(), dtype=dtype) for c in columns], axis=1)
    return np.stack([batch.column(c).to_numpy(zero_copy_only=False).astype(dtype) for c in columns], axis=1)


def _write_task(folder: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    from pyspark import TaskContext
    part = TaskContext.get().partitionId()
    name = f"part-{part:05d}.parquet"
    path = join(folder, name)
    writer, rows = None, 0
    with open_output(path) as sink:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(sink, batch.schema, compression="snappy")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
    if writer is None:  # no rows in this task: no file
        remove(path)
        return
    digest = hashlib.sha256(read_bytes(path)).hexdigest()
    yield pa.RecordBatch.from_pylist([{"part": part, "rows": rows, "sha256": digest, "file": name}],
                                     schema=pa.schema([("part", pa.int32()), ("rows", pa.int64()),
                                                       ("sha256", pa.string()), ("file", pa.string())]))


def _collect(df: DataFrame) -> list[dict]:
    return sorted((r.asDict() for r in df.collect()), key=lambda r: r["part"])
