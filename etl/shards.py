"""Load: shuffle rows across exactly balanced shards and write them as Parquet into staging.

Balance is exact, not statistical: rows are ordered by a seeded hash of their key, numbered
per split (per bucket, offset by the bucket counts of the first pass, so no single task sorts them all),
and row i goes to shard i mod n. Shard sizes therefore differ by at most one row. Every
split is numbered and written in one Spark job (two shuffles: the numbering, then by shard).

Each Spark task writes whole shards with pyarrow, so the row-group size is exact in rows and
the bytes are a pure function of the rows and the seed: rerunning the same input gives
identical files and checksums. Tasks write straight to the store (any `ringtrain.store` URI;
nothing passes through the driver) and hash the bytes as they go out (a sha256 of the shard, and the CRC32 of
each column chunk's byte range, which readers check as they read: `ringtrain.rowcheck`); each task then reads its
shards' footers back from the store and reports them. The driver checks those reports against the
plan (`check_written`) without reading any shard.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ringtrain.errors import DatasetError
from ringtrain.manifest import Shard
from ringtrain.rowcheck import FIELD as CHUNK_CRC32, RunningCrc, chunk_ranges, crc32
from ringtrain.store import join, makedirs, open_input, open_output, remove

ORDER, GROUP, SHARD = "_order", "_group", "_shard"
BUCKET_COUNT = 64


def shard_count(rows: int, rows_per_shard: int, fixed: int | None, max_world_size: int) -> int:
    """Shards for one split: a multiple of max_world_size, so every rank gets whole, equal shards."""
    wanted = fixed or max(1, math.ceil(rows / rows_per_shard))
    return max(max_world_size, math.ceil(wanted / max_world_size) * max_world_size)


def shuffle_order(key: str, seed: int) -> Column:
    """A row's place in the shuffled order: a seeded hash of its key (independent of partitioning)."""
    return F.xxhash64(F.lit(seed), F.col(key).cast("string"))


def order_bucket(order: Column) -> Column:
    """The bucket of a row's order: rows are numbered per bucket, so no single task sorts them all."""
    return F.pmod(order, F.lit(BUCKET_COUNT))


@dataclass(frozen=True)
class ShardPlan:
    """Where every row goes: per split, the number of shards and the rows in each bucket (counted before
    writing). Shards of all splits are numbered globally: split i's shards follow split i-1's."""
    splits: tuple[str, ...]
    shards: dict[str, int]              # split -> number of shards
    bucket_rows: dict[str, list[int]]   # split -> rows in each bucket
    row_group_rows: int

    def rows(self, split: str) -> int:
        return sum(self.bucket_rows[split])

    def first_shard(self, split: str) -> int:
        return sum(self.shards[s] for s in self.splits[:self.splits.index(split)])

    def shard_rows(self, split: str) -> list[int]:
        """Rows of each shard: row i of the split (in shuffled order) goes to shard i mod n."""
        rows, n = self.rows(split), self.shards[split]
        return [rows // n + (1 if i < rows % n else 0) for i in range(n)]

    def row_groups(self, rows: int) -> int:
        return math.ceil(rows / self.row_group_rows)

    def locate(self, shard: int) -> tuple[str, int]:
        """(split, shard within the split) of a global shard number."""
        for split in self.splits:
            if shard < self.shards[split]:
                return split, shard
            shard -= self.shards[split]
        raise ValueError(f"shard {shard} is outside the plan")


def number_rows(df: DataFrame, plan: ShardPlan, split_column: str, key: str, seed: int) -> DataFrame:
    """Add `_order` and `_shard` (global, see ShardPlan): rows of a split are numbered in shuffled order, per
    bucket (offset by the rows of the buckets before it), and row i goes to shard i mod n, so sizes differ by
    at most one. One shuffle numbers every split.

    A (split, bucket) is a group. The rows are shuffled by group into one task per core and sorted by (group,
    order, key); a row's number within its group is then its position in its task minus the group's first
    position there, which the driver knows: it has every group's rows (the plan) and the task each group
    goes to (`group_partitions`, the hash Spark's shuffle uses). No window: a window sorts by its partition
    columns first, and with a few hundred groups that first key cannot tell rows apart, so nearly every
    comparison of the sort fell through to the slow full-row comparison (`_sort_key` makes the first key
    distinct per row)."""
    spark = df.sparkSession
    groups = len(plan.splits) * BUCKET_COUNT
    tasks = max(1, min(spark.sparkContext.defaultParallelism, groups))
    index = F.lit(len(plan.splits) - 1)  # the split's position in the plan (literal arrays: O(1) look-ups)
    for i, split in reversed(list(enumerate(plan.splits[:-1]))):
        index = F.when(F.col(split_column) == split, F.lit(i)).otherwise(index)
    df = df.withColumn(ORDER, shuffle_order(key, seed))
    df = df.withColumn(GROUP, (index * BUCKET_COUNT + order_bucket(F.col(ORDER))).cast("int"))
    rows = [r for split in plan.splits for r in plan.bucket_rows[split]]
    offsets = [sum(plan.bucket_rows[split][:b]) for split in plan.splits for b in range(BUCKET_COUNT)]
    first_position, filled = [], [0] * tasks  # each group's first row's position in its task
    for group, task in enumerate(group_partitions(spark, groups, tasks)):
        first_position.append(filled[task])
        filled[task] += rows[group]
    df = df.repartition(tasks, GROUP).sortWithinPartitions(_sort_key(F.col(GROUP), groups), ORDER, key)
    # monotonically_increasing_id: the task's id in the upper 31 bits, the row's position in the task below.
    position = F.monotonically_increasing_id() - F.shiftleft(F.spark_partition_id().cast("long"), 33)
    rank = position - _at(first_position, F.col(GROUP))
    split_index = (F.col(GROUP) / BUCKET_COUNT).cast("int")
    shards = _at([plan.shards[s] for s in plan.splits], split_index)
    first = _at([plan.first_shard(s) for s in plan.splits], split_index)
    shard = first + F.pmod(_at(offsets, F.col(GROUP)) + rank, shards)
    return df.withColumn(SHARD, shard.cast("int")).drop(GROUP)


def group_partitions(spark, groups: int, tasks: int) -> list[int]:
    """The task of each group 0..groups-1 under `repartition(tasks, <int column>)`: Spark's hash partitioning,
    pmod(murmur3(value, seed 42), tasks), which is the SQL function `hash`. Asked of Spark itself (one tiny
    local job), so it is the same function (tests/test_etl.py checks it against a real shuffle)."""
    rows = spark.range(groups).select(F.expr(f"pmod(hash(cast(id as int)), {tasks})").alias("task")).collect()
    return [r["task"] for r in rows]


_SIGN = -(1 << 63)


def _sort_key(major: Column, count: int) -> Column:
    """A non-negative long that sorts like (major, `_order`) except among rows whose orders share their top
    bits: `major` (0 <= major < count) in the top bits, the order's top bits (as unsigned) below. Sorting by
    (this, _order, key) is sorting by (major, _order, key), but Spark's sort compares a first key's 8-byte
    prefix before anything else, and this one differs between nearly all rows."""
    bits = max(1, (count - 1).bit_length())
    unsigned = F.col(ORDER).bitwiseXOR(F.lit(_SIGN))  # signed order -> same order as unsigned bits
    return F.shiftleft(major.cast("long"), 63 - bits) + F.shiftrightunsigned(unsigned, bits + 1)


def _at(values: list[int], index: Column) -> Column:
    """values[index] for a 0-based index column, from a literal array."""
    return F.element_at(_literal_array(values), index + 1)


def _literal_array(values: list[int]) -> Column:
    """An array<bigint> literal, parsed by Spark in one call (a `F.lit` per element is a round trip to the JVM
    each: 0.3 s for the plan's few hundred values)."""
    return F.expr(f"array({', '.join(f'{int(v)}L' for v in values)})")


def write_shards(numbered: DataFrame, plan: ShardPlan, folders: dict[str, str], *, split_column: str, key: str,
                 prefix: str = "part") -> dict[str, list[Shard]]:
    """Write each shard of `numbered` (see number_rows) as <folders[split]>/<prefix>-NNNNN.parquet, every
    split in one Spark job; check what the tasks report against the plan (`check_written`) and return per
    split its shards' manifest entries: rows, bytes, row groups, sha256, column chunks' CRC32s, file."""
    for folder in folders.values():
        makedirs(folder)
    columns = [c for c in numbered.columns if c not in (ORDER, SHARD, split_column)]
    total = sum(plan.shards.values())

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = _ShardWriter(plan, folders, columns, prefix)
        for batch in batches:
            shards = batch.column(SHARD).to_numpy()
            start = 0
            # Rows arrive sorted by shard: cut the batch where the shard changes.
            for end in _change_points(shards) + [len(shards)]:
                writer.add(int(shards[start]), batch.slice(start, end - start).select(columns))
                start = end
        for row in writer.close():
            yield pa.RecordBatch.from_pylist([row], schema=_RESULT)

    # The key breaks ties of the order (keys that hash alike), so rows are always written in one order.
    # A shard's rows are in one partition, sorted; coalescing (no shuffle) hands each task several partitions
    # one after the other, so a task writes whole shards in turn. One task per core, not one per shard: every
    # task of a mapInArrow pays a fixed cost in its Python worker (at 1M rows, 40 tasks took 3x as long as 2).
    parallelism = numbered.sparkSession.sparkContext.defaultParallelism
    ordered = numbered.repartition(total, SHARD).sortWithinPartitions(
        _sort_key(F.col(SHARD), total), ORDER, key).coalesce(min(total, parallelism))
    written = [r.asDict() for r in ordered.mapInArrow(write_partition, _RESULT_DDL).collect()]
    missing = sorted(set(range(total)) - {r["shard"] for r in written})
    if missing:  # fewer rows than shards: those shards are empty files
        schema = pa.schema([f for f in _arrow_schema(numbered) if f.name in columns])
        writer = _ShardWriter(plan, folders, columns, prefix, schema=schema)
        for shard in missing:
            writer.open(shard)
        written.extend(writer.close())
    return check_written(plan, written)


def check_written(plan: ShardPlan, written: list[dict]) -> dict[str, list[Shard]]:
    """The driver's verification, from what the writing tasks reported (nothing is read back here): every
    planned shard written once, with the planned rows and row groups, its Parquet footer (read back by the
    task that wrote it) agreeing, the stored size equal to the bytes hashed on their way out, and one
    schema for all shards. Returns per split the shards' manifest entries, in shard order."""
    def fail(shard: dict | None, what: str) -> DatasetError:
        where = f"shard {shard['file']} ({shard['split']}) as written does not" if shard else \
            "the shards as written do not"
        return DatasetError(f"{where} match the ETL's plan: {what}; nothing was published. "
                            f"The store lost or changed bytes while the ETL wrote them: run the ETL again")

    by_shard: dict[int, dict] = {}
    for r in written:
        if r["shard"] in by_shard:
            raise fail(r, "written twice")
        by_shard[r["shard"]] = r
    schemas = {r["schema"] for r in written}
    if len(schemas) > 1:
        odd = next(r for r in sorted(written, key=lambda r: r["shard"]) if r["schema"] != written[0]["schema"])
        raise fail(odd, "its schema differs from the other shards'")
    result = {}
    for split in plan.splits:
        first = plan.first_shard(split)
        entries = []
        for i, rows in enumerate(plan.shard_rows(split)):
            r = by_shard.get(first + i)
            if r is None:
                raise fail(None, f"shard {i} of split {split} is missing")
            if r["split"] != split:
                raise fail(r, f"written for split {r['split']}, planned for {split}")
            if not r["rows"] == r["footer_rows"] == rows:
                raise fail(r, f"{r['footer_rows']} rows in its footer ({r['rows']} written), {rows} planned")
            groups = plan.row_groups(rows)
            if not r["row_groups"] == r["footer_row_groups"] == groups:
                raise fail(r, f"{r['footer_row_groups']} row groups in its footer ({r['row_groups']} written), "
                              f"{groups} planned")
            if r["stored_bytes"] != r["bytes"]:
                raise fail(r, f"{r['stored_bytes']} bytes stored, {r['bytes']} written")
            checked_groups = len({c[0] for c in r[CHUNK_CRC32]})
            if checked_groups != groups:
                raise fail(r, f"column-chunk checksums for {checked_groups} row groups, {groups} planned")
            entries.append(Shard(shard=i, rows=rows, bytes=r["bytes"], row_groups=groups, sha256=r["sha256"],
                                 chunk_crc32=[list(c) for c in r[CHUNK_CRC32]], file=r["file"]))
        result[split] = entries
    return result


def write_quarantine(bad: DataFrame, folder: str, prefix: str = "part") -> None:
    """The rejected rows (every column as a string, with its reason) as Parquet files <prefix>-NNNNN.parquet
    under `folder`, one per non-empty partition, written by the tasks straight to the store (Spark's own writer cannot reach every
    store ringtrain supports: its s3a connector needs jars pyspark does not ship)."""
    as_strings = bad.select(*[F.col(c).cast("string") for c in bad.columns])

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext
        batches = iter(batches)
        first = next((b for b in batches if b.num_rows), None)
        if first is None:
            return
        path = join(folder, f"{prefix}-{TaskContext.get().partitionId():05d}.parquet")
        remove(path)  # a retried task: never truncate in place (see _ShardWriter.open)
        rows = 0
        with open_output(path) as out, pq.ParquetWriter(out, first.schema, compression="snappy") as writer:
            for batch in itertools.chain([first], batches):
                writer.write_batch(batch)
                rows += batch.num_rows
        yield pa.RecordBatch.from_pylist([{"rows": rows}])

    as_strings.mapInArrow(write_partition, "rows long").collect()


_RESULT = pa.schema([("shard", pa.int32()), ("split", pa.string()), ("file", pa.string()), ("rows", pa.int64()),
                     ("bytes", pa.int64()), ("row_groups", pa.int32()), ("sha256", pa.string()),
                     ("footer_rows", pa.int64()), ("footer_row_groups", pa.int32()), ("stored_bytes", pa.int64()),
                     ("schema", pa.string()), (CHUNK_CRC32, pa.list_(pa.list_(pa.int64())))])
_RESULT_DDL = ("shard int, split string, file string, rows long, bytes long, row_groups int, sha256 string, "
               f"footer_rows long, footer_row_groups int, stored_bytes long, schema string, "
               f"{CHUNK_CRC32} array<array<long>>")


def _change_points(values: np.ndarray) -> list[int]:
    """Positions where a sorted array's value changes."""
    return (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist()


def _arrow_schema(df: DataFrame) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema
    return to_arrow_schema(df.schema)


class _ShardWriter:
    """Writes one shard at a time, buffering rows so every row group but the last is exactly full. When a
    shard is closed, its footer is read back from the store (a few KiB, not the data) to report what
    the store holds; the driver checks the reports against the plan."""

    def __init__(self, plan: ShardPlan, folders: dict[str, str], columns: list[str], prefix: str,
                 schema: pa.Schema | None = None):
        self.plan, self.folders, self.columns, self.prefix = plan, folders, columns, prefix
        self.schema = schema
        self.shard, self.writer, self.buffer, self.buffered, self.results = None, None, [], 0, []

    def open(self, shard: int) -> None:
        self._finish()
        self.shard = shard
        self.split, index = self.plan.locate(shard)
        self.name = f"{self.prefix}-{index:05d}.parquet"
        self.path = join(self.folders[self.split], self.name)
        # A retried task: unlink, never truncate in place (on POSIX the name could be a hard link into a
        # published version, whose bytes must never change).
        remove(self.path)
        self.sink = HashingSink(open_output(self.path))
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression="snappy")
        self.rows, self.row_groups = 0, 0

    def add(self, shard: int, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = batch.schema
        if shard != self.shard:
            self.open(shard)
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        while self.buffered >= self.plan.row_group_rows:
            self._flush(self.plan.row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self.buffer, schema=self.schema).combine_chunks()
        self.writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self.buffer, self.buffered = rest.to_batches(), rest.num_rows
        self.rows += rows
        self.row_groups += 1

    def _finish(self) -> None:
        if self.writer is None:
            return
        if self.buffered:
            self._flush(self.buffered)
        self.writer.close()
        self.sink.close()  # on S3 the object appears here, whole
        with open_input(self.path) as f:
            stored_bytes = f.size()
            footer = pq.ParquetFile(f).metadata
            checks = []
            for group, column, offset, length in chunk_ranges(footer, stored_bytes):
                crc = self.sink.crc.range_crc(offset, length)
                if crc is None:  # not on a write boundary (no pyarrow does this): read the range back
                    crc = crc32(f.read_at(length, offset))
                checks.append([group, column, offset, length, crc])
        self.results.append({
            "shard": self.shard, "split": self.split, "file": self.name, "rows": self.rows,
            "bytes": self.sink.bytes, "row_groups": self.row_groups, "sha256": self.sink.digest.hexdigest(),
            "footer_rows": footer.num_rows, "footer_row_groups": footer.num_row_groups,
            "stored_bytes": stored_bytes, "schema": footer.schema.to_arrow_schema().to_string(),
            CHUNK_CRC32: checks})
        self.writer, self.shard = None, None

    def close(self) -> list[dict]:
        self._finish()
        return self.results


class HashingSink:
    """A write-only file that forwards to a store stream and hashes the bytes on their way out, so a shard's
    checksums (its sha256, its column chunks' CRC32s) need no second read (on an object store that would be a
    second download)."""

    def __init__(self, stream):
        self.stream, self.digest, self.crc, self.bytes, self.closed = stream, hashlib.sha256(), RunningCrc(), 0, False

    def write(self, data) -> int:
        self.digest.update(data)
        self.crc.update(data)
        self.bytes += len(data)
        self.stream.write(data)
        return len(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True
