"""ETL on real Spark (local[2]) and real files: validation counts, publishing, balance, idempotence."""
import os

import pandas as pd
import pytest

from conftest import assert_balanced, demo_config, read_json
from ringtrain.manifest import DatasetError, load_manifest
from ringtrain.etl.pipeline import BadDataError, run_etl
from ringtrain.etl.sample_data import generate_churn
from ringtrain.etl.sources import SchemaDriftError
from ringtrain.store import RunStore

pytestmark = pytest.mark.spark

INJECTED = {"malformed": 3, "wrong_type:age": 4, "wrong_type:monthly_charges": 2, "null:tenure_months": 5,
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
    assert manifest["quarantine"]["counts"] == INJECTED
    quarantine = pd.read_parquet(os.path.join(summary["dataset_dir"], "quarantine"))
    assert quarantine["_reason"].value_counts().to_dict() == INJECTED
    assert sum(s["rows"] for s in manifest["splits"]["train"]["shards"]) == manifest["splits"]["train"]["rows"]


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
        rows = [s["rows"] for s in manifest["splits"][split]["shards"]]
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
        assert [s["sha256"] for s in first["splits"][split]["shards"]] == \
               [s["sha256"] for s in second["splits"][split]["shards"]]


def test_training_refuses_a_folder_without_manifest(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="has no manifest.json"):
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
        assert [(s["file"], s["sha256"]) for s in a["splits"][split]["shards"]] == \
               [(s["file"], s["sha256"]) for s in b["splits"][split]["shards"]]
    assert read_json(os.path.join(cluster["dataset_dir"], "features.json")) == \
           read_json(os.path.join(local["dataset_dir"], "features.json"))
