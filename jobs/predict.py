"""Batch scoring on Spark executors: `ringtrain predict --model champion --input SRC --output DIR`.

Rows are encoded exactly as in training, by the ETL's own Spark functions: `read_source` (the model's
declared columns; the label column may be present or not), `parse_and_validate`, then `apply_features`
with the model's frozen features.json. One pass over the input, with `mapInArrow`: each task scores its
good rows (loading the model once, on its GPU when Spark gave it one) and writes them as its own Parquet
file, and writes the rows that failed validation, as text with their reason, to quarantine; both through
the store functions, so the output can live on any store.

Output folder:
    part-NNNNN.parquet            the key column (its declared type), the score columns of the model's task
                                  (binary: `score`, the probability; multiclass: `prediction`, the class, and
                                  `prob_<class>` per class; regression: `prediction` in the label's units),
                                  `model_version` (the registry version that scored the rows), `partition`
                                  (--partition, else the input path's last name=value folder), then the
                                  input columns named by --keep, as the input has them
    quarantine/part-NNNNN.parquet the rejected rows as text, with `_reason`
    _manifest.json                model, input, counts, every file with rows and sha256
    _SUCCESS                      written last: the output is published

A rerun first removes `_SUCCESS` and `_manifest.json` (the old output is no longer published), then
the old files, then writes the new ones: readers that wait for `_SUCCESS` never see a mix. The same
input and model give byte-identical files (Spark splits the same files the same way).
"""
from __future__ import annotations

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
from ringtrain.etl.shards import HashingSink
from ringtrain.etl.steps import null_on_failure
from ringtrain.etl.sources import SPARK_TYPES, read_source, source_path
from ringtrain.etl.validate import REASON, parse_and_validate
from ringtrain.schema import build
from ringtrain.training.scoring import ModelFiles, task_scores
from ringtrain.publish import atomic_write_bytes, atomic_write_json
from ringtrain.store import join, listdir, open_output, remove, rmtree

log = logging.getLogger("ringtrain.jobs.predict")
SUCCESS, MANIFEST = "_SUCCESS", "_manifest.json"
REJECTED = "_rejected"
_RECORD_DDL = "kind string, part int, rows long, sha256 string, file string"
_RECORDS = pa.schema([("kind", pa.string()), ("part", pa.int32()), ("rows", pa.int64()), ("sha256", pa.string()),
                      ("file", pa.string())])


def model_columns(model: ModelFiles) -> tuple[list[ColumnSpec], str]:
    """The columns the model was trained on (from its artifact's config) and the label column's name."""
    etl = model.artifact.get("config", {}).get("etl")
    if not etl:
        raise BadDataError(f"{model.folder}/artifact.json records no etl config: this model predates scoring "
                           f"support; retrain it with this version of ringtrain")
    return [build(ColumnSpec, c, "etl.columns") for c in etl["columns"]], etl["label"]["column"]


def input_columns(spark: SparkSession, source: SourceConfig, specs: list[ColumnSpec], label: str,
                  keep: list[str] = ()) -> tuple[list[ColumnSpec], list[str]]:
    """The columns to read, and the input's own columns. To read: the model's columns without the label, or with
    it (ignored) when the input has it too, and the input's columns that `keep` names beyond the model's (as
    text from CSV and JSON; in their own type from typed formats). In the input's order, so that a CSV header
    that orders them otherwise still matches; a model column the input lacks comes last (read_source names it)."""
    path = source_path(source, None)
    if source.format == "table":
        schema = spark.table(source.table).schema
    elif source.format == "csv":
        schema = spark.read.options(**{"header": "true", **source.options}).csv(path).schema
    else:
        schema = spark.read.options(**source.options).format(source.format).load(path).schema
    present = [f.name for f in schema.fields]
    out = []
    for spec in specs:
        if spec.name == label:
            if spec.name in present:
                out.append(ColumnSpec(name=spec.name, type=spec.type, role="ignore"))
        else:
            out.append(spec)
    declared = {spec.name for spec in specs}
    for name in keep:
        if name in present and name not in declared:
            out.append(ColumnSpec(name=name, type=_carried_type(source, schema[name].dataType, name), role="ignore"))
    order = {name: i for i, name in enumerate(present)}
    return sorted(out, key=lambda spec: order.get(spec.name, len(present))), present


def _carried_type(source: SourceConfig, spark_type, name: str) -> str:
    """The declared type under which a kept column beyond the model's is read."""
    if source.format in ("csv", "json"):
        return "string"
    for declared, known in SPARK_TYPES.items():
        if known == spark_type:
            return declared
    raise ConfigError(f"--keep {name}: its type {spark_type.simpleString()} cannot be carried (predict carries "
                      f"{', '.join(SPARK_TYPES)}); cast it in the input, or drop this --keep")


FIXED_COLUMNS = ("model_version", "partition")
"""The output's columns after the key and the score columns: the registry version that scored each row, and
the partition it came from."""


def output_columns(key: str, score_columns: list[str], keep: list[str], present: list[str]) -> list[str]:
    """The output's columns, in order: the key, the score columns, model_version, partition, then the kept
    input columns. Raises ConfigError for a --keep the input does not have, one that is given twice, or one
    that an output column already names."""
    fixed = [key, *score_columns, *FIXED_COLUMNS]
    if len(set(fixed)) < len(fixed):
        clash = next(c for c in fixed if fixed.count(c) > 1)
        raise ConfigError(f"the model's key column {key!r} has the name of an output column ({', '.join(fixed)} "
                          f"hold {clash!r} twice); rename the key column in etl.columns and retrain")
    for i, column in enumerate(keep):
        if column not in present:
            raise ConfigError(f"--keep {column}: the input has no column {column!r}; its columns are "
                              f"{', '.join(present)}")
        if column in fixed:
            raise ConfigError(f"--keep {column}: the output already has a column {column!r} (it has "
                              f"{', '.join(fixed)}); drop this --keep")
        if column in keep[:i]:
            raise ConfigError(f"--keep {column} is given twice; give it once")
    return [*fixed, *keep]


def partition_of(explicit: str | None, input_ref: str) -> str:
    """The output's `partition` value: --partition VALUE; else the value of the last name=value folder of the
    input path (`.../dt=2026-11-23` gives 2026-11-23); else the input path (or table name) itself."""
    if explicit is not None:
        return explicit
    for part in reversed(input_ref.rstrip("/").split("/")):
        name, equals, value = part.partition("=")
        if equals and name and value:
            return value
    return input_ref


def predict(spark: SparkSession, model: ModelFiles, source: SourceConfig, output_dir: str, *,
            partition: str | None = None, keep: list[str] = ()) -> dict:
    """Score `source` with `model` into `output_dir` (see the module docstring); `partition`: the output's
    partition value (default: from the input path, `partition_of`); `keep`: input columns to carry.
    Raises ConfigError for a bad --keep, before the old output is taken down."""
    # As in the ETL: a value that does not cast must give null and quarantine its row, also on Spark 4
    # (ANSI mode on by default there, under which the cast raises and fails the whole job).
    with null_on_failure(spark):
        return _predict(spark, model, source, output_dir, partition, list(keep))


def _predict(spark: SparkSession, model: ModelFiles, source: SourceConfig, output_dir: str, partition: str | None,
             keep: list[str]) -> dict:
    started = time.time()
    specs, label = model_columns(model)
    features = model.features()
    stats = FeatureStats.from_json(features)
    scores = task_scores(model.task, features)
    specs, present = input_columns(spark, source, specs, label, keep)
    columns = output_columns(stats.key, [name for name, _ in scores.columns], keep, present)
    part = partition_of(partition, source.table if source.format == "table" else source.path)
    version = model.version or model.folder
    _, rows, carried = scoring_input(spark, source, specs, present, stats, keep)
    unpublish(output_dir)
    written = score_and_write(rows, model, output_dir, stats.key, {"model_version": version, "partition": part},
                              carried)
    scored = [w for w in written if w["kind"] == "scored"]
    quarantined = [w for w in written if w["kind"] == "quarantine"]
    reasons: dict[str, int] = {}
    for w in written:
        if w["kind"] == "reason":
            reasons[w["file"]] = reasons.get(w["file"], 0) + w["rows"]
    manifest = {
        "model": {"folder": model.folder, "version": model.version, "program": model.artifact["program"]},
        "input": {"format": source.format, "path": source.path, "table": source.table},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": stats.key, "score": SCORE_MEANING[model.task], "columns": columns, "model_version": version,
        "partition": part,
        "rows_scored": sum(f["rows"] for f in scored), "rows_quarantined": sum(f["rows"] for f in quarantined),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "files": [_file(w) for w in scored], "quarantine_files": [_file(w) for w in quarantined],
    }
    atomic_write_json(join(output_dir, MANIFEST), manifest)
    atomic_write_bytes(join(output_dir, SUCCESS), b"")
    return {"output_dir": output_dir, "model_version": model.version, "rows_scored": manifest["rows_scored"],
            "rows_quarantined": manifest["rows_quarantined"], "quarantine_reasons": manifest["quarantine_reasons"],
            "files": len(scored), "columns": columns, "partition": part, "seconds": round(time.time() - started, 1)}


def scoring_input(spark: SparkSession, source: SourceConfig, specs: list[ColumnSpec], present: list[str],
                  stats: FeatureStats, keep: list[str]) -> tuple[DataFrame, DataFrame, dict[str, str]]:
    """(the input as read, the rows `score_and_write` takes, the kept columns {name in rows: input name}), lazily;
    `specs`, `present`: `input_columns`. One pass over the input: every row validated and encoded (a rejected
    row's encoding is never used), a rejected row also as text, with its reason."""
    raw = read_source(spark, source, specs, header=present if source.format == "csv" else None)
    checked = parse_and_validate(raw, specs, None, raw_strings=source.format in ("csv", "json"), key=stats.key)
    carried = {f"_keep_{i}": column for i, column in enumerate(keep)}  # a kept feature is also encoded
    # A rejected row's columns as text, in one struct column that is null for a good row: one test per row and one
    # null per good row to carry, instead of a column of its own per input column (BENCHMARKS.md, "Batch scoring").
    text = F.struct(*[F.col(c).cast("string").alias(c) for c in checked.columns])
    as_text = F.when(F.col(REASON).isNotNull(), text)
    rows = apply_features(checked.select("*", as_text.alias(REJECTED)), stats, key_as_string=False,
                          passthrough={**carried, REASON: REASON, REJECTED: REJECTED})
    return raw, rows, carried


SCORE_MEANING = {
    "binary": "probability of label = 1",
    "multiclass": "prediction: the most probable class; prob_<class>: its probability (softmax), per class",
    "regression": "prediction: the predicted label, in the label's units",
}


def unpublish(output_dir: str) -> None:
    """Take a previous output down, marker first, so that no reader sees old and new files mixed."""
    remove(join(output_dir, SUCCESS))
    remove(join(output_dir, MANIFEST))
    rmtree(join(output_dir, "quarantine"))
    for name in listdir(output_dir):
        if name.startswith("part-"):
            remove(join(output_dir, name))


def score_and_write(df: DataFrame, model: ModelFiles, folder: str, key: str, constants: dict[str, str],
                    carried: dict[str, str]) -> list[dict]:
    """Score each task's good rows (the model loaded once per task, when it has some) and write them as
    `folder`/part-<task>.parquet: the key column, in the type `df` has it (the declared one), the score columns,
    `constants` (model_version, partition) as strings, and the `carried` columns of `df` under their input names
    ({name in df: input name}). Write its rejected rows (REASON set) as `folder`/quarantine/part-<task>.parquet,
    one column per field of their REJECTED struct (the input's columns as text). Returns one record per file
    written (kind scored or quarantine) and one per reason (kind reason: its name in `file`, its rows)."""
    # The model's positional inputs, in order (num, cat[, arr]), as training.artifact.input_schema wrote them.
    # artifact.json is written with sorted keys, so the order comes from the names, not from the file.
    inputs = model.artifact["inputs"]
    schema = [(name, inputs[name]["columns"], inputs[name]["dtype"]) for name in ("num", "cat", "arr") if name in inputs]
    model_folder, artifact, features, task = model.folder, model.artifact, model.features_json, model.task
    arrow_types = {"double": pa.float64(), "string": pa.string()}
    quarantine = join(folder, "quarantine")

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np
        import pyarrow.compute as pc
        from pyspark import TaskContext
        from ringtrain.training.scoring import ModelFiles, load_program, score_arrays, task_scores
        name = f"part-{TaskContext.get().partitionId():05d}.parquet"
        good_out, bad_out = _PartWriter(folder, name), _PartWriter(quarantine, name)
        module, scores, reasons = None, None, {}
        for batch in batches:
            bad = batch.column(REASON).is_valid()
            if pc.any(bad).as_py():
                rows = batch.filter(bad)
                for reason, count in zip(*np.unique(rows.column(REASON).to_numpy(zero_copy_only=False),
                                                    return_counts=True)):
                    reasons[reason] = reasons.get(reason, 0) + int(count)
                text = rows.column(REJECTED)
                bad_out.write(pa.RecordBatch.from_arrays(text.flatten(), names=[f.name for f in text.type]))
                batch = batch.filter(pc.invert(bad))
            if batch.num_rows == 0:
                continue
            if module is None:  # once per task, and only for a task that has rows to score
                files = ModelFiles(model_folder, features, artifact)
                module, scores = load_program(files, task_device()), task_scores(task, files.features())
            inputs = [_matrix(batch, columns, dtype, arrays=name == "arr") for name, columns, dtype in schema]
            values = score_arrays(module, scores, inputs)
            fields = [batch.schema.field(key), *(pa.field(n, arrow_types[t]) for n, t in scores.columns),
                      *(pa.field(n, pa.string()) for n in constants),
                      *(batch.schema.field(inner).with_name(name) for inner, name in carried.items())]
            arrays = [batch.column(key), *(pa.array(values[n], arrow_types[t]) for n, t in scores.columns),
                      *(pa.array([v] * batch.num_rows, pa.string()) for v in constants.values()),
                      *(batch.column(inner) for inner in carried)]
            good_out.write(pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))
        records = [record for kind, out in (("scored", good_out), ("quarantine", bad_out))
                   if (record := out.close(kind)) is not None]
        records += [{"kind": "reason", "part": 0, "rows": n, "sha256": "", "file": r} for r, n in reasons.items()]
        if records:
            yield pa.RecordBatch.from_pylist(records, schema=_RECORDS)
    return sorted((r.asDict() for r in df.mapInArrow(score, _RECORD_DDL).collect()),
                  key=lambda r: (r["kind"], r["part"], r["file"]))


class _PartWriter:
    """One Parquet file of a task's rows, opened at its first row (a task with none writes no file)."""

    def __init__(self, folder: str, name: str):
        self.folder, self.name = folder, name
        self.sink, self.writer, self.rows = None, None, 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self.writer is None:
            self.sink = HashingSink(open_output(join(self.folder, self.name)))
            self.writer = pq.ParquetWriter(self.sink, batch.schema, compression="snappy")
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self, kind: str) -> dict | None:
        if self.writer is None:
            return None
        self.writer.close()
        self.sink.close()
        return {"kind": kind, "part": int(self.name[5:10]), "rows": self.rows,
                "sha256": self.sink.digest.hexdigest(), "file": self.name}


def _file(record: dict) -> dict:
    """A written file's entry in the manifest."""
    return {k: record[k] for k in ("part", "rows", "sha256", "file")}


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


