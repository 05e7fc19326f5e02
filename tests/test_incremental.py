"""Incremental ETL on real Spark and real files: partitions appended as versions, frozen features,
idempotent reruns, byte-identical rebuilds, and a SIGKILL in the middle of writing a version."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, assert_balanced, demo_config
from ringtrain.etl.incremental import partition_tag
from ringtrain.layout import RunStore
from ringtrain.manifest import load_manifest, shard_paths
from ringtrain.etl.pipeline import run_etl
from ringtrain.etl.sample_data import generate_churn
from ringtrain.config import load_config
from ringtrain.schema import ConfigError, to_dict
from ringtrain.store import join
from ringtrain.training.data import verify_shards

pytestmark = pytest.mark.spark
BIN = os.path.dirname(sys.executable)
P1, P2 = "2026-11-21", "2026-11-22"
SPLITS = ("train", "val", "test")


def write_partitions(raw, sizes, new_region_in=None):
    """One CSV per partition under raw/dt=<name>/; keys are unique across partitions."""
    total = sum(sizes.values())
    frame, _ = generate_churn(total, seed=3)
    start = 0
    for name, rows in sizes.items():
        part = frame.iloc[start:start + rows].copy()
        if name == new_region_in:  # a category the base never saw
            part.iloc[::10, part.columns.get_loc("region")] = "atlantis"
        os.makedirs(os.path.join(raw, f"dt={name}"), exist_ok=True)
        part.to_csv(os.path.join(raw, f"dt={name}", "data.csv"), index=False)
        start += rows


def incremental_sets(root, raw):
    return [f"store.root={root}", f"etl.source.path={raw}/dt={{partition}}", "etl.mode=incremental",
            "etl.shards.rows_per_shard=1000", "etl.shards.row_group_rows=256"]


def incremental_config(root, raw, extra=()):
    return demo_config(root, incremental_sets(root, raw) + list(extra))


def shard_table(manifest):
    return {s: [(x.file, x.rows, x.sha256) for x in manifest.splits[s].shards] for s in SPLITS}


def key_splits(dataset_dir, manifest):
    out = {}
    for split in SPLITS:
        for path in shard_paths(dataset_dir, manifest, split):
            for key in pq.read_table(path, columns=["customer_id"]).column(0).to_pylist():
                assert key not in out, key
                out[key] = split
    return out


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_partitions_append_as_versions_with_frozen_features_and_stable_splits(spark, tmp_path):
    raw = str(tmp_path / "raw")
    write_partitions(raw, {P1: 3000, P2: 2000}, new_region_in=P2)
    cfg = incremental_config(str(tmp_path / "store"), raw)
    ds = RunStore.create(cfg.store.root).dataset("churn")

    first = run_etl(spark, cfg.etl, ds, partition=P1)
    assert first["version"] == "v000001" and first["partitions"] == [P1] and not first["reused"]
    v1 = load_manifest(first["dataset_dir"])
    second = run_etl(spark, cfg.etl, ds, partition=P2)
    assert second["version"] == "v000002" and second["partitions"] == [P1, P2]
    v2 = load_manifest(second["dataset_dir"])

    # History is not rewritten: partition 1's shards are the very same files (hard links), features frozen.
    assert v2.partitions[0] == v1.partitions[0]
    for split in SPLITS:
        for shard in v1.splits[split].shards:
            old = os.path.join(first["dataset_dir"], split, shard.file)
            new = os.path.join(second["dataset_dir"], split, shard.file)
            assert os.stat(old).st_ino == os.stat(new).st_ino
    assert sha(os.path.join(first["dataset_dir"], "features.json")) == \
           sha(os.path.join(second["dataset_dir"], "features.json"))
    for split in SPLITS:  # the published v1 still matches its manifest, checksums included
        verify_shards(first["dataset_dir"], v1, split, shard_paths(first["dataset_dir"], v1, split), checksum=True)

    # Totals, balance and names: what training reads (manifest.splits) covers both partitions.
    files = [(s, x.file) for s in SPLITS for x in v2.splits[s].shards]
    assert len(files) == len(set(files))
    for split in SPLITS:
        assert v2.splits[split].rows == sum(p.splits[split].rows for p in v2.partitions)
        for p in v2.partitions:
            rows = [x.rows for x in p.splits[split].shards]
            assert len(rows) % cfg.etl.shards.max_world_size == 0
    assert_balanced(v2)
    assert v2.rows_good == 5000
    keys = key_splits(second["dataset_dir"], v2)
    assert len(keys) == 5000

    # A category unseen in the base goes to the unknown bucket (0), not to a new index.
    vocab = v2.features.categorical_cardinalities["region"]
    assert vocab == v1.features.categorical_cardinalities["region"]
    p2_files = [os.path.join(second["dataset_dir"], "train", x.file) for x in v2.partitions[1].splits["train"].shards]
    regions = [r for f in p2_files for r in pq.read_table(f, columns=["region"]).column(0).to_pylist()]
    assert regions.count(0) >= len(regions) // 10 - 5 and max(regions) < vocab

    # Reruns of either partition are no-ops.
    for part in (P2, P1):
        again = run_etl(spark, cfg.etl, ds, partition=part)
        assert again["reused"] and again["version"] == "v000002"
    assert ds.versions() == ["v000001", "v000002"]

    # --force rebuilds one partition into a new version: byte-identical shards, the rest carried over.
    forced = run_etl(spark, cfg.etl, ds, partition=P1, force=True)
    assert forced["version"] == "v000003" and forced["partitions"] == [P1, P2]
    v3 = load_manifest(forced["dataset_dir"])
    assert shard_table(v3) == shard_table(v2)
    p1_file = v1.splits["train"].shards[0].file
    assert os.stat(os.path.join(forced["dataset_dir"], "train", p1_file)).st_ino != \
           os.stat(os.path.join(second["dataset_dir"], "train", p1_file)).st_ino  # really rewritten

    # The same row lands in the same split as in a full build of both partitions at once.
    full_cfg = demo_config(str(tmp_path / "full"), [f"etl.source.path={raw}/dt=*"])
    full = run_etl(spark, full_cfg.etl, RunStore.create(str(tmp_path / "full")).dataset("churn"))
    assert key_splits(full["dataset_dir"], load_manifest(full["dataset_dir"])) == keys

    # What the frozen features depend on may not change; the error names the fix.
    for change, key in [("etl.min_category_count=5", "etl.min_category_count"),
                        ("etl.split.salt=other", "etl.split"), ("etl.shards.max_world_size=8", "etl.shards.max_world_size")]:
        bad = incremental_config(cfg.store.root, raw, [change])
        with pytest.raises(ConfigError, match=rf"{re.escape(key)} differs .* Rebuild in full: --set etl.mode=full"):
            run_etl(spark, bad.etl, ds, partition=P2)
    assert ds.versions() == ["v000001", "v000002", "v000003"]
    # A full-mode dataset does not grow incrementally.
    with pytest.raises(ConfigError, match="built in full mode.*set etl.dataset to a new name"):
        run_etl(spark, incremental_config(str(tmp_path / "full"), raw).etl,
                RunStore.create(str(tmp_path / "full")).dataset("churn"), partition=P1)


def test_incremental_needs_a_partition_and_says_how():
    with pytest.raises(ConfigError, match=r"etl.mode: incremental needs \{partition\} in etl.source.path"):
        load_config(os.path.join(ROOT, "conf", "demo.yaml"), ["etl.mode=incremental"])
    with pytest.raises(ConfigError, match="incremental with format 'table' needs etl.source.partition_column"):
        load_config(os.path.join(ROOT, "conf", "demo.yaml"),
                    ["etl.mode=incremental", "etl.source.format=table", "etl.source.table=t"])
    cfg = incremental_config("/tmp/unused", "/tmp/unused")
    with pytest.raises(ConfigError, match="pass --partition VALUE"):
        run_etl(None, cfg.etl, RunStore.create("/tmp/unused").dataset("churn"))
    with pytest.raises(ConfigError, match="no glob characters"):
        run_etl(None, cfg.etl, RunStore.create("/tmp/unused").dataset("churn"), partition="*")


def test_table_partitions_by_column(spark, tmp_path):
    frame, _ = generate_churn(1200, seed=4)
    frame = frame[["customer_id", "monthly_charges", "plan", "churned"]].assign(
        dt=[P1 if i < 700 else P2 for i in range(len(frame))])
    spark.createDataFrame(frame).createOrReplaceTempView("churn_by_day")
    cfg = demo_config(str(tmp_path), [
        "etl.mode=incremental", "etl.source={format: table, table: churn_by_day, partition_column: dt}",
        "etl.columns=[{name: customer_id, type: string, role: key}, {name: monthly_charges, type: double, "
        "role: numeric}, {name: plan, type: string, role: categorical}, {name: churned, type: string, "
        "role: label}, {name: dt, type: string, role: ignore}]", "etl.shards.row_group_rows=128"])
    ds = RunStore.create(str(tmp_path)).dataset("churn")
    assert run_etl(spark, cfg.etl, ds, partition=P1)["rows_good"] == 700
    second = run_etl(spark, cfg.etl, ds, partition=P2)
    assert sum(second["partition_rows"].values()) == 500
    assert second["rows_good"] == 1200 and second["partitions"] == [P1, P2]
    assert run_etl(spark, cfg.etl, ds, partition=P2)["reused"]


def content(path, server=None):
    """The bytes of a file, or of an object read with the S3 server's own client."""
    if server is not None:
        return server.read(path)
    with open(path, "rb") as f:
        return f.read()


def written_shards(ds, marker, server=None):
    """Shard files of a partition that an ETL in progress has written so far."""
    if server is not None:
        return [k for k in server.keys(ds.root + "/_data") if os.path.basename(k).startswith(marker)]
    return [f for _, _, files in os.walk(os.path.join(ds.root, "_staging")) for f in files if f.startswith(marker)]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_mid_write_leaves_latest_intact_and_rerun_matches_an_unkilled_run(spark, tmp_path, where, request):
    """SIGKILL an ETL once it has written a shard. With `s3` the store is on the S3 server, where nothing is
    renamed: the shards are immutable objects that only a manifest written last can make part of a version."""
    server = None
    if where == "s3":
        request.getfixturevalue("s3_spark")  # the executors reach the server too
        server = request.getfixturevalue("s3_server")
    raw = str(tmp_path / "raw")
    write_partitions(raw, {P1: 2000, P2: 10000})
    root = server.fresh_uri("killed") if server else str(tmp_path / "killed")
    cfg = incremental_config(root, raw)
    ds = RunStore.create(root).dataset("churn")
    run_etl(spark, cfg.etl, ds, partition=P1)
    versions, latest = ds.versions(), ds.latest()
    published = load_manifest(latest)

    sets = [x for s in incremental_sets(root, raw) + ["etl.shards.row_group_rows=256",
            "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '4'}"] for x in ("--set", s)]
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYSPARK_PYTHON": sys.executable}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([f"{BIN}/ringtrain", "etl", "--config", os.path.join(ROOT, "conf", "demo.yaml"),
                             "--partition", P2, *sets], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import psutil
    marker = f"part-{partition_tag(P2)}-"
    deadline = time.time() + 300
    try:
        while not written_shards(ds, marker, server):
            assert proc.poll() is None, f"the ETL ended (rc {proc.returncode}) before it was killed: " + \
                open(tmp_path / "killed.log").read()[-2000:]
            assert time.time() < deadline, "no shard of partition 2 appeared in staging"
            time.sleep(0.01)
        family = psutil.Process(proc.pid).children(recursive=True)
        names = []
        for p in family:
            try:
                names.append(p.name())
            except psutil.Error:
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the CLI, the Spark JVM, its Python workers
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, alive
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing is left in its process group
    assert "java" in names, f"the Spark JVM was not among the killed processes: {names}"

    # Nothing new is visible; the previous version is LATEST, complete and readable.
    assert ds.versions() == versions and ds.latest() == latest
    if server is None:
        assert sorted(d for d in os.listdir(ds.root) if re.fullmatch(r"v\d{6}", d)) == versions
        staging = os.path.join(ds.root, "_staging")
        leftovers = os.listdir(staging)
        assert leftovers and not any(os.path.exists(os.path.join(staging, d, "manifest.json")) for d in leftovers)
    else:
        keys = server.keys(ds.root)
        assert sorted({k.split("/")[0] for k in keys if re.match(r"v\d{6}/", k)}) == versions
        assert content(ds.root + "/LATEST", server).decode() == versions[-1]
        assert written_shards(ds, marker, server)  # the killed run's shards: unreferenced by any manifest
        assert not any(marker in json.dumps(to_dict(load_manifest(f"{ds.root}/{v}"))) for v in versions)
    for split in SPLITS:
        for shard, path in zip(published.splits[split].shards, shard_paths(latest, published, split)):
            data = content(path, server)
            assert pq.read_table(pa.BufferReader(data)).num_rows == shard.rows
            assert hashlib.sha256(data).hexdigest() == shard.sha256

    # Rerun: publishes, byte-identical to a store that was never killed; one more rerun is a no-op.
    rerun = run_etl(spark, cfg.etl, ds, partition=P2)
    assert rerun["version"] == "v000002" and not rerun["reused"]
    ref_cfg = incremental_config(str(tmp_path / "reference"), raw)
    ref_ds = RunStore.create(ref_cfg.store.root).dataset("churn")
    run_etl(spark, ref_cfg.etl, ref_ds, partition=P1)
    reference = run_etl(spark, ref_cfg.etl, ref_ds, partition=P2)
    assert shard_table(load_manifest(rerun["dataset_dir"])) == shard_table(load_manifest(reference["dataset_dir"]))
    rerun_features = load_manifest(rerun["dataset_dir"]).features.path
    assert content(join(rerun["dataset_dir"], rerun_features), server) == \
           content(os.path.join(reference["dataset_dir"], "features.json"))
    again = run_etl(spark, cfg.etl, ds, partition=P2)
    assert again["reused"] and ds.versions() == ["v000001", "v000002"]
