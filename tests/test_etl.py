"""ETL on real Spark (local[2]) and real files: validation counts, publishing, balance, idempotence."""
import json
import os
import re
import zlib

import pandas as pd
import pytest

from conftest import assert_balanced, demo_config, read_json
from ringtrain.errors import BadDataError
from ringtrain.layout import RunStore
from ringtrain.manifest import DatasetError, Shard, load_manifest, shard_paths
from ringtrain.etl.pipeline import run_etl
from ringtrain.etl.sample_data import generate_churn
from ringtrain.etl.sources import SchemaDriftError
from ringtrain.schema import to_dict

pytestmark = pytest.mark.spark

INJECTED = {"malformed": 3, "wrong_type:age": 6, "wrong_type:monthly_charges": 2, "null:tenure_months": 5,
            "nonfinite:income": 8, "bad_label": 7}


def write_source(folder, good_rows=2000):
    frame, _ = generate_churn(good_rows, seed=1)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "data.csv")
    frame.to_csv(path, index=False)
    good = frame.iloc[0].copy()
    lines = []
    def row(**changes):
        r = good.copy()
        for k, v in changes.items():
            r[k] = v
        r["customer_id"] = f"BAD{len(lines):05d}"
        return ",".join("" if pd.isna(v) else str(v) for v in r.values)
    lines += [row() + ",extra,fields" for _ in range(3)]
    # Text that does not parse, and an int that overflows: quarantined under ANSI casts (Spark 4's default) too.
    lines += [row(age="abc") for _ in range(2)] + [row(age="99999999999") for _ in range(2)]
    lines += [row(age="41.7"), row(age="42.")]  # a plain cast would take these as 41 and 42
    lines += [row(monthly_charges="abc") for _ in range(2)]
    lines += [row(tenure_months=None) for _ in range(5)]
    lines += [row(income="NaN") for _ in range(6)] + [row(income="Infinity") for _ in range(2)]
    lines += [row(churned="2") for _ in range(7)]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return good_rows


def test_each_bad_input_class_is_quarantined_with_its_exact_count(spark, tmp_path):
    good = write_source(str(tmp_path / "raw"))
    cfg = demo_config(str(tmp_path), ["etl.max_bad_fraction=0.05"])
    summary = run_etl(spark, cfg.etl, RunStore.create(str(tmp_path)).dataset("churn"))
    assert summary["quarantined"] == INJECTED
    assert summary["rows_good"] == good and summary["rows_read"] == good + sum(INJECTED.values())
    manifest = load_manifest(summary["dataset_dir"])
    assert manifest.quarantine.counts == INJECTED
    quarantine = pd.read_parquet(os.path.join(summary["dataset_dir"], "quarantine"))
    assert quarantine["_reason"].value_counts().to_dict() == INJECTED
    assert sum(s.rows for s in manifest.splits["train"].shards) == manifest.splits["train"].rows


def test_too_many_bad_rows_fails_before_publishing(spark, tmp_path):
    write_source(str(tmp_path / "raw"))
    datasets = RunStore.create(str(tmp_path)).dataset("churn")
    cfg = demo_config(str(tmp_path), ["etl.max_bad_fraction=0.001"])
    with pytest.raises(BadDataError, match=r"over etl.max_bad_fraction=0.001; nothing was published"):
        run_etl(spark, cfg.etl, datasets)
    assert datasets.versions() == [] and datasets.latest() is None


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(extra_col=1), "column 'extra_col' that etl.columns does not declare"),
    (lambda f: f.drop(columns=["region"]), "declared column 'region' is missing"),
])
def test_schema_drift_names_the_column(spark, tmp_path, change, message):
    frame, _ = generate_churn(500, seed=2)
    os.makedirs(tmp_path / "raw")
    change(frame).to_csv(tmp_path / "raw" / "data.csv", index=False)
    cfg = demo_config(str(tmp_path))
    with pytest.raises(SchemaDriftError, match=message):
        run_etl(spark, cfg.etl, RunStore.create(str(tmp_path)).dataset("churn"))


def test_missing_source_path_is_a_clear_error(spark, tmp_path):
    cfg = demo_config(str(tmp_path), [f"etl.source.path={tmp_path}/nowhere"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_etl(spark, cfg.etl, RunStore.create(str(tmp_path)).dataset("churn"))


def test_shards_are_balanced_and_every_rank_of_the_max_world_gets_data(small_dataset):
    cfg, dataset_dir = small_dataset
    manifest = load_manifest(dataset_dir)
    for split in ("train", "val", "test"):
        rows = [s.rows for s in manifest.splits[split].shards]
        assert len(rows) % cfg.etl.shards.max_world_size == 0
    assert_balanced(manifest)
    stats = read_json(os.path.join(dataset_dir, "features.json"))
    assert set(stats["categorical"]) == {"region", "plan", "device", "payment_method"}


def test_rerun_is_idempotent_and_forced_rerun_has_identical_checksums(spark, small_dataset):
    cfg, dataset_dir = small_dataset
    datasets = RunStore.create(cfg.store.root).dataset(cfg.etl.dataset)
    again = run_etl(spark, cfg.etl, datasets)
    assert again["reused"] and again["dataset_dir"] == dataset_dir
    forced = run_etl(spark, cfg.etl, datasets, force=True)
    assert forced["dataset_dir"] != dataset_dir and datasets.latest() == forced["dataset_dir"]
    first, second = load_manifest(dataset_dir), load_manifest(forced["dataset_dir"])
    for split in ("train", "val", "test"):
        assert [(s.sha256, s.chunk_crc32) for s in first.splits[split].shards] == \
               [(s.sha256, s.chunk_crc32) for s in second.splits[split].shards]
        # The recorded CRC32s are those of the bytes published (every byte between magic and footer).
        for shard, path in zip(first.splits[split].shards, shard_paths(dataset_dir, first, split)):
            data = open(path, "rb").read()
            assert [[g, c, o, n, zlib.crc32(data[o:o + n])] for g, c, o, n, _ in shard.chunk_crc32] == \
                shard.chunk_crc32
            assert len({g for g, *_ in shard.chunk_crc32}) == shard.row_groups


def test_training_refuses_a_folder_without_manifest(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="has no manifest.json"):
        load_manifest(str(tmp_path))


def test_the_typed_manifest_writes_back_the_bytes_it_was_read_from_and_names_a_bad_key(small_dataset, tmp_path):
    """The ETL writes `to_dict` of the typed manifest as it publishes it: loading and writing again gives the same
    bytes. A key the manifest lacks, or one it should not have, fails loading with the key's name."""
    _, dataset_dir = small_dataset
    path = os.path.join(dataset_dir, "manifest.json")
    manifest = load_manifest(dataset_dir)
    assert json.dumps(to_dict(manifest), indent=2, sort_keys=True).encode() == open(path, "rb").read()
    data = read_json(path)
    for change, what in [(lambda d: d["splits"]["val"]["shards"][1].pop("sha256"),
                          "missing required key splits.val.shards[1].sha256"),
                         (lambda d: d["features"].update(labels=["0"]), "unknown key features.labels"),
                         (lambda d: d.update(rows_good="many"), "rows_good: expected int, got 'many'")]:
        broken = json.loads(json.dumps(data))
        change(broken)
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(DatasetError, match=rf"^{re.escape(str(tmp_path))}/manifest\.json: not a manifest this "
                                               rf"ringtrain reads: {re.escape(what)}.*; publish a fresh one"):
            load_manifest(str(tmp_path))


@pytest.mark.slow
def test_spark_submit_on_local_cluster_publishes_the_same_bytes_as_local(spark, tmp_path):
    """Separate executor JVMs (local-cluster) give the same shards, byte for byte, as local[2]."""
    import json
    import subprocess
    import sys
    from conftest import ROOT
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.config import load_config
    raw = str(tmp_path / "raw")
    write_churn_csv(raw, 4000, 7)
    sets = [f"etl.source.path={raw}", "demo.rows=4000", "etl.shards.rows_per_shard=500",
            "etl.shards.row_group_rows=256",
            "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"]
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    args = [x for s in [f"store.root={tmp_path}/cluster", *sets] for x in ("--set", s)]
    out = subprocess.run([f"{bin_dir}/spark-submit", "--master", "local-cluster[2,1,1024]",
                          os.path.join(ROOT, "jobs", "etl_job.py"), "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                          "--json", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    cluster = json.loads(out.stdout[out.stdout.index("{"):])
    assert not cluster["reused"] and cluster["version"] == "v000001" and cluster["rows_good"] == 4000

    cfg = load_config(os.path.join(ROOT, "conf", "demo.yaml"), [f"store.root={tmp_path}/local", *sets])
    local = run_etl(spark, cfg.etl, RunStore.create(cfg.store.root).dataset(cfg.etl.dataset))
    a, b = load_manifest(cluster["dataset_dir"]), load_manifest(local["dataset_dir"])
    assert_balanced(a)
    for split in ("train", "val", "test"):
        assert [(s.file, s.sha256) for s in a.splits[split].shards] == \
               [(s.file, s.sha256) for s in b.splits[split].shards]
    assert read_json(os.path.join(cluster["dataset_dir"], "features.json")) == \
           read_json(os.path.join(local["dataset_dir"], "features.json"))


def test_a_shard_short_of_its_plan_fails_the_etl_and_publishes_nothing(spark, tmp_path, monkeypatch):
    """The driver checks what the writing tasks report (rows, row groups, footers, sizes) against its plan.
    Here the plan expects one more row in train shard 0 than the tasks wrote, as if a task had written a
    short shard: the ETL fails naming the shard, and nothing is published or left in staging."""
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.etl.shards import ShardPlan
    cfg = demo_config(str(tmp_path), ["demo.rows=3000", "etl.shards.rows_per_shard=500"])
    write_churn_csv(cfg.etl.source.path, cfg.demo.rows, cfg.demo.seed)
    planned = ShardPlan.shard_rows

    def one_more_in_train_shard_0(self, split):
        rows = planned(self, split)
        return [rows[0] + 1, *rows[1:]] if split == "train" else rows
    monkeypatch.setattr(ShardPlan, "shard_rows", one_more_in_train_shard_0)
    datasets = RunStore.create(str(tmp_path)).dataset("churn")
    with pytest.raises(DatasetError, match=r"^shard part-00000\.parquet \(train\) as written does not match the "
                                           r"ETL's plan: (\d+) rows in its footer \(\1 written\), \d+ planned; "
                                           r"nothing was published\."):
        run_etl(spark, cfg.etl, datasets)
    assert datasets.versions() == [] and datasets.latest() is None
    assert os.listdir(os.path.join(datasets.root, "_staging")) == []


def _report(shard, split="train", index=None, rows=10, **changes):
    """What a writing task reports for one shard (see shards._ShardWriter)."""
    name = f"part-{shard if index is None else index:05d}.parquet"
    return {"shard": shard, "split": split, "file": name, "rows": rows, "bytes": 900,
            "row_groups": 1, "sha256": "ab" * 32, "footer_rows": rows, "footer_row_groups": 1, "stored_bytes": 900,
            "schema": "x: float", "chunk_crc32": [[0, 0, 4, 800, 7]], **changes}


@pytest.mark.parametrize("changes, what", [
    ({"footer_rows": 9}, r"9 rows in its footer \(10 written\), 10 planned"),
    ({"rows": 9, "footer_rows": 9}, r"9 rows in its footer \(9 written\), 10 planned"),
    ({"footer_row_groups": 2}, r"2 row groups in its footer \(1 written\), 1 planned"),
    ({"stored_bytes": 512}, r"512 bytes stored, 900 written"),
    ({"schema": "x: double"}, r"its schema differs from the other shards'"),
    ({"chunk_crc32": []}, r"column-chunk checksums for 0 row groups, 1 planned"),
])
def test_the_plan_check_names_the_shard_and_what_differs(changes, what):
    from ringtrain.etl.shards import ShardPlan, check_written
    plan = ShardPlan(splits=("train", "val"), shards={"train": 2, "val": 1}, row_group_rows=64,
                     bucket_rows={"train": [12, 8], "val": [10, 0]})
    reports = [_report(0), _report(1), _report(2, "val", index=0)]
    entries = check_written(plan, reports)
    same = dict(rows=10, bytes=900, row_groups=1, sha256="ab" * 32, chunk_crc32=[[0, 0, 4, 800, 7]])
    assert entries == {"train": [Shard(shard=i, **same, file=f"part-{i:05d}.parquet") for i in (0, 1)],
                       "val": [Shard(shard=0, **same, file="part-00000.parquet")]}
    with pytest.raises(DatasetError, match=r"^the shards as written do not match the ETL's plan: shard 0 of split "
                                           r"val is missing; nothing was published"):
        check_written(plan, reports[:2])
    reports[1] = _report(1, **changes)
    with pytest.raises(DatasetError, match=rf"^shard part-00001\.parquet \(train\) as written does not match the "
                                           rf"ETL's plan: {what}; nothing was published"):
        check_written(plan, reports)


def test_a_class_the_train_split_lacks_is_quarantined_and_the_shards_stay_balanced(spark, tmp_path):
    """Multiclass with fitted classes: val/test rows of a class that no train row has are quarantined as
    unseen_label, and taken out of their split's row counts before the rows are numbered into shards."""
    from ringtrain.etl.features import split_of
    frame, _ = generate_churn(3000, seed=3)
    cfg = demo_config(str(tmp_path), ["etl.label={column: churned, task: multiclass}", "etl.shards.rows_per_shard=250"])
    splits = spark.createDataFrame(frame[["customer_id"]]).select(split_of(cfg.etl.split).alias("s")).toPandas()["s"]
    unseen = frame.index[splits != "train"][:9]
    frame.loc[unseen, "churned"] = "2"
    os.makedirs(tmp_path / "raw")
    frame.to_csv(tmp_path / "raw" / "data.csv", index=False)
    summary = run_etl(spark, cfg.etl, RunStore.create(str(tmp_path)).dataset("churn"))
    assert summary["quarantined"] == {"unseen_label": 9}
    assert summary["rows_good"] == 3000 - 9 == sum(summary["split_rows"].values())
    manifest = load_manifest(summary["dataset_dir"])
    assert manifest.features.label_values == ["0", "1"]
    assert_balanced(manifest)
    for split, info in manifest.splits.items():
        assert sum(s.rows for s in info.shards) == info.rows == summary["split_rows"][split]
    assert len(pd.read_parquet(os.path.join(summary["dataset_dir"], "quarantine"))) == 9


@pytest.mark.parametrize("tasks", [2, 3, 7])
def test_the_driver_knows_which_task_spark_shuffles_each_group_to(spark, tasks):
    """number_rows numbers a group's rows from the group's first position in its task, which the driver
    works out with `group_partitions`. That is only right while it is the function Spark's shuffle uses:
    checked here against a real `repartition(tasks, <int column>)`."""
    from pyspark.sql import functions as F
    from ringtrain.etl.shards import group_partitions
    groups = 192
    shuffled = (spark.range(groups * 5).select((F.col("id") % groups).cast("int").alias("g"))
                .repartition(tasks, "g").select("g", F.spark_partition_id().alias("task")).distinct().collect())
    actual = {r["g"]: r["task"] for r in shuffled}
    assert len(actual) == groups  # each group in exactly one task
    assert [actual[g] for g in range(groups)] == group_partitions(spark, groups, tasks)


def test_rows_are_numbered_as_a_window_over_split_and_bucket_would(spark):
    """number_rows gives each row of a (split, bucket) its place in (order, key) order without a window
    (see its docstring). Reference: Spark's own row_number over that window, on 20,000 keys with
    duplicates (ties in the order are broken by the key, and equal keys are equal rows here)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from ringtrain.etl.shards import BUCKET_COUNT, ShardPlan, number_rows, order_bucket, shuffle_order
    splits = ("train", "val", "test")
    keys = (spark.range(20000).select((F.col("id") % 19000).cast("string").alias("k"))
            .withColumn("s", F.element_at(F.array(*[F.lit(s) for s in splits]), (F.col("k") % 3 + 1).cast("int"))))
    bucket = order_bucket(shuffle_order("k", 7))
    counts = {(r["s"], r["b"]): r["count"] for r in keys.groupBy("s", bucket.alias("b")).count().collect()}
    plan = ShardPlan(splits=splits, shards={"train": 8, "val": 4, "test": 4}, row_group_rows=100,
                     bucket_rows={s: [counts.get((s, b), 0) for b in range(BUCKET_COUNT)] for s in splits})
    numbered = number_rows(keys, plan, "s", "k", 7).toPandas()

    reference = keys.withColumn("b", bucket).withColumn("o", shuffle_order("k", 7))
    rank = F.row_number().over(Window.partitionBy("s", "b").orderBy("o", "k")) - 1
    offsets = {(s, b): sum(plan.bucket_rows[s][:b]) for s in splits for b in range(BUCKET_COUNT)}
    expected = reference.withColumn("rank", rank).toPandas()
    expected["shard"] = [plan.first_shard(s) + (offsets[(s, b)] + r) % plan.shards[s]
                         for s, b, r in zip(expected["s"], expected["b"], expected["rank"])]
    key = ["s", "k"]
    got = numbered.sort_values(key + ["_shard"])["_shard"].tolist()
    assert got == expected.sort_values(key + ["shard"])["shard"].tolist()
    for s in splits:  # and so: shard sizes within a split differ by at most one row
        sizes = numbered[numbered["s"] == s]["_shard"].value_counts()
        assert len(sizes) == plan.shards[s] and sizes.max() - sizes.min() <= 1


def test_the_source_is_read_in_whole_rounds_of_tasks(spark, tmp_path):
    """A source Spark would cut into an odd number of read tasks on 2 cores (the last one running alone) is
    read in 4 tasks instead, each no larger than spark.sql.files.maxPartitionBytes (scaled down here)."""
    from ringtrain.etl.steps import input_files, read_tasks_in_whole_rounds
    from ringtrain.etl.sample_data import write_churn_csv
    from ringtrain.spark import session_conf
    path = write_churn_csv(str(tmp_path / "raw"), 40000, 7)
    size = os.path.getsize(path)
    assert 2 << 20 < size < 3 << 20  # 2-3 MiB: 3 tasks of at most 1 MiB
    with session_conf(spark, "spark.sql.files.maxPartitionBytes", str(1 << 20)), \
            session_conf(spark, "spark.sql.files.openCostInBytes", "1024"):
        raw = spark.read.option("header", "true").csv(str(tmp_path / "raw"))
        assert raw.rdd.getNumPartitions() == 3
        files = input_files(spark, raw)
        assert [(os.path.basename(name), bytes_) for name, bytes_, _ in files] == [(os.path.basename(path), size)]
        with read_tasks_in_whole_rounds(spark, files):
            again = spark.read.option("header", "true").csv(str(tmp_path / "raw"))
            assert again.rdd.getNumPartitions() == 4
            assert again.count() == raw.count() == 40000
        assert spark.conf.get("spark.sql.files.maxPartitionBytes") == str(1 << 20)  # restored


def test_apply_features_keeps_the_declared_key_type_only_when_asked(spark):
    """Shards hold the key as a string; predict's output keeps the type the config declares (a long stays one)."""
    from ringtrain.etl.features import FeatureStats, apply_features
    stats = FeatureStats(numeric={"x": {"mean": 0.0, "std": 1.0, "nullable": False}}, categorical={}, hashed={},
                         arrays={}, label="label", label_values=None, key="id")
    df = spark.createDataFrame([(7, 1.5)], "id long, x double")
    assert dict(apply_features(df, stats).dtypes)["id"] == "string"
    kept = apply_features(df, stats, key_as_string=False)
    assert dict(kept.dtypes)["id"] == "bigint" and kept.collect()[0]["id"] == 7
