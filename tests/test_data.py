"""Pure reading logic on real Parquet files (no Spark, no process group)."""
import hashlib
import logging
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import manifest_of
from ringtrain.manifest import DatasetError
from ringtrain.rowcheck import RunningCrc, chunk_ranges
from ringtrain.training.data import Columns, open_reader, plan_reading, verify_shards


def make_dataset(folder, shard_rows, row_group_rows=100, crc32=True):
    """A manifest plus shards of the given sizes, keys k<shard>-<row>; with each column chunk's CRC32 as the ETL
    records it, unless not `crc32` (a manifest published before the ETL recorded them)."""
    os.makedirs(os.path.join(folder, "train"), exist_ok=True)
    shards = []
    for i, rows in enumerate(shard_rows):
        table = pa.table({"x": np.arange(rows, dtype=np.float32), "c": np.zeros(rows, np.int32),
                          "label": np.ones(rows, np.float32), "id": [f"k{i}-{r}" for r in range(rows)]})
        name = f"part-{i:05d}.parquet"
        path = os.path.join(folder, "train", name)
        pq.write_table(table, path, row_group_size=row_group_rows)
        data = open(path, "rb").read()
        shards.append({"shard": i, "file": name, "rows": rows, "row_groups": -(-rows // row_group_rows),
                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if crc32:
            shards[-1]["chunk_crc32"] = [[g, c, o, n, zlib.crc32(data[o:o + n])] for g, c, o, n in
                                         chunk_ranges(pq.ParquetFile(path).metadata, len(data))]
    return manifest_of({"train": {"rows": sum(shard_rows), "shards": shards}}, numeric_columns=["x"],
                       categorical_cardinalities={"c": 1}, label="label", key="id")


def batches(folder, manifest, rank, size, kind="arrow", epoch=0, skip=0, batch=32):
    plan = plan_reading(folder, manifest, "train", rank, size, batch)
    reader = open_reader(kind, plan, Columns.from_manifest(manifest, with_key=True), batch, seed=3, rank=rank)
    return plan, [list(b["key"]) for b in reader.epoch(epoch, skip=skip)]


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_uneven_shards_give_every_rank_the_same_step_count(tmp_path, kind):
    manifest = make_dataset(str(tmp_path), [1000, 150])  # rank 1 has far fewer rows
    counts = []
    for rank in (0, 1):
        plan, got = batches(str(tmp_path), manifest, rank, 2, kind)
        counts.append(len(got))
        assert plan.steps_per_epoch == 1150 // (2 * 32)
        assert all(len(b) == 32 for b in got)
    assert counts == [17, 17]


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_resume_skips_to_the_same_rows(tmp_path, kind):
    manifest = make_dataset(str(tmp_path), [640, 640])
    _, full = batches(str(tmp_path), manifest, 0, 2, kind, epoch=1)
    _, resumed = batches(str(tmp_path), manifest, 0, 2, kind, epoch=1, skip=7)
    assert resumed == full[7:]
    _, other_epoch = batches(str(tmp_path), manifest, 0, 2, kind, epoch=2)
    assert other_epoch != full  # each epoch is shuffled differently


def test_ranks_read_disjoint_shards(tmp_path):
    manifest = make_dataset(str(tmp_path), [640, 640, 640, 640])
    seen = [{k for b in batches(str(tmp_path), manifest, r, 2)[1] for k in b} for r in (0, 1)]
    assert not seen[0] & seen[1]


def test_fewer_shards_than_ranks_falls_back_to_row_groups(tmp_path):
    manifest = make_dataset(str(tmp_path), [1000], row_group_rows=100)
    plans = [plan_reading(str(tmp_path), manifest, "train", r, 4, 32) for r in range(4)]
    assert all(p.shard_count == 4 and p.cur_shard == r for r, p in enumerate(plans))
    seen = [{k for b in batches(str(tmp_path), manifest, r, 4)[1] for k in b} for r in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not seen[a] & seen[b]


def test_too_few_row_groups_is_a_clear_error(tmp_path):
    manifest = make_dataset(str(tmp_path), [300], row_group_rows=100)
    with pytest.raises(DatasetError, match="fewer than 4 ranks.*max_world_size >= 4"):
        plan_reading(str(tmp_path), manifest, "train", 0, 4, 8)


def test_too_small_for_the_batch_is_a_clear_error(tmp_path):
    manifest = make_dataset(str(tmp_path), [50, 50])
    with pytest.raises(DatasetError, match="too few for 2 ranks x batch_size 64"):
        plan_reading(str(tmp_path), manifest, "train", 0, 2, 64)


def upload_train(s3_server, local: str, name: str) -> str:
    """A fresh dataset folder on the S3 server with the train shards of the local one; its URI."""
    remote = s3_server.fresh_uri(name)
    fs = s3_server.filesystem()
    for shard in os.listdir(os.path.join(local, "train")):
        with open(os.path.join(local, "train", shard), "rb") as f, \
                fs.open_output_stream(f"{remote[len('s3://'):]}/train/{shard}") as out:
            out.write(f.read())
    return remote


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
@pytest.mark.parametrize("shard_rows", [[640, 640, 640, 640], [1000]], ids=["whole-shards", "row-groups"])
def test_readers_stream_the_same_rows_from_s3_as_from_local_files(tmp_path, s3_server, kind, shard_rows):
    """The same shards, uploaded to the S3 server: both readers yield the same batches from the URIs as from
    local files, for whole-shard and row-group sharding (the files are opened for ranged reads by URI)."""
    local = str(tmp_path)
    manifest = make_dataset(local, shard_rows)
    remote = upload_train(s3_server, local, "reader")
    for rank in (0, 1):
        plan, got = batches(remote, manifest, rank, 2, kind, epoch=1)
        assert all(p.startswith("s3://") for p in plan.files)
        assert got == batches(local, manifest, rank, 2, kind, epoch=1)[1] and got


def _zero_in_row_group(path, group):
    """Zero 64 bytes in the middle of column x's chunk in a row group (its values): same size, footer intact."""
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(0)
    data = bytearray(open(path, "rb").read())
    middle = chunk.dictionary_page_offset + chunk.total_compressed_size // 2
    data[middle:middle + 64] = bytes(64)
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_a_row_group_damaged_after_publication_fails_as_it_is_read_naming_shard_and_row_group(tmp_path, kind):
    manifest = make_dataset(str(tmp_path), [1000, 1000])
    path = os.path.join(str(tmp_path), "train", "part-00000.parquet")
    clean = pq.read_table(path)
    _zero_in_row_group(path, 4)
    assert pq.read_table(path).num_rows == clean.num_rows  # unchecked, the damage reads silently
    verify_shards(str(tmp_path), manifest, "train", [path], checksum=False)  # the footer check cannot see it
    with pytest.raises(DatasetError, match=rf"^shard {path} row group 4 \(column chunk 0, bytes \d+\.\.\d+\) does not match "
                                           r"the dataset's manifest: crc32 [0-9a-f]{8}, the manifest says "
                                           r"[0-9a-f]{8}\. The published version is damaged"):
        batches(str(tmp_path), manifest, 0, 2, kind)
    batches(str(tmp_path), manifest, 1, 2, kind)  # the other rank's shard is intact


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_a_shard_damaged_on_s3_fails_as_it_is_read_naming_shard_and_row_group(tmp_path, s3_server, kind):
    """On an object store the chunks are checked as they arrive (CheckedFile), not through a memory map."""
    local = str(tmp_path)
    manifest = make_dataset(local, [1000, 1000])
    _zero_in_row_group(os.path.join(local, "train", "part-00001.parquet"), 2)
    remote = upload_train(s3_server, local, "damaged")
    with pytest.raises(DatasetError, match=rf"^shard {remote}/train/part-00001.parquet row group 2 \(column chunk 0, "
                                           r"bytes \d+\.\.\d+\) does not match the dataset's manifest: crc32"):
        batches(remote, manifest, 1, 2, kind)
    assert batches(remote, manifest, 0, 2, kind)[1]  # the other rank's shard is intact


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_checked_and_unchecked_reads_yield_the_same_batches(tmp_path, kind):
    checked = make_dataset(str(tmp_path), [1000], row_group_rows=128)
    unchecked = make_dataset(str(tmp_path), [1000], row_group_rows=128, crc32=False)
    for rank in range(4):  # row-group sharding: ranks share the file
        assert batches(str(tmp_path), checked, rank, 4, kind)[1] == batches(str(tmp_path), unchecked, rank, 4, kind)[1]


def test_a_manifest_without_row_group_checksums_reads_with_a_log_line(tmp_path, caplog):
    manifest = make_dataset(str(tmp_path), [640, 640], crc32=False)
    path = os.path.join(str(tmp_path), "train", "part-00000.parquet")
    with caplog.at_level(logging.WARNING, logger="ringtrain.data"):
        verify_shards(str(tmp_path), manifest, "train", [path], checksum=False)
    assert "1 of the train shards this rank reads have no column-chunk checksums in the manifest" in caplog.text
    assert batches(str(tmp_path), manifest, 0, 2)[1]


def test_the_etl_takes_column_chunk_crc32s_from_the_bytes_as_they_go_out(tmp_path):
    """What the ETL's writer records (RunningCrc at write boundaries, ranges from the footer) is the CRC32
    of each column chunk's bytes, and the ranges cover every byte between the magic and the footer."""
    from ringtrain.etl.shards import HashingSink
    path = str(tmp_path / "s.parquet")
    table = pa.table({"x": np.random.default_rng(0).random(5000), "k": [f"k{i}" for i in range(5000)]})
    sink = HashingSink(open(path, "wb"))
    with pq.ParquetWriter(sink, table.schema, compression="snappy") as writer:
        for start in range(0, 5000, 1200):
            writer.write_table(table.slice(start, 1200), row_group_size=1200)
    sink.close()
    data = open(path, "rb").read()
    meta = pq.ParquetFile(path).metadata
    ranges = chunk_ranges(meta, len(data))
    assert [(g, c) for g, c, _, _ in ranges] == [(g, c) for g in range(5) for c in range(2)] and ranges[0][2] == 4
    assert all(a + n == b for (_, _, a, n), (_, _, b, _) in zip(ranges, ranges[1:]))
    assert ranges[-1][2] + ranges[-1][3] == len(data) - 8 - meta.serialized_size
    assert [sink.crc.range_crc(o, n) for _, _, o, n in ranges] == [zlib.crc32(data[o:o + n]) for _, _, o, n in ranges]
    assert RunningCrc().range_crc(0, 1) is None


@pytest.mark.petastorm
def test_petastorm_prints_nothing_on_stdout(tmp_path, capfd):
    """stdout carries a rank's result line and the CLI's --json output: petastorm's "Cache cleanup complete."
    (printed as each reader closes, once per epoch) stays out of it."""
    manifest = make_dataset(str(tmp_path), [640, 640])
    for epoch in (0, 1):
        assert batches(str(tmp_path), manifest, 0, 2, "petastorm", epoch=epoch)[1]
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
def test_an_emptied_local_shard_fails_naming_it(tmp_path, kind):
    manifest = make_dataset(str(tmp_path), [1000, 1000])
    open(os.path.join(str(tmp_path), "train", "part-00001.parquet"), "w").close()
    with pytest.raises(DatasetError, match=r"^shard .*part-00001\.parquet is not a readable Parquet file \(.*0 bytes"):
        batches(str(tmp_path), manifest, 1, 2, kind)
