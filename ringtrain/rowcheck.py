"""Column-chunk checksums: every byte a rank trains on is checked as it is read. Core.

The ETL records, for each shard in the manifest, every column chunk's byte range and the CRC32 of its bytes
(`chunk_crc32`: [[row group, column, offset, length, crc32], ...], in file order), taken from the bytes on
their way to the store (`RunningCrc`: no second read). Both readers check every chunk they read, on every
store, so a damaged chunk fails as it is read, naming the shard and the row group, with a `DatasetError` (exit 2,
not retried):
- a local shard is memory-mapped (`MappedShard`), which checks the chunks a row group is about to be read from
  (the arrow reader), or all the chunks of the columns read the first time a pass opens the shard (petastorm,
  which opens it again for each row group), and pyarrow then decodes those very pages, without a copy;
- a shard on another store (S3, HDFS) opens through `CheckedFile`: a read in the chunks' ranges fetches the chunks
  it touches in one request, checks their CRC32s and serves pyarrow's reads from the checked bytes.

Why column chunks: a reader reads only the columns it needs (training skips the key, a third of the demo's
bytes), and checking a whole row group would read those bytes too. Why not Parquet page checksums: petastorm
0.13.1 opens files through pyarrow's legacy ParquetDataset, which cannot ask for page verification, and page
CRCs leave the page headers unchecked. These CRC32s cover every byte between the file's magic and its footer,
need no change to the shards' bytes (the same input and seed give the same files as before), and cost one
CRC-32 pass over the bytes the reader reads anyway (BENCHMARKS.md "Column-chunk checksums").

The footer is not in a range: its size and what it says (rows, row groups) are checked against the manifest
before training (`training.data.verify_shards`), and its Thrift encoding fails to parse when damaged.
"""
from __future__ import annotations

import bisect

from ringtrain.errors import REPUBLISH, DatasetError

try:  # ISA-L's CRC-32: zlib's checksum, the same values, about 12x faster here (carry-less multiply folding)
    from isal.isal_zlib import crc32
except ImportError:  # e.g. a wheel installed with --no-deps: the same values, from zlib
    from zlib import crc32

FIELD = "chunk_crc32"  # the manifest's per-shard field: [[row group, column, offset, length, crc32], ...]

_POLY = 0xEDB88320  # CRC-32 (zlib's), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (zlib's multmodp)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    p, table = 1 << 30, []  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def _shift(crc: int, nbytes: int) -> int:
    """crc * x^(8 * nbytes): what the CRC of a prefix contributes to the CRC of prefix + nbytes more bytes."""
    p, k, n = 1 << 31, 3, nbytes
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc)


class RunningCrc:
    """The CRC32 of a stream's prefix at every write boundary, so the CRC32 of any range between two
    boundaries follows without the bytes: crc(B) = crc(A + B) ^ shift(crc(A), len(B)) (zlib's
    crc32_combine, solved for the second part). Parquet writers end every column chunk with a write, so row
    chunks start and end on boundaries."""

    def __init__(self):
        self.crc, self.bytes, self.at = 0, 0, {0: 0}

    def update(self, data) -> None:
        self.crc = crc32(data, self.crc)
        self.bytes += len(data)
        self.at[self.bytes] = self.crc

    def range_crc(self, offset: int, length: int) -> int | None:
        """CRC32 of bytes [offset, offset + length), or None when either end is not a write boundary."""
        start, end = self.at.get(offset), self.at.get(offset + length)
        if start is None or end is None:
            return None
        return end ^ _shift(start, length)


def chunk_ranges(metadata, file_size: int) -> list[tuple[int, int, int, int]]:
    """(row group, column, offset, length) of each column chunk of a Parquet file, in file order, from its footer
    (pyarrow FileMetaData): from the chunk's first page to the next chunk's, the last one to the footer. Every
    byte between the leading magic and the footer is in one range, the column metadata that older writers
    (pyarrow 14) put after each chunk included."""
    starts = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            starts.append((chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset,
                           g, c))
    starts.sort()
    footer = file_size - 8 - metadata.serialized_size  # <footer><4-byte length>PAR1
    ends = [offset for offset, _, _ in starts[1:]] + [footer]
    return [(g, c, offset, end - offset) for (offset, g, c), end in zip(starts, ends)]


class CheckedFile:
    """A shard open for reading (a pyarrow NativeFile underneath) whose column chunks are checked against the
    manifest's CRC32s as pyarrow reads them: a read inside checked ranges reads the chunks it touches in one
    request, checks each, keeps them until a read outside them, and serves the read from the checked bytes.
    Only the chunks a reader asks for are read (a key column that training skips is neither read nor checked).
    A read that reaches the end of the file is the footer look-up and passes through (see the module docstring)."""

    def __init__(self, raw, path: str, chunks: list[list[int]]):
        self.raw, self.path, self.chunks = raw, path, chunks  # [row group, column, offset, length, crc32]
        self.starts = [c[2] for c in chunks]
        self.ends = [c[2] + c[3] for c in chunks]
        self.size = raw.size()
        self.pos, self.closed = 0, False
        self.lo, self.hi, self.base, self.data = 0, -1, 0, None  # the chunks held: lo..hi, from byte `base`

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.closed, self.data = True, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, nbytes: int = -1):
        start = self.pos
        end = self.size if nbytes is None or nbytes < 0 else min(self.size, start + nbytes)
        self.pos = end
        if end >= self.size or not self.chunks:
            return self._read(start, end - start)
        parts, at = [], start
        while at < end:
            i = bisect.bisect_right(self.starts, at) - 1
            if i < 0 or at >= self.ends[-1]:  # the magic before the first chunk, or the footer after the last
                stop = min(end, self.starts[0]) if i < 0 else end
                parts.append(self._read(at, stop - at))
                at = stop
                continue
            if not self.lo <= i <= self.hi:
                self._load(i, bisect.bisect_left(self.starts, end) - 1)
            stop = min(end, self.ends[self.hi])
            parts.append(memoryview(self.data)[at - self.base:stop - self.base])
            at = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read(self, offset: int, length: int):
        # A pyarrow Buffer, not bytes: no copy here, and pyarrow takes the slices handed back without one.
        self.raw.seek(offset)
        return self.raw.read_buffer(length)

    def _load(self, lo: int, hi: int) -> None:
        """Read chunks lo..hi in one request and check each against the manifest."""
        base, length = self.starts[lo], self.ends[hi] - self.starts[lo]
        data = self._read(base, length)
        view = memoryview(data)
        for group, column, offset, size, expected in self.chunks[lo:hi + 1]:
            _check(self.path, group, column, offset, size, expected, view[offset - base:offset - base + size])
        self.lo, self.hi, self.base, self.data = lo, hi, base, data


def column_indices(metadata, names) -> set[int]:
    """Indices of a Parquet file's leaf columns under the top-level columns `names` (what a reader asking for
    `names` reads), from its footer (pyarrow FileMetaData)."""
    schema = metadata.schema
    return {i for i in range(len(schema)) if schema.column(i).path.split(".")[0] in names}


class MappedShard:
    """A local shard, memory-mapped once: `source()` gives pyarrow a zero-copy reader over the mapping, and
    `check(group)` checks the column chunks of a row group (None: of every row group) that pyarrow is about
    to decode from those very pages, with no copy and no Python file object between pyarrow and the bytes.
    `select(columns)` narrows the checks to the chunks of the leaf columns the reader reads (`column_indices`).
    Why not `CheckedFile` locally: BENCHMARKS.md "Column-chunk checksums"."""

    def __init__(self, path: str, local_path: str, chunks: list[list[int]]):
        import mmap
        self.path = path
        with open(local_path, "rb") as f:
            if f.seek(0, 2) == 0:  # mmap refuses an empty file; a Parquet file has at least its magic and footer
                raise DatasetError(f"shard {path} is not a readable Parquet file (0 bytes): the published version "
                                   f"is damaged; {REPUBLISH}")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        self._chunks = chunks
        self._groups: dict[int, list] = {}
        self.select(None)

    def source(self):
        import pyarrow as pa
        return pa.BufferReader(pa.py_buffer(self._map))

    def select(self, columns: set[int] | None) -> None:
        self._groups = {}
        for group, column, offset, size, expected in self._chunks:
            if columns is None or column in columns:
                self._groups.setdefault(group, []).append((column, offset, size, expected))

    def check(self, group: int | None = None) -> None:
        view = self._view
        for g in (self._groups if group is None else (group,)):
            for column, offset, size, expected in self._groups.get(g, ()):
                _check(self.path, g, column, offset, size, expected, view[offset:offset + size])


def _check(path: str, group: int, column: int, offset: int, size: int, expected: int, got) -> None:
    crc = crc32(got)
    if len(got) != size or crc != expected:
        what = (f"{len(got)} bytes where the manifest has {size}" if len(got) != size
                else f"crc32 {crc:08x}, the manifest says {expected:08x}")
        raise DatasetError(
            f"shard {path} row group {group} (column chunk {column}, bytes {offset}..{offset + size}) "
            f"does not match the dataset's manifest: {what}. The published version is damaged; {REPUBLISH}")
