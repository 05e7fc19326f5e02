"""The one typed configuration tree of ringtrain, loaded from a YAML file in `conf/`.

Each job receives only its own section (`etl`, `train`, ...). Every value is checked when
the file is loaded, so a typo fails in the first second with the key's name, not an hour
into a run on the cluster.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Literal

import yaml

from ringtrain.schema import ConfigError, absent_key, build, check
from ringtrain.stack import resolve

ColumnType = Literal["double", "float", "int", "long", "string", "boolean", "array<float>"]
BUILT_IN_MODELS = ("tabular_mlp", "residual_mlp")
"""The models of ringtrain.training.models, by `train.model.name` (listed here: the core imports no torch)."""
ColumnRole = Literal["numeric", "categorical", "hashed", "array", "label", "key", "ignore"]


@dataclass(kw_only=True)
class StoreConfig:
    root: str = "runs"
    """Folder that holds everything a run writes: datasets/, runs/<run_id>/ (checkpoints, logs, model)."""
    run_id: str | None = None
    """Name of this run's folder. Default: a UTC timestamp. Reuse a run_id to resume it."""


@dataclass(kw_only=True)
class SparkConfig:
    master: str | None = None
    """Spark master for `ringtrain` CLI runs (e.g. local[2]). Ignored under spark-submit, which sets it."""
    app_name: str = "ringtrain"
    conf: dict[str, str] = field(default_factory=dict)
    """Extra Spark properties, e.g. spark.sql.shuffle.partitions: "8"."""


@dataclass(kw_only=True)
class ColumnSpec:
    name: str
    type: ColumnType
    role: ColumnRole
    """numeric: standardized; categorical: vocabulary index; hashed: hash bucket index;
    array: fixed-length float array passed through; label; key: the split key; ignore: dropped."""
    nullable: bool = True
    """False: a null in this column sends the row to quarantine."""
    array_length: int | None = None
    """Required for role 'array': every value must have exactly this many elements."""
    hash_buckets: int | None = None
    """For role 'hashed': number of buckets (default features.default_hash_buckets)."""

    def __post_init__(self) -> None:
        key = f"column {self.name!r}"
        if self.role == "array":
            check(self.type == "array<float>", key, "role 'array' needs type 'array<float>'")
            check(bool(self.array_length and self.array_length > 0), key, "role 'array' needs array_length > 0")
        if self.type == "array<float>":
            check(self.role == "array", key, "type 'array<float>' needs role 'array'")
        if self.role == "numeric":
            check(self.type in ("double", "float", "int", "long", "boolean"), key,
                  f"role 'numeric' needs a numeric type, got {self.type!r}")
        if self.hash_buckets is not None:
            check(self.role == "hashed" and self.hash_buckets > 1, key,
                  "hash_buckets is only for role 'hashed' and must be > 1")


@dataclass(kw_only=True)
class SourceConfig:
    format: Literal["csv", "json", "parquet", "orc", "table"]
    path: str | None = None
    """File or folder, local or any Hadoop URI (hdfs://, s3a://). May contain {partition}."""
    table: str | None = None
    """Spark/Hive table name, for format 'table'."""
    options: dict[str, str] = field(default_factory=dict)
    """Reader options, e.g. header: "true" for CSV."""
    partition_column: str | None = None
    """For format 'table': read only the rows whose value in this column (as a string) equals --partition."""

    def __post_init__(self) -> None:
        if self.format == "table":
            check(bool(self.table), "etl.source.table", "format 'table' needs a table name")
        else:
            check(bool(self.path), "etl.source.path", f"format {self.format!r} needs a path")
            check(self.partition_column is None, "etl.source.partition_column",
                  f"only for format 'table'; for {self.format!r} put {{partition}} in etl.source.path")


@dataclass(kw_only=True)
class DerivedColumn:
    name: str
    """Name of the new column; declare it in etl.columns (with this type and a role) like a source column."""
    expr: str
    """A Spark SQL expression over the source columns (as parsed to their declared types), e.g.
    "IF(monthly_charges > 50, 1, 0)" or "income / NULLIF(age, 0)"."""
    type: ColumnType
    """The expression's result is cast to this type; a value that does not cast quarantines the row."""

    def __post_init__(self) -> None:
        check(re.fullmatch(r"[A-Za-z_]\w*", self.name) is not None, f"etl.derived {self.name!r}",
              "name must be a plain identifier (letters, digits, _)")
        check(bool(self.expr.strip()), f"etl.derived {self.name!r}", "expr is empty")


@dataclass(kw_only=True)
class LabelConfig:
    column: str
    task: Literal["binary", "multiclass", "regression"] = "binary"
    """binary: two classes, one logit; multiclass: K classes, K logits (cross-entropy); regression: a
    numeric label, one output (MSE or Huber, see train.regression_loss)."""
    values: list[str] | None = None
    """binary: the two label values as they appear in the source, negative first. multiclass: the class
    values (class index = position), or null to fit the classes on the train split. A label outside the
    listed values goes to quarantine (bad_label). regression: must be null."""
    standardize: bool = False
    """regression only: train on (label - mean) / std of the train split (statistics in features.json);
    metrics and the artifact's output are in the label's own units."""

    def __post_init__(self) -> None:
        if self.task == "binary":
            check(self.values is not None and len(self.values) == 2, "etl.label.values",
                  "task 'binary' needs exactly two values, negative first, e.g. ['0', '1']")
        if self.task == "multiclass" and self.values is not None:
            check(len(self.values) >= 2 and len(set(self.values)) == len(self.values), "etl.label.values",
                  "task 'multiclass' needs at least two distinct values (or none, to fit them on the train split)")
        if self.task == "regression":
            check(self.values is None, "etl.label.values", "task 'regression' takes no values (the label is numeric)")
        check(not self.standardize or self.task == "regression", "etl.label.standardize",
              "only for task 'regression'")


@dataclass(kw_only=True)
class SplitConfig:
    key: str
    """Column whose hash decides the split: the same key always lands in the same split."""
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "ringtrain"

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            check(0.0 <= getattr(self, name) <= 1.0, f"etl.split.{name}", "must be in [0, 1]")
        check(abs(self.train + self.val + self.test - 1.0) < 1e-9, "etl.split",
              f"train + val + test must be 1, got {self.train + self.val + self.test}")
        check(self.train > 0 and self.val > 0, "etl.split", "train and val must both be > 0")


@dataclass(kw_only=True)
class ShardConfig:
    rows_per_shard: int = 50_000
    """Target rows per shard file; the count is rounded up to a multiple of max_world_size."""
    num_shards: int | None = None
    """Fixed shard count per split, instead of rows_per_shard."""
    row_group_rows: int = 16_384
    """Rows per Parquet row group: petastorm's unit of reading and of sharding across ranks."""
    max_world_size: int = 8
    """The largest number of ranks that will read this dataset: every one of them must get data."""

    def __post_init__(self) -> None:
        check(self.rows_per_shard > 0, "etl.shards.rows_per_shard", "must be > 0")
        check(self.num_shards is None or self.num_shards > 0, "etl.shards.num_shards", "must be > 0")
        check(self.row_group_rows >= 128, "etl.shards.row_group_rows", "must be >= 128")
        check(self.max_world_size >= 1, "etl.shards.max_world_size", "must be >= 1")


@dataclass(kw_only=True)
class EtlConfig:
    dataset: str
    """Dataset name: versions are published under <store.root>/datasets/<dataset>/."""
    source: SourceConfig
    columns: list[ColumnSpec]
    derived: list[DerivedColumn] = field(default_factory=list)
    """Columns computed from the source columns before validation; each is also declared in etl.columns."""
    label: LabelConfig
    split: SplitConfig
    shards: ShardConfig = field(default_factory=ShardConfig)
    max_bad_fraction: float = 0.01
    """Fail before publishing when more than this fraction of rows is quarantined."""
    min_category_count: int = 1
    """Categories seen fewer times than this in the train split share the unknown bucket."""
    default_hash_buckets: int = 1024
    seed: int = 0
    """Seeds the shuffle of rows across shards (deterministic for a given seed)."""
    mode: Literal["full", "incremental"] = "full"
    """full: every run publishes a version built from what it reads. incremental: every run adds (or
    replaces) one source partition (--partition) as a new version; the shards of the other partitions are
    kept as they are, and every partition is encoded with the features fitted on the first one."""

    def __post_init__(self) -> None:
        check(0.0 <= self.max_bad_fraction <= 1.0, "etl.max_bad_fraction", "must be in [0, 1]")
        names = [c.name for c in self.columns]
        if self.source.partition_column is not None:
            check(self.source.partition_column in names, "etl.source.partition_column",
                  f"{self.source.partition_column!r} is not among etl.columns; declare it (role: ignore)")
        if self.mode == "incremental":
            if self.source.format == "table":
                check(self.source.partition_column is not None, "etl.mode",
                      "incremental with format 'table' needs etl.source.partition_column, the column whose "
                      "value --partition selects")
            else:
                check("{partition}" in (self.source.path or ""), "etl.mode",
                      f"incremental needs {{partition}} in etl.source.path (got {self.source.path!r}), e.g. "
                      f"data/dt={{partition}}, so that each run reads one partition; or use mode: full")
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, "etl.columns", f"duplicate column {dupes[0] if dupes else ''}")
        check(self.label.column in names, "etl.label.column",
              f"{self.label.column!r} is not among etl.columns")
        self._check_derived()
        label = next(c for c in self.columns if c.name == self.label.column)
        if self.label.task == "regression":
            check(label.type in ("double", "float", "int", "long"), "etl.label.task",
                  f"task 'regression' needs a numeric label column; {label.name!r} has type {label.type!r}")
        check(self.split.key in names, "etl.split.key", f"{self.split.key!r} is not among etl.columns")
        check(any(c.role in ("numeric", "categorical", "hashed", "array") for c in self.columns),
              "etl.columns", "no feature column (role numeric, categorical, hashed or array)")

    def _check_derived(self) -> None:
        declared = {c.name: c for c in self.columns}
        seen: set[str] = set()
        for i, d in enumerate(self.derived):
            key = f"etl.derived[{i}]"
            check(d.name not in seen, key, f"{d.name!r} is derived twice")
            seen.add(d.name)
            check(d.name in declared, key, f"{d.name!r} is not declared in etl.columns; add "
                  f"{{name: {d.name}, type: {d.type}, role: ...}} there")
            check(declared[d.name].type == d.type, key,
                  f"type {d.type!r} differs from etl.columns' {declared[d.name].type!r} for {d.name!r}")
        if self.source.partition_column is not None:
            check(self.source.partition_column not in seen, "etl.source.partition_column",
                  "must be a source column, not a derived one")

    def source_columns(self) -> list[ColumnSpec]:
        """The declared columns the source itself has (etl.columns without the derived ones)."""
        derived = {d.name for d in self.derived}
        return [c for c in self.columns if c.name not in derived]


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "tabular_mlp"
    """Built in: tabular_mlp, residual_mlp; or a user factory as 'package.module:function'."""
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    """tabular_mlp: widths of the hidden layers."""
    embedding_dim: int = 8
    """Width of each categorical embedding."""
    width: int = 256
    """residual_mlp: width of the residual blocks."""
    num_blocks: int = 4
    """residual_mlp: number of residual blocks."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.name in BUILT_IN_MODELS or re.fullmatch(r"[\w.]+:\w+", self.name) is not None,
              "train.model.name", f"{self.name!r} is neither built in ({', '.join(BUILT_IN_MODELS)}) nor an "
              f"import path 'package.module:factory'")
        check(0.0 <= self.dropout < 1.0, "train.model.dropout", "must be in [0, 1)")


@dataclass(kw_only=True)
class PipelineConfig:
    stages: int = 1
    """Split the model's layers into this many pipeline stages (GPipe schedule). 1: no split.
    Stage i runs on the task's GPU i % gpus; with fewer GPUs than stages (or on CPU) stages share a device."""
    micro_batches: int | Literal["auto"] = "auto"
    """Each batch is cut into this many micro-batches that flow through the stages; the idle
    ("bubble") fraction of the schedule is (stages - 1) / (micro_batches + stages - 1).
    auto: 4 where stages can overlap (several GPUs, or CPU cores); 1 where every stage is on one GPU,
    which runs one stage at a time, so that micro-batches only multiply the kernel launches (measured in
    BENCHMARKS.md "GPU": 0.36x the unsplit model's speed with 4, 0.94x with 1)."""
    balance: list[int] | None = None
    """Layers per stage, e.g. [3, 3]; default: contiguous stages of about equal parameter count."""

    def __post_init__(self) -> None:
        check(self.stages >= 1, "train.pipeline.stages", "must be >= 1")
        check(self.micro_batches == "auto" or self.micro_batches >= 1, "train.pipeline.micro_batches",
              "must be >= 1 (or auto)")
        if self.balance is not None:
            check(len(self.balance) == self.stages and all(n >= 1 for n in self.balance), "train.pipeline.balance",
                  f"needs {self.stages} entries (one per stage), each >= 1")


@dataclass(kw_only=True)
class MonitorConfig:
    metric: str = "loss"
    """Validation metric that decides the best epoch (kept in the artifact) and early stopping.
    binary: loss, accuracy, auc; multiclass: loss, accuracy, macro_f1; regression: loss, rmse, mae, r2."""
    mode: Literal["min", "max"] | None = None
    """Whether lower or higher is better. Default: min for loss, rmse and mae; max for the others."""

    def direction(self) -> str:
        return self.mode or ("min" if self.metric in MINIMIZED_METRICS else "max")


MINIMIZED_METRICS = ("loss", "rmse", "mae")
TASK_METRICS = {"binary": ("loss", "accuracy", "auc"), "multiclass": ("loss", "accuracy", "macro_f1"),
                "regression": ("loss", "rmse", "mae", "r2")}
GATE_METRICS = {"binary": "auc", "multiclass": "macro_f1", "regression": "rmse"}
"""retrain.promote.metric when the config leaves it null, per etl.label.task."""


def lower_is_better(metric: str) -> bool:
    """The direction of a metric when nothing overrides it (train.monitor.mode can)."""
    return metric in MINIMIZED_METRICS


@dataclass(kw_only=True)
class TrainConfig:
    engine: Literal["auto", "horovod", "ddp"] = "auto"
    """horovod (Gloo) or ddp (torch.distributed). auto: horovod where it is installed (the Spark 3.5 stack),
    ddp where not (the Spark 4 stack). Resolved when the config loads: the run's summary and artifact show
    the engine that ran. Asking for horovod where it is absent fails at load, naming this key."""
    num_workers: int = 2
    """Number of Spark barrier tasks, one rank each."""
    gpus_per_worker: int = 0
    """GPUs each task asks Spark for (spark.task.resource.gpu.amount)."""
    epochs: int = 3
    batch_size: int = 256
    """Per rank. The global batch is batch_size * num_workers * grad_accumulation."""
    lr: float = 1e-3
    """Learning rate for one rank; scaled by num_workers when scale_lr is true."""
    scale_lr: bool = True
    warmup_steps: int = 50
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0
    grad_accumulation: int = 1
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on GPUs that support it, fp16 with loss scaling on older ones (V100, T4), off on CPU."""
    compile: bool = False
    """true: torch.compile the model before training (fuses its small operations: fewer kernel launches per
    step, which is what limits small models on a GPU; measured in BENCHMARKS.md "GPU"). The first steps
    then wait for the compilation (tens of seconds). Not with train.pipeline.stages > 1."""
    reader: Literal["auto", "petastorm", "arrow"] = "auto"
    """petastorm or arrow (pyarrow). auto: petastorm where it is installed (the Spark 3.5 stack), arrow where
    not (the Spark 4 stack). Resolved when the config loads, like engine."""
    verify_shards: Literal["footer", "full"] = "footer"
    """What each rank checks of its shards against the manifest before training. footer: the file size and
    the Parquet footer (rows, row groups); full: also the sha256 of every byte (reads each shard once more).
    Either way, every column chunk read is checked against the manifest's CRC32 of it (ringtrain.rowcheck)."""
    seed: int = 0
    checkpoint_every_steps: int = 0
    """0: checkpoint at the end of every epoch only."""
    early_stopping_patience: int | None = None
    """Stop after this many epochs without a better monitored metric (train.monitor)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """The metric that picks the best epoch: the artifact and the summary are that epoch's."""
    class_weight: Literal["balanced"] | None = None
    """Classification: 'balanced' weights each class's loss by rows / (classes * rows of the class) in the
    train split. null: unweighted."""
    regression_loss: Literal["mse", "huber"] = "mse"
    """Regression: the training loss."""
    huber_delta: float = 1.0
    """Regression with 'huber': where the loss turns from quadratic to linear (in training units:
    standard deviations when etl.label.standardize is true)."""
    on_nonfinite: Literal["skip", "fail"] = "skip"
    """A NaN/inf loss or gradient on any rank: all ranks skip that step, or all stop."""
    max_nonfinite_steps: int = 20
    max_attempts: int = 2
    """Launch attempts: after a failure the driver relaunches the barrier stage from the last checkpoint."""
    hang_timeout_s: float = 600.0
    """A rank that reports no progress for this long is killed and the attempt fails."""
    threads_per_worker: int = 1
    pin_cores: Literal["auto", "always", "never"] = "auto"
    """Pin each rank (every thread of it) to its own share of the cores its process may use, split by local
    rank. auto: with Horovod only, whose wait for an all-reduce spins and steals the cores its peers need;
    DDP's wait sleeps, and unpinned its reader threads use whichever core is free (both measured in
    BENCHMARKS.md, "Training: scaling"). never: when other work shares the host's cores."""
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Layer splitting inside each rank (combined with data parallelism across ranks)."""
    function: str | None = absent_key()
    """Your own training function instead of the built-in loop, as 'package.module:function', called once per
    rank as function(ctx) with a `ringtrain.training.context.TrainContext` (README "Your own training function").
    The module must be importable on every executor. Unset: the built-in loop (model, optimizer, epochs above)."""

    def __post_init__(self) -> None:
        self.engine = resolve(self.engine, "horovod")
        self.reader = resolve(self.reader, "petastorm")
        check(self.pipeline.micro_batches == "auto" or self.pipeline.micro_batches <= self.batch_size,
              "train.pipeline.micro_batches",
              f"{self.pipeline.micro_batches} micro-batches do not fit in batch_size={self.batch_size}")
        for name in ("num_workers", "epochs", "batch_size", "grad_accumulation", "max_attempts",
                     "threads_per_worker"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        check(self.lr > 0, "train.lr", "must be > 0")
        check(self.gpus_per_worker >= 0, "train.gpus_per_worker", "must be >= 0")
        check(self.function is None or re.fullmatch(r"[\w.]+:\w+", self.function) is not None, "train.function",
              f"{self.function!r} is not an import path 'package.module:function'")
        check(self.hang_timeout_s > 0, "train.hang_timeout_s", "must be > 0")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm", "must be > 0")
        check(self.huber_delta > 0, "train.huber_delta", "must be > 0")
        check(not (self.compile and self.pipeline.stages > 1), "train.compile",
              "not with train.pipeline.stages > 1 (each stage runs in its own thread); set one of them off")
        check(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
              "train.early_stopping_patience", "must be >= 1 (or null)")


@dataclass(kw_only=True)
class PromoteConfig:
    metric: str | None = None
    """The holdout metric the gate compares: one of the task's metrics (TASK_METRICS). Lower is better for loss,
    rmse and mae, higher for the others. null: the task's default (GATE_METRICS): binary auc, multiclass
    macro_f1, regression rmse; resolved when the config loads. A metric the task lacks fails at load."""
    min_improvement: float = 0.0
    """The challenger must beat the champion's metric by more than this to be promoted."""
    max_partition_drop: float | None = 0.05
    """Refuse when the challenger's metric on any single partition of the holdout is worse than the
    champion's by more than this. null: no per-partition guardrail."""

    def __post_init__(self) -> None:
        check(self.min_improvement >= 0, "retrain.promote.min_improvement", "must be >= 0")
        check(self.max_partition_drop is None or self.max_partition_drop >= 0,
              "retrain.promote.max_partition_drop", "must be >= 0 (or null for no guardrail)")


@dataclass(kw_only=True)
class RetrainConfig:
    model: str
    """Registry name: versions and aliases live under <store.root>/models/<model>/."""
    warm_start: bool = False
    """true: the challenger starts from the champion's weights; false: from scratch (train.seed)."""
    holdout_split: Literal["test", "val"] = "test"
    """The split of the new dataset version on which champion and challenger are both evaluated."""
    lock_ttl_s: float = 21600.0
    """A lock not renewed for this long is stale and may be taken over (its owner renews it every ttl/4)."""
    promote: PromoteConfig = field(default_factory=PromoteConfig)

    def __post_init__(self) -> None:
        check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.model) is not None, "retrain.model",
              f"{self.model!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
        check(self.lock_ttl_s >= 10, "retrain.lock_ttl_s", "must be >= 10 seconds")


@dataclass(kw_only=True)
class TrackingConfig:
    mlflow_uri: str | None = None
    """Mirror every registry change to MLflow (runs with params, metrics and the model files, the
    registered model and its aliases), e.g. sqlite:///mlflow.db or http://host:5000. null: off."""
    experiment: str = "ringtrain"
    """MLflow experiment of the mirrored runs."""
    artifact_location: str | None = None
    """Where a new experiment keeps the runs' files (a folder or URI). null: <store.root>/mlflow-artifacts
    (MLflow's own default with a sqlite backend is ./mlruns in whatever the current directory is)."""


@dataclass(kw_only=True)
class DemoConfig:
    rows: int = 120_000
    seed: int = 7


@dataclass(kw_only=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    etl: EtlConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    demo: DemoConfig | None = None
    """Present in conf/demo.yaml: generate the embedded dataset before the ETL."""
    retrain: RetrainConfig | None = None
    """Scheduled retraining (`ringtrain retrain`): present in conf/retrain.yaml."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def with_run_id(self, run_id: str) -> "Config":
        return dataclasses.replace(self, store=dataclasses.replace(self.store, run_id=run_id))

    def __post_init__(self) -> None:
        check(self.train.num_workers <= self.etl.shards.max_world_size, "train.num_workers",
              f"{self.train.num_workers} ranks but the dataset is sharded for at most "
              f"etl.shards.max_world_size={self.etl.shards.max_world_size}; raise that or lower num_workers")
        task = self.etl.label.task
        check(self.train.monitor.metric in TASK_METRICS[task], "train.monitor.metric",
              f"{self.train.monitor.metric!r} is not a metric of task {task!r}; use one of "
              f"{', '.join(TASK_METRICS[task])}")
        check(self.train.class_weight is None or task != "regression", "train.class_weight",
              "only for classification (etl.label.task is 'regression')")
        if self.retrain is not None:
            # Champion and challenger are compared on the same encoded rows, and a warm start reuses the
            # champion's embedding tables: both need the features frozen across dates.
            check(self.etl.mode == "incremental", "etl.mode",
                  "retrain needs etl.mode: incremental (one partition per date, features frozen by the first)")
            gate = self.retrain.promote
            if gate.metric is None:
                gate.metric = GATE_METRICS[task]
            check(gate.metric in TASK_METRICS[task], "retrain.promote.metric",
                  f"{gate.metric!r} is not a metric of task {task!r} (etl.label.task); the {task} metrics are "
                  f"{', '.join(TASK_METRICS[task])}: use one of them, or leave the key out for the default "
                  f"{GATE_METRICS[task]!r}")


def load_config(path: str, overrides: list[str] | None = None) -> Config:
    """Load and validate a config file; `overrides` are 'dotted.key=yaml_value' strings."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist (examples are in conf/)")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    try:
        return build(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
