"""Pure reading logic on real Parquet files (no Spark, no process group)."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ringtrain.manifest import DatasetError
from ringtrain.training.data import Columns, open_reader, plan_reading


def make_dataset(folder, shard_rows, row_group_rows=100):
    """A manifest plus shards of the given sizes, keys k<shard>-<row>."""
    os.makedirs(os.path.join(folder, "train"), exist_ok=True)
    shards = []
    for i, rows in enumerate(shard_rows):
        table = pa.table({"x": np.arange(rows, dtype=np.float32), "c": np.zeros(rows, np.int32),
                          "label": np.ones(rows, np.float32), "id": [f"k{i}-{r}" for r in range(rows)]})
        name = f"part-{i:05d}.parquet"
        pq.write_table(table, os.path.join(folder, "train", name), row_group_size=row_group_rows)
        shards.append({"file": name, "rows": rows, "row_groups": -(-rows // row_group_rows)})
    return {"splits": {"train": {"rows": sum(shard_rows), "shards": shards}},
            "features": {"numeric_columns": ["x"], "categorical_cardinalities": {"c": 1}, "label": "label", "key": "id"}}


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


@pytest.mark.parametrize("kind", ["arrow", pytest.param("petastorm", marks=pytest.mark.petastorm)])
@pytest.mark.parametrize("shard_rows", [[640, 640, 640, 640], [1000]], ids=["whole-shards", "row-groups"])
def test_readers_stream_the_same_rows_from_s3_as_from_local_files(tmp_path, s3_server, kind, shard_rows):
    """The same shards, uploaded to the S3 server: both readers yield the same batches from the URIs as from
    local files, for whole-shard and row-group sharding (the files are opened for ranged reads by URI)."""
    local = str(tmp_path)
    manifest = make_dataset(local, shard_rows)
    remote = s3_server.fresh_uri("reader")
    fs = s3_server.filesystem()
    for name in os.listdir(os.path.join(local, "train")):
        with open(os.path.join(local, "train", name), "rb") as f, \
                fs.open_output_stream(f"{remote[len('s3://'):]}/train/{name}") as out:
            out.write(f.read())
    for rank in (0, 1):
        plan, got = batches(remote, manifest, rank, 2, kind, epoch=1)
        assert all(p.startswith("s3://") for p in plan.files)
        assert got == batches(local, manifest, rank, 2, kind, epoch=1)[1] and got
