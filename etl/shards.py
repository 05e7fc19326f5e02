"""Load: shuffle rows across exactly balanced shards and write them as Parquet into staging.

Balance is exact, not statistical: rows are ordered by a seeded hash of their key, numbered
globally (bucketed windows plus a small collect of bucket counts, so no single-partition sort),
and row i goes to shard i mod n. Shard sizes therefore differ by at most one row.

Each Spark task writes whole shards with pyarrow, so the row-group size is exact in rows and
the bytes are a pure function of the rows and the seed: rerunning the same input gives
identical files and checksums. Tasks write straight to the store (any `ringtrain.store` URI;
nothing passes through the driver) and hash the bytes as they go out.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ringtrain.store import join, makedirs, open_output, remove

ORDER, SHARD = "_order", "_shard"
_BUCKETS = 64


def shard_count(rows: int, rows_per_shard: int, fixed: int | None, max_world_size: int) -> int:
    """Shards for one split: a multiple of max_world_size, so every rank gets whole, equal shards."""
    wanted = fixed or max(1, math.ceil(rows / rows_per_shard))
    return max(max_world_size, math.ceil(wanted / max_world_size) * max_world_size)


def assign_shards(df: DataFrame, key: str, seed: int, num_shards: int) -> DataFrame:
    """Add `_order` (seeded hash) and `_shard` (exactly balanced: sizes differ by at most one)."""
    df = df.withColumn(ORDER, F.xxhash64(F.lit(seed), F.col(key).cast("string")))
    bucket = F.pmod(F.col(ORDER), F.lit(_BUCKETS))
    df = df.withColumn("_bucket", bucket)
    counts = dict(df.groupBy("_bucket").count().collect())
    offsets, running = {}, 0
    for b in range(_BUCKETS):
        offsets[b] = running
        running += counts.get(b, 0)
    offset = F.create_map(*[x for b, o in offsets.items() for x in (F.lit(b), F.lit(o))])
    rank = F.row_number().over(Window.partitionBy("_bucket").orderBy(ORDER, key)) - 1
    return (df.withColumn(SHARD, F.pmod(offset[F.col("_bucket")] + rank, F.lit(num_shards)).cast("int"))
            .drop("_bucket"))


def write_shards(df: DataFrame, folder: str, num_shards: int, row_group_rows: int,
                 prefix: str = "part") -> list[dict]:
    """Write each shard as <folder>/<prefix>-NNNNN.parquet; return per-shard rows, bytes, row groups, sha256."""
    makedirs(folder)
    columns = [c for c in df.columns if c not in (ORDER, SHARD)]

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        writer = _ShardWriter(folder, columns, row_group_rows, prefix)
        for batch in batches:
            shards = batch.column(SHARD).to_numpy()
            start = 0
            # Rows arrive sorted by shard: cut the batch where the shard changes.
            for end in list(_change_points(shards)) + [len(shards)]:
                writer.add(int(shards[start]), batch.slice(start, end - start).select(columns))
                start = end
        for row in writer.close():
            yield pa.RecordBatch.from_pylist([row], schema=_RESULT)

    ordered = df.repartition(num_shards, SHARD).sortWithinPartitions(SHARD, ORDER)
    results = ordered.mapInArrow(write_partition, "shard int, rows long, bytes long, row_groups int, sha256 string, file string")
    written = sorted((r.asDict() for r in results.collect()), key=lambda r: r["shard"])
    missing = sorted(set(range(num_shards)) - {r["shard"] for r in written})
    if missing:  # fewer rows than shards
        schema = pa.schema([f for f in _arrow_schema(df) if f.name in columns])
        for shard in missing:
            writer = _ShardWriter(folder, columns, row_group_rows, prefix, schema=schema)
            writer.open(shard)
            written.extend(writer.close())
        written.sort(key=lambda r: r["shard"])
    return written


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


_RESULT = pa.schema([("shard", pa.int32()), ("rows", pa.int64()), ("bytes", pa.int64()),
                     ("row_groups", pa.int32()), ("sha256", pa.string()), ("file", pa.string())])


def _change_points(values) -> Iterator[int]:
    for i in range(1, len(values)):
        if values[i] != values[i - 1]:
            yield i


def _arrow_schema(df: DataFrame) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema
    return to_arrow_schema(df.schema)


class _ShardWriter:
    """Writes one shard at a time, buffering rows so every row group but the last is exactly full."""

    def __init__(self, folder: str, columns: list[str], row_group_rows: int, prefix: str,
                 schema: pa.Schema | None = None):
        self.folder, self.columns, self.row_group_rows, self.prefix = folder, columns, row_group_rows, prefix
        self.schema = schema
        self.shard, self.writer, self.buffer, self.buffered, self.results = None, None, [], 0, []

    def open(self, shard: int) -> None:
        self.shard = shard
        self.name = f"{self.prefix}-{shard:05d}.parquet"
        path = join(self.folder, self.name)
        # A retried task: unlink, never truncate in place (on POSIX the name could be a hard link into a
        # published version, whose bytes must never change).
        remove(path)
        self.sink = HashingSink(open_output(path))
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression="snappy")
        self.rows, self.row_groups = 0, 0

    def add(self, shard: int, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = batch.schema
        if shard != self.shard:
            self._finish()
            self.open(shard)
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        while self.buffered >= self.row_group_rows:
            self._flush(self.row_group_rows)

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
        self.results.append({"shard": self.shard, "rows": self.rows, "bytes": self.sink.bytes,
                             "row_groups": self.row_groups, "sha256": self.sink.digest.hexdigest(),
                             "file": self.name})
        self.writer, self.shard = None, None

    def close(self) -> list[dict]:
        self._finish()
        return self.results


class HashingSink:
    """A write-only file that forwards to a store stream and hashes the bytes on their way out, so a shard's
    checksum needs no second read (on an object store that would be a second download)."""

    def __init__(self, stream):
        self.stream, self.digest, self.bytes, self.closed = stream, hashlib.sha256(), 0, False

    def write(self, data) -> int:
        self.digest.update(data)
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
