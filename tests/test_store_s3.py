"""The store on an S3-compatible server (moto, a separate process on 127.0.0.1): the store functions, the
publishing protocol without rename, and the demo ETL publishing there with the same checksums as locally.
Objects are listed with the test's own pyarrow client (`S3Server.keys`), not through ringtrain."""
import json
import multiprocessing
import os

import pytest

from ringtrain import publish, store
from ringtrain.layout import ConcurrentPublish, DatasetStore
from ringtrain.manifest import load_manifest, shard_paths

from conftest import manifest_dict

SPLITS = ("train", "val", "test")


def test_store_functions_on_s3(s3_server):
    root = s3_server.fresh_uri("functions")
    path = store.join(root, "a", "x.json")
    assert not store.exists(root) and store.listdir(root) == []
    publish.atomic_write_json(path, {"a": 1})
    assert store.read_json(path) == {"a": 1} and store.isdir(store.join(root, "a"))
    assert publish.create_exclusive(store.join(root, "a", "once"), b"1")
    assert not publish.create_exclusive(store.join(root, "a", "once"), b"2")
    with store.open_output(store.join(root, "b", "c.bin")) as out:
        out.write(b"hello")
    store.share_or_copy(store.join(root, "b", "c.bin"), store.join(root, "d", "c.bin"))
    prefix = root[len(f"s3://{s3_server.bucket}/"):]
    assert s3_server.keys(prefix) == ["a/once", "a/x.json", "b/c.bin", "d/c.bin"]  # no claim objects left
    assert store.list_files(root) == ["a/once", "a/x.json", "b/c.bin", "d/c.bin"]
    assert s3_server.read(store.join(root, "d", "c.bin")) == b"hello" and store.read_bytes(path).startswith(b"{")
    store.rmtree(store.join(root, "a"))
    store.remove(store.join(root, "b", "c.bin"))
    store.remove(store.join(root, "never"))
    assert s3_server.keys(prefix) == ["d/c.bin"]
    assert store.normalize_root(f"s3a://{s3_server.bucket}/x/") == f"s3://{s3_server.bucket}/x"


def test_the_server_helper_leaves_no_process_or_port(tmp_path):
    import psutil

    from s3_server import S3Server
    server = S3Server.start(str(tmp_path), bucket="short-lived")
    pid, port = server.proc.pid, server.port
    assert server.keys("") == []  # the bucket exists and answers
    server.stop()
    assert not psutil.pid_exists(pid) and not server.answers()
    assert port not in {c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def _race(args):
    path, value = args
    return publish.create_exclusive(path, value.encode())


def test_exclusive_create_on_s3_has_exactly_one_winner_among_concurrent_processes(s3_server):
    path = store.join(s3_server.fresh_uri("race"), "v000001", "manifest.json")
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        wins = pool.map(_race, [(path, f"writer {i}") for i in range(6)])
    assert wins.count(True) == 1
    assert s3_server.read(path).decode() == f"writer {wins.index(True)}"


def _fake_shards(ds: DatasetStore, staging: str, rows: int) -> bytes:
    """A staging folder with one (not Parquet) file per split, and the manifest.json that references it."""
    splits = {}
    for split in SPLITS:
        with store.open_output(store.join(staging, split, "part-00000.parquet")) as out:
            out.write(b"x" * rows)
        shard = {"shard": 0, "file": "part-00000.parquet", "rows": rows, "bytes": rows, "row_groups": 1,
                 "sha256": "-", "dir": ds.shard_dir(staging)}
        splits[split] = {"rows": rows, "shards": [shard]}
    return json.dumps(manifest_dict(splits, numeric_columns=["x"], categorical_cardinalities={},
                                    label="label", key="id")).encode()


def test_publish_without_rename_references_shards_and_trusts_only_manifests(s3_server):
    ds = DatasetStore(store.join(s3_server.fresh_uri("publish"), "datasets", "churn"))
    assert not ds.renames and ds.latest() is None
    first = ds.staging_dir()
    v1 = ds.publish(first, _fake_shards(ds, first, 3))
    assert ds.versions() == ["v000001"] and ds.latest() == v1
    assert store.read_bytes(store.join(ds.root, "LATEST")) == b"v000001"
    assert shard_paths(v1, load_manifest(v1), "train") == [store.join(first, "train", "part-00000.parquet")]

    # A killed ETL: shards without a manifest. Invisible, and removed once stale, unlike referenced shards.
    killed = ds.staging_dir()
    _fake_shards(ds, killed, 5)
    publish.atomic_write_bytes(store.join(ds.root, "v000002", "features.json"), b"{}")  # a version without manifest
    assert ds.versions() == ["v000001"] and ds.latest() == v1
    ds.clean_stale_staging(older_than_s=-1)
    assert store.listdir(store.join(ds.root, "_data")) == [os.path.basename(first)]

    # An incremental publish built on a version that is no longer the newest is refused.
    second = ds.staging_dir()
    with pytest.raises(ConcurrentPublish, match="v000001 was published while this ETL built on nothing"):
        ds.publish(second, _fake_shards(ds, second, 2), based_on=None, check_base=True)
    # LATEST is a checked hint: a version published after it (a publisher killed before moving it) wins.
    publish.atomic_write_bytes(store.join(ds.root, "v000002", "manifest.json"), b'{"splits": {}}')
    assert ds.latest() == store.join(ds.root, "v000002")


@pytest.mark.spark
def test_etl_publishes_to_s3_with_the_checksums_of_a_local_run(s3_server, s3_dataset, small_dataset):
    cfg, dataset_dir = s3_dataset
    _, local_dir = small_dataset
    remote, local = load_manifest(dataset_dir), load_manifest(local_dir)
    for split in SPLITS:
        assert [(s.file, s.rows, s.bytes, s.sha256) for s in remote.splits[split].shards] == \
               [(s.file, s.rows, s.bytes, s.sha256) for s in local.splits[split].shards]
    keys = s3_server.keys(cfg.store.root[len(f"s3://{s3_server.bucket}/"):] + "/datasets/churn")
    assert "LATEST" in keys and "v000001/manifest.json" in keys
    assert s3_server.read(cfg.store.root + "/datasets/churn/LATEST") == b"v000001"
    data = sorted(k for k in keys if k.startswith("_data/") and k.endswith(".parquet"))
    expected = sorted(f"{s.dir}/{split}/{s.file}" for split in SPLITS for s in remote.splits[split].shards)
    assert data == expected  # executors wrote every shard to the object store, nothing else
    assert store.read_json(store.join(dataset_dir, remote.features.path)) == \
           store.read_json(os.path.join(local_dir, local.features.path))


def test_spark_s3a_settings_become_the_aws_environment():
    conf = {"spark.hadoop.fs.s3a.endpoint": "minio.local:9000", "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.access.key": "AK", "spark.hadoop.fs.s3a.secret.key": "SK", "spark.app.name": "x"}
    assert store.s3_env_from_hadoop(conf) == {"AWS_ENDPOINT_URL": "http://minio.local:9000",
                                              "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}
    assert store.s3_env_from_hadoop({"fs.s3a.endpoint": "https://s3.example"}) == \
           {"AWS_ENDPOINT_URL": "https://s3.example"}
    assert store.s3_env_from_hadoop({}) == {}


def _overwrite(uri: str, payloads: list, stop, env: dict) -> None:
    os.environ.update(env)
    i = 0
    while not stop.is_set():
        publish.atomic_write_json(uri, payloads[i % 2])
        i += 1


def test_a_json_file_read_while_another_process_replaces_it_is_one_version_or_the_other(s3_server):
    """An object store replaces an object whole, but a reader that asks its size first and its bytes after can
    get the bytes of a newer, longer or shorter, version: a state record read while its retrain writes it."""
    uri = store.join(s3_server.fresh_uri("torn"), "state.json")
    payloads = [{"state": "etl", "n": 1}, {"state": "train", "n": 2, "pad": "x" * 301}]
    publish.atomic_write_json(uri, payloads[0])
    stop = multiprocessing.Event()
    writer = multiprocessing.Process(target=_overwrite, args=(uri, payloads, stop, s3_server.env))
    writer.start()
    try:
        seen = [store.read_json(uri) for _ in range(400)]
    finally:
        stop.set()
        writer.join(30)
    assert all(s in payloads for s in seen)
    assert payloads[0] in seen and payloads[1] in seen  # the reads did overlap the writes


def test_read_json_reads_a_torn_prefix_again_on_an_object_store_only(monkeypatch, tmp_path):
    """The race above, made certain: the first two reads return the first bytes of a longer version (what a
    read that raced two replacements gets past read_bytes' size check). Pure logic: read_bytes is replaced."""
    whole = json.dumps({"state": "train", "pad": "x" * 40}).encode()
    reads = []

    def torn_twice(path, attempts=5):
        reads.append(path)
        return whole if len(reads) > 2 else whole[:20]

    monkeypatch.setattr(store, "read_bytes", torn_twice)
    assert store.read_json("s3://bucket/state.json") == {"state": "train", "pad": "x" * 40}
    assert len(reads) == 3
    reads.clear()
    with pytest.raises(json.JSONDecodeError):  # a damaged local file is not read five times
        store.read_json(str(tmp_path / "state.json"))
    assert len(reads) == 1
    reads.clear()
    monkeypatch.setattr(store, "read_bytes", lambda path, attempts=5: reads.append(path) or b'{"cut')
    with pytest.raises(json.JSONDecodeError):  # nor one on S3 forever
        store.read_json("s3://bucket/state.json")
    assert len(reads) == 5
