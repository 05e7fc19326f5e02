"""Row-group checksums: every byte a rank trains on is checked as it is read. Core.

The ETL records, for each shard in the manifest, every row group's byte range and the CRC32 of its bytes
(`row_group_crc32`: [[offset, length, crc32], ...], one per row group), taken from the bytes on their way to
the store (`RunningCrc`: no second read). A reader opens a shard through `CheckedFile`: the first read that
touches a row group reads the group's whole range once, checks its CRC32, and serves pyarrow's reads of that
group from the checked bytes. Both readers (the arrow reader and petastorm, through the legacy filesystem
it is given) read through it, on every store, so a damaged row group fails as it is read, naming the shard
and the row group, with a `DatasetError` (exit 2, not retried).

Why not Parquet page checksums: petastorm 0.13.1 opens files through pyarrow's legacy ParquetDataset, which
cannot ask for page verification, and a page CRC leaves the page headers and the dictionary-less bytes
between pages unchecked. A CRC per row group range checks every byte between the file's magic and its footer,
needs no change to the shards' bytes (the same input and seed give the same files as before), and costs one
zlib.crc32 pass over bytes the reader fetches anyway (BENCHMARKS.md "Row-group checksums").

The footer is not in a range: its size and what it says (rows, row groups) are checked against the manifest
before training (`training.data.verify_shards`), and its Thrift encoding fails to parse when damaged.
"""
from __future__ import annotations

import bisect
import zlib

from ringtrain.errors import DatasetError

FIELD = "row_group_crc32"  # the manifest's per-shard field: [[offset, length, crc32], ...]

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
    groups start and end on boundaries."""

    def __init__(self):
        self.crc, self.bytes, self.at = 0, 0, {0: 0}

    def update(self, data) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.bytes += len(data)
        self.at[self.bytes] = self.crc

    def range_crc(self, offset: int, length: int) -> int | None:
        """CRC32 of bytes [offset, offset + length), or None when either end is not a write boundary."""
        start, end = self.at.get(offset), self.at.get(offset + length)
        if start is None or end is None:
            return None
        return end ^ _shift(start, length)


def row_group_ranges(metadata, file_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each row group in a Parquet file, from its footer (pyarrow FileMetaData): from the
    group's first column chunk to the next group's, the last one to the footer. Every byte between the
    leading magic and the footer is in one range, the column metadata that older writers (pyarrow 14) put
    after each chunk included."""
    starts = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        chunks = [group.column(c) for c in range(group.num_columns)]
        starts.append(min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
                          for c in chunks))
    footer = file_size - 8 - metadata.serialized_size  # <footer><4-byte length>PAR1
    ends = starts[1:] + [footer]
    return [(start, end - start) for start, end in zip(starts, ends)]


class CheckedFile:
    """A shard open for reading (a pyarrow NativeFile underneath) whose row groups are checked against the
    manifest's CRC32s as pyarrow reads them: a read inside a row group's range reads and checks the whole
    group once (kept until another group is read), then serves the read from the checked bytes. A read that
    reaches the end of the file is the footer look-up and passes through (see the module docstring)."""

    def __init__(self, raw, path: str, ranges: list[list[int]]):
        self.raw, self.path = raw, path
        self.starts = [r[0] for r in ranges]
        self.ranges = ranges
        self.size = raw.size()
        self.pos, self.closed = 0, False
        self.group, self.data = -1, b""

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
            self.closed, self.data = True, b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, nbytes: int = -1):
        start = self.pos
        end = self.size if nbytes is None or nbytes < 0 else min(self.size, start + nbytes)
        self.pos = end
        if end >= self.size:
            return self.raw.read_at(end - start, start)
        parts, at = [], start
        while at < end:
            i = bisect.bisect_right(self.starts, at) - 1
            offset, length = (self.ranges[i][0], self.ranges[i][1]) if i >= 0 else (0, 0)
            if i >= 0 and at < offset + length:
                stop = min(end, offset + length)
                parts.append(memoryview(self._checked(i))[at - offset:stop - offset])
            else:  # the magic at the start, or a gap between groups (none in files pyarrow writes)
                stop = min(end, self.starts[i + 1]) if i + 1 < len(self.starts) else end
                parts.append(self.raw.read_at(stop - at, at))
            at = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _checked(self, group: int) -> bytes:
        if group != self.group:
            offset, length, expected = self.ranges[group]
            data = self.raw.read_at(length, offset)
            crc = zlib.crc32(data)
            if len(data) != length or crc != expected:
                what = (f"{len(data)} bytes where the manifest has {length}" if len(data) != length
                        else f"crc32 {crc:08x}, the manifest says {expected:08x}")
                raise DatasetError(
                    f"shard {self.path} row group {group} (bytes {offset}..{offset + length}) does not match the "
                    f"dataset's manifest: {what}. The published version is damaged; publish a fresh one "
                    f"(`ringtrain etl --force`) or train on another (--dataset)")
            self.group, self.data = group, data
        return self.data
