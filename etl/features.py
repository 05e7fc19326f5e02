"""Transform: hash-based split, feature statistics fitted on the train split, and their application.

`assign_split` and `apply_features` are pure DataFrame -> DataFrame functions. `fit_features`
computes the statistics (from the train split only) that `apply_features` needs; they are
stored with the dataset as features.json so training and inference reuse exactly them.

Encoding:
  numeric      (x - mean) / std as float32; a nullable one gets <col>__missing (0/1) and null -> 0
  categorical  int32 index: 0 = unknown or rare, 1 = null, 2.. = vocabulary by frequency
  hashed       int32 index: 0 = null, 1 + xxhash64(value) mod buckets
  array        float32 array, passed through
  label        float32: 0/1 for binary; the class index for multiclass; the value for regression,
               (value - mean) / std with etl.label.standardize
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ringtrain.config import EtlConfig, SplitConfig

SPLIT = "_split"
UNKNOWN, NULL_INDEX = 0, 1


def assign_split(df: DataFrame, split: SplitConfig) -> DataFrame:
    """Add `_split`: a pure function of the key, so a row keeps its split across reruns and increments."""
    return df.withColumn(SPLIT, split_of(split))


def split_of(split: SplitConfig) -> Column:
    """The split of a row ("train", "val" or "test"), from its key."""
    # xxhash64 is stable across Spark versions and machines; map to [0, 1) with 2^20 buckets.
    unit = F.pmod(F.xxhash64(F.lit(split.salt), F.col(split.key).cast("string")), F.lit(1 << 20)) / float(1 << 20)
    return F.when(unit < split.train, "train").when(unit < split.train + split.val, "val").otherwise("test")


@dataclass(kw_only=True)
class FeatureStats:
    numeric: dict[str, dict]       # name -> {mean, std, nullable}
    categorical: dict[str, list]   # name -> vocabulary (index = position + 2)
    hashed: dict[str, int]         # name -> buckets
    arrays: dict[str, int]         # name -> length
    label: str
    label_values: list[str] | None  # binary: [negative, positive]; multiclass: the classes, index = position
    key: str
    task: str = "binary"
    label_stats: dict = field(default_factory=dict)
    """Of the train split. Classification: {"counts": rows per class, in label_values order}.
    Regression: {"mean", "std", "standardized"}: the shards hold (y - mean) / std when standardized."""

    def to_json(self) -> dict:
        return dict(numeric=self.numeric, categorical=self.categorical, hashed=self.hashed,
                    arrays=self.arrays, label=self.label, label_values=self.label_values, key=self.key,
                    task=self.task, label_stats=self.label_stats)

    @classmethod
    def from_json(cls, data: dict) -> "FeatureStats":
        return cls(**data)

    def numeric_columns(self) -> list[str]:
        """Float columns the model reads, in a fixed order."""
        cols = []
        for name, stat in self.numeric.items():
            cols.append(name)
            if stat["nullable"]:
                cols.append(f"{name}__missing")
        return cols

    def categorical_cardinalities(self) -> dict[str, int]:
        """Integer columns the model reads, with the size of each embedding table."""
        sizes = {name: len(vocab) + 2 for name, vocab in self.categorical.items()}
        sizes.update({name: buckets + 1 for name, buckets in self.hashed.items()})
        return sizes


def fit_features(train: DataFrame, cfg: EtlConfig) -> FeatureStats:
    """Statistics from the train split only, in two passes over it: one aggregate for the moments (numeric
    columns, a regression label), one for the value counts (categorical columns, a classification label)."""
    numeric = [c for c in cfg.columns if c.role == "numeric"]
    moments = _moments(train, [c.name for c in numeric] + ([cfg.label.column] if cfg.label.task == "regression" else []))
    stats_numeric = {c.name: {**moments[c.name], "nullable": c.nullable} for c in numeric}
    categorical = [c.name for c in cfg.columns if c.role == "categorical"]
    counted = categorical + ([cfg.label.column] if cfg.label.task != "regression" else [])
    counts = _value_counts(train, counted)
    vocab = {}
    for name in categorical:
        kept = [(v, n) for v, n in counts[name].items() if n >= cfg.min_category_count]
        # By frequency, ties by value: Spark orders strings by their UTF-8 bytes, Python by code points,
        # which is the same order.
        vocab[name] = [v for v, _ in sorted(kept, key=lambda vn: (-vn[1], vn[0]))]
    label_values, label_stats = _fit_label(cfg, moments.get(cfg.label.column), counts.get(cfg.label.column))
    return FeatureStats(
        numeric=stats_numeric, categorical=vocab,
        hashed={c.name: c.hash_buckets or cfg.default_hash_buckets for c in cfg.columns if c.role == "hashed"},
        arrays={c.name: c.array_length for c in cfg.columns if c.role == "array"},
        label=cfg.label.column, label_values=label_values, key=cfg.split.key, task=cfg.label.task,
        label_stats=label_stats)


def _moments(train: DataFrame, names: list[str]) -> dict[str, dict]:
    """{name: {mean, std}} in one aggregate; std 1.0 where it is 0 (a constant column) or undefined."""
    if not names:
        return {}
    aggs = []
    for i, name in enumerate(names):
        x = F.col(name).cast("double")
        aggs += [F.mean(x).alias(f"m{i}"), F.stddev_pop(x).alias(f"s{i}")]
    row = train.agg(*aggs).first()
    moments = {}
    for i, name in enumerate(names):
        mean, std = row[f"m{i}"], row[f"s{i}"]
        moments[name] = {"mean": float(mean or 0.0), "std": float(std) if std and std > 1e-12 else 1.0}
    return moments


def _value_counts(train: DataFrame, names: list[str]) -> dict[str, dict[str, int]]:
    """{column: {value as string: rows}} of several columns in one aggregate (nulls left out)."""
    if not names:
        return {}
    pairs = F.explode(F.array(*[F.struct(F.lit(name).alias("c"), F.col(name).cast("string").alias("v"))
                                for name in names])).alias("p")
    rows = (train.select(pairs).where(F.col("p.v").isNotNull())
            .groupBy(F.col("p.c").alias("c"), F.col("p.v").alias("v")).count().collect())
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    for r in rows:
        counts[r["c"]][r["v"]] = r["count"]
    return counts


def _fit_label(cfg: EtlConfig, moments: dict | None, counts: dict[str, int] | None) -> tuple[list[str] | None, dict]:
    """(label values, label statistics) of the train split; multiclass without listed values fits the
    classes here (sorted, so the class index does not depend on frequencies)."""
    if cfg.label.task == "regression":
        return None, {**moments, "standardized": cfg.label.standardize}
    values = cfg.label.values if cfg.label.values is not None else sorted(counts)
    return list(values), {"counts": [int(counts.get(v, 0)) for v in values]}


def known_label(stats: FeatureStats) -> Column:
    """True where the label is one of the classes (always true for binary and regression, whose
    labels validation has already checked)."""
    if stats.task != "multiclass":
        return F.lit(True)
    return F.col(stats.label).cast("string").isin(*stats.label_values)


def apply_features(df: DataFrame, stats: FeatureStats, *, key_as_string: bool = True,
                   passthrough: dict[str, str] | None = None) -> DataFrame:
    """Encoded feature columns, the label as float32, the key (for lineage) and `_split`.
    Rows to score have neither label nor split: then only the key and the features. The key is a string in
    shards (one type for every dataset's keys); `key_as_string=False` keeps its declared type (predict's
    output, where users join scores back to their rows by it). `passthrough` {name: column of `df`}: columns
    carried as they are, not encoded, under these names (predict's --keep; a feature column is then both
    encoded under its own name and carried under the other)."""
    out = [F.col(stats.key).cast("string").alias(stats.key) if key_as_string else F.col(stats.key)]
    out += [F.col(column).alias(name) for name, column in (passthrough or {}).items()]
    for name, s in stats.numeric.items():
        z = ((F.col(name).cast("double") - s["mean"]) / s["std"])
        out.append(F.coalesce(z, F.lit(0.0)).cast("float").alias(name))
        if s["nullable"]:
            out.append(F.col(name).isNull().cast("float").alias(f"{name}__missing"))
    for name, vocab in stats.categorical.items():
        mapping = F.create_map(*[x for i, v in enumerate(vocab) for x in (F.lit(v), F.lit(i + 2))]) if vocab else None
        col = F.col(name).cast("string")
        index = F.coalesce(mapping[col], F.lit(UNKNOWN)) if mapping is not None else F.lit(UNKNOWN)
        out.append(F.when(col.isNull(), F.lit(NULL_INDEX)).otherwise(index).cast("int").alias(name))
    for name, buckets in stats.hashed.items():
        col = F.col(name).cast("string")
        out.append(F.when(col.isNull(), F.lit(0))
                   .otherwise(F.pmod(F.xxhash64(col), F.lit(buckets)) + 1).cast("int").alias(name))
    for name in stats.arrays:
        out.append(F.col(name).cast("array<float>").alias(name))
    if stats.label in df.columns:  # rows to score have neither label nor split
        out.append(_encoded_label(stats).cast("float").alias("label"))
    if SPLIT in df.columns:
        out.append(F.col(SPLIT))
    return df.select(*out)


def _encoded_label(stats: FeatureStats) -> Column:
    value = F.col(stats.label)
    if stats.task == "multiclass":
        index = F.create_map(*[x for i, v in enumerate(stats.label_values) for x in (F.lit(v), F.lit(float(i)))])
        return index[value.cast("string")]
    if stats.task == "regression" or stats.label_values is None:
        y = value.cast("double")
        if stats.label_stats.get("standardized"):
            y = (y - stats.label_stats["mean"]) / stats.label_stats["std"]
        return y
    return F.when(value.cast("string") == stats.label_values[1], 1.0).otherwise(0.0)
