"""Each rank reads its own shards, and every rank yields exactly the same number of batches.

The plan (`plan_reading`) is pure: from the manifest alone every rank computes the same
`steps_per_epoch = rows // (world_size * batch_size)`, so no collective is needed to agree on
it and uneven shards can never make one rank stop early (Horovod fails, or hangs, when ranks
run different numbers of steps). A rank whose shards run short starts another seeded pass over
them; a rank with spare rows leaves them for later epochs (each epoch shuffles differently).

Order is a pure function of (seed, epoch, rank): row groups are shuffled, then rows within each
row group. That is what makes resume exact: skip the batches already trained on, and the rest of
the epoch is the same rows in the same order as an uninterrupted run.

Two readers sit behind `open_reader`: petastorm (the default) and a native pyarrow reader. Both read every
shard through `ringtrain.rowcheck.CheckedFile`, which checks each column chunk against the CRC32 the manifest
records for it as it is read: a damaged byte fails the rank with a DatasetError (exit 2, not retried) that
names the shard and the row group. Shards of manifests written before the ETL recorded those CRC32s get the
footer check only (`verify_shards` logs it).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ringtrain import store
from ringtrain.errors import REPUBLISH
from ringtrain.manifest import DatasetError, Manifest, Shard, shard_paths
from ringtrain.rowcheck import CheckedFile, MappedShard, column_indices
from ringtrain.store import filesystem, is_posix, open_input

log = logging.getLogger("ringtrain.data")


@dataclass(frozen=True)
class ReadPlan:
    files: list[str]
    cur_shard: int | None      # set when ranks share files (row-group sharding)
    shard_count: int | None
    steps_per_epoch: int
    rows: int                  # rows in the split (all ranks)
    # path -> its column chunks' [row group, column, offset, length, crc32] from the manifest; a shard without
    # them is read unchecked
    chunk_crc32: dict = field(default_factory=dict)


def chunk_checks(files: list[str], shards: list[Shard]) -> dict:
    """`ReadPlan.chunk_crc32` for shard paths `files` and their manifest entries `shards`."""
    return {path: shard.chunk_crc32 for path, shard in zip(files, shards) if shard.chunk_crc32 is not None}


def plan_reading(dataset_dir: str, manifest: Manifest, split: str, rank: int, size: int, batch_size: int,
                 *, drop_last: bool = True) -> ReadPlan:
    """Which files this rank reads, and how many batches every rank yields per epoch."""
    info = manifest.splits[split]
    files = shard_paths(dataset_dir, manifest, split)
    checks = chunk_checks(files, info.shards)
    num_row_groups = sum(s.row_groups for s in info.shards)
    steps = info.rows // (size * batch_size) if drop_last else 0
    if drop_last and steps < 1:
        raise DatasetError(f"split {split!r} has {info.rows} rows: too few for {size} ranks x batch_size "
                           f"{batch_size}; lower train.batch_size or train.num_workers")
    if len(files) >= size:
        # Whole shards per rank: ETL makes the shard count a multiple of max_world_size.
        mine = files[rank::size]
        return ReadPlan(mine, None, None, steps, info.rows, {p: checks[p] for p in mine if p in checks})
    if num_row_groups >= size:
        return ReadPlan(files, rank, size, steps, info.rows, checks)
    raise DatasetError(
        f"split {split!r} has {len(files)} shards and {num_row_groups} row groups, fewer than {size} ranks: "
        f"some ranks would get no data. Rerun the ETL with etl.shards.max_world_size >= {size} "
        f"(or a smaller etl.shards.row_group_rows)")


def verify_shards(dataset_dir: str, manifest: Manifest, split: str, files: list[str], *, checksum: bool) -> None:
    """Check the shards this rank will read against the manifest before training: size and Parquet footer,
    and the sha256 when `checksum` (train.verify_shards: full). A damaged or replaced file fails here, naming
    itself, instead of as a read error deep in an epoch. The bytes of the column chunks are checked in any case,
    as they are read (`MappedShard` locally, `CheckedFile` elsewhere), where the manifest records their CRC32s; a manifest written before the
    ETL recorded them gets only this check, and a log line says so."""
    expected = dict(zip(shard_paths(dataset_dir, manifest, split), manifest.splits[split].shards))
    unchecked = [path for path in files if expected[path].chunk_crc32 is None]
    if unchecked:
        log.warning("%d of the %s shards this rank reads have no column-chunk checksums in the manifest (published "
                    "before ringtrain recorded them): their bytes are read unchecked%s. Publish the dataset again "
                    "(`ringtrain etl --force`) to have them checked", len(unchecked), split,
                    "" if checksum else " (train.verify_shards: full checks their sha256 before training)")
    for path in files:
        _verify_shard(path, expected[path], checksum)


def _verify_shard(path: str, shard: Shard, checksum: bool) -> None:
    def mismatch(what: str) -> DatasetError:
        return DatasetError(f"shard {path} does not match the dataset's manifest: {what}. The published version is "
                            f"damaged; {REPUBLISH}")

    try:
        with store.open_input(path) as f:
            size = f.seek(0, os.SEEK_END)
            if size != shard.bytes:
                raise mismatch(f"{size} bytes, the manifest says {shard.bytes}")
            f.seek(0)
            meta = pq.ParquetFile(f).metadata
            if (meta.num_rows, meta.num_row_groups) != (shard.rows, shard.row_groups):
                raise mismatch(f"{meta.num_rows} rows in {meta.num_row_groups} row groups, the manifest says "
                               f"{shard.rows} in {shard.row_groups}")
            if checksum:
                f.seek(0)
                digest = hashlib.sha256()
                while block := f.read(1 << 20):
                    digest.update(block)
                if digest.hexdigest() != shard.sha256:
                    raise mismatch(f"sha256 {digest.hexdigest()}, the manifest says {shard.sha256}")
    except DatasetError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise mismatch(f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc


@dataclass(frozen=True)
class Columns:
    numeric: list[str]
    categorical: list[str]
    label: str
    key: str | None = None  # read only when asked (tests of row order)
    arrays: tuple[tuple[str, int], ...] = ()  # (name, length) of the role 'array' columns, concatenated into "arr"

    @classmethod
    def from_manifest(cls, manifest: Manifest, with_key: bool = False) -> "Columns":
        f = manifest.features
        return cls(list(f.numeric_columns), list(f.categorical_cardinalities), f.label,
                   f.key if with_key else None, tuple(f.arrays.items()))

    def names(self) -> list[str]:
        return self.numeric + self.categorical + [name for name, _ in self.arrays] + [self.label] + ([self.key] if self.key else [])


# {"num": float32 [B, N], "cat": int64 [B, C], "label": float32 [B], "key"?: list[str],
#  "arr"?: float32 [B, sum of array lengths] when the dataset has array columns}
Batch = dict


def _stack_arrays(chunk: dict, arrays: tuple[tuple[str, int], ...]) -> np.ndarray:
    """Fixed-length array columns (object arrays of arrays, or 2-D already) side by side: [rows, sum of lengths]."""
    parts = []
    for name, length in arrays:
        values = chunk[name]
        parts.append(np.stack(list(values)).astype(np.float32, copy=False).reshape(len(values), length)
                     if len(values) else np.zeros((0, length), np.float32))
    return np.concatenate(parts, axis=1)


class _Assembler:
    """Turns column chunks into fixed-size batches; keeps the remainder for the next chunk."""

    def __init__(self, cols: Columns, batch_size: int):
        self.cols, self.batch_size, self.parts = cols, batch_size, []

    def add(self, chunk: dict, order: np.ndarray) -> Iterator[Batch]:
        c = self.cols
        part = {
            "num": np.stack([np.asarray(chunk[n], dtype=np.float32) for n in c.numeric], axis=1)[order]
            if c.numeric else np.zeros((len(order), 0), np.float32),
            "cat": np.stack([np.asarray(chunk[n], dtype=np.int64) for n in c.categorical], axis=1)[order]
            if c.categorical else np.zeros((len(order), 0), np.int64),
            "label": np.asarray(chunk[c.label], dtype=np.float32)[order],
        }
        if c.arrays:
            part["arr"] = _stack_arrays(chunk, c.arrays)[order]
        if c.key:
            part["key"] = np.asarray(chunk[c.key], dtype=object)[order]
        self.parts.append(part)
        pending = sum(len(p["label"]) for p in self.parts)
        if pending < self.batch_size:
            return
        merged = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        full = pending // self.batch_size * self.batch_size
        for start in range(0, full, self.batch_size):
            yield {k: v[start:start + self.batch_size] for k, v in merged.items()}
        self.parts = [{k: v[full:] for k, v in merged.items()}] if full < pending else []

    def rest(self) -> Iterator[Batch]:
        if self.parts and sum(len(p["label"]) for p in self.parts):
            yield {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []


class _Reader:
    """Shared logic: seeded passes over this rank's row groups, cut to exactly `steps` batches."""

    def __init__(self, plan: ReadPlan, cols: Columns, batch_size: int, seed: int, rank: int):
        self.plan, self.cols, self.batch_size, self.seed, self.rank = plan, cols, batch_size, seed, rank

    def _chunks(self, epoch: int, pass_no: int) -> Iterator[dict]:
        raise NotImplementedError

    def _rng(self, epoch: int, pass_no: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self.rank, pass_no])

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Exactly plan.steps_per_epoch - skip batches (training: every rank the same count)."""
        produced, pass_no = 0, 0
        while True:
            assembler, got_rows = _Assembler(self.cols, self.batch_size), False
            rng = self._rng(epoch, pass_no)
            for chunk in self._chunks(epoch, pass_no):
                n = len(chunk[self.cols.label])
                got_rows = got_rows or n > 0
                for batch in assembler.add(chunk, rng.permutation(n)):
                    if produced >= skip:
                        yield batch
                    produced += 1
                    if produced >= self.plan.steps_per_epoch:
                        return
            if not got_rows:
                raise DatasetError(f"rank {self.rank} has no rows to read in {self.plan.files}")
            pass_no += 1  # this rank's shards ran short: another seeded pass keeps step counts equal

    def all_rows(self) -> Iterator[Batch]:
        """One pass over this rank's rows in file order, last batch partial (evaluation)."""
        assembler = _Assembler(self.cols, self.batch_size)
        for chunk in self._chunks(epoch=-1, pass_no=0):
            yield from assembler.add(chunk, np.arange(len(chunk[self.cols.label])))
        yield from assembler.rest()


def open_shard(path: str, plan: ReadPlan, names: list[str]) -> tuple[pq.ParquetFile, MappedShard | None]:
    """A shard open for reading `names`, its column chunks checked as they are read when the manifest has
    their CRC32s: a local shard is memory-mapped, and the caller checks each row group through the
    `MappedShard` before reading it; a remote one opens through `CheckedFile`, which checks what it fetches.
    On an object store, pre-buffering fetches a row group's column chunks in a few coalesced range requests
    instead of one request per column (each a round trip); a CheckedFile then gets one read per row group,
    which it serves from one request."""
    checks = plan.chunk_crc32.get(path)
    if checks is not None and is_posix(path):
        mapped = MappedShard(path, filesystem(path)[1], checks)
        f = pq.ParquetFile(mapped.source())
        mapped.select(column_indices(f.metadata, names))
        return f, mapped
    source = open_input(path) if checks is None else CheckedFile(open_input(path), path, checks)
    return pq.ParquetFile(source, pre_buffer=not is_posix(path)), None


class ArrowReader(_Reader):
    """Native reader: pyarrow row groups, in a seeded order."""

    def _row_groups(self) -> list[tuple[str, int]]:
        groups = []
        for path in self.plan.files:
            with open_input(path) as f:
                try:
                    count = pq.ParquetFile(f).num_row_groups
                except pa.ArrowInvalid as exc:  # a footer that does not parse: damaged, retrying cannot help
                    raise DatasetError(f"shard {path} is not a readable Parquet file ({exc}): the published "
                                       f"version is damaged; {REPUBLISH}") from exc
            groups += [(path, i) for i in range(count)]
        if self.plan.shard_count:
            groups = groups[self.plan.cur_shard::self.plan.shard_count]
        return groups

    def _chunks(self, epoch, pass_no):
        groups = self._row_groups()
        if epoch >= 0:
            order = self._rng(epoch, pass_no).permutation(len(groups))
            groups = [groups[i] for i in order]
        files: dict[str, tuple] = {}
        names = self.cols.names()
        for path, index in groups:
            # Row groups are read in byte ranges straight from the store: no rank copies a shard first.
            if path not in files:  # each shard opened, and its footer read, once per pass
                files[path] = open_shard(path, self.plan, names)
            f, mapped = files[path]
            if mapped is not None:  # a local checked shard: its chunks checked, then decoded from the same pages
                mapped.check(index)
            table = f.read_row_group(index, columns=names)
            yield {n: table.column(n).to_numpy() for n in names}


class PetastormReader(_Reader):
    """petastorm's make_batch_reader with its synchronous pool: its thread pool hands row groups back
    in a different order from run to run (measured), which would break exact resume. `prefetch`
    still overlaps reading with training."""

    def _chunks(self, epoch, pass_no):
        from petastorm import make_batch_reader
        urls, fs = petastorm_source(self.plan.files, self.plan.chunk_crc32, self.cols.names())
        shuffle = epoch >= 0
        seed = int(self._rng(epoch, pass_no).integers(2**31)) if shuffle else None
        reader = make_batch_reader(urls, filesystem=fs, schema_fields=self.cols.names(), reader_pool_type="dummy",
                                   workers_count=1, shuffle_row_groups=shuffle, seed=seed, num_epochs=1,
                                   cur_shard=self.plan.cur_shard, shard_count=self.plan.shard_count,
                                   shard_seed=0 if self.plan.shard_count else None)
        try:
            for rows in reader:
                yield rows._asdict()
        finally:
            # petastorm prints "Cache cleanup complete." on stdout as a reader closes (once per epoch per rank):
            # stdout carries a rank's result line and the CLI's --json output, so it goes to the debug log.
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                reader.__exit__(None, None, None)
            if printed.getvalue().strip():
                log.debug("petastorm: %s", " ".join(printed.getvalue().split()))


def petastorm_source(files: list[str], chunk_crc32: dict | None = None, columns: list[str] | None = None):
    """(urls, filesystem) for petastorm's make_batch_reader, for one pass over `files`.

    petastorm 0.13.1 resolves s3:// URLs through s3fs (not in this stack) and hdfs:// through the removed
    pyarrow.hdfs, and its ParquetDataset arguments need a legacy `pyarrow.filesystem` object. So stores go
    as file:// URLs of their paths on the store's pyarrow.fs filesystem, through `_legacy_store_fs`; local
    files too when their column chunks are checked (`chunk_crc32`: path -> checks, see ReadPlan; `columns`:
    what the reader reads), since that filesystem's open() is where the check comes in; unchecked local files
    go as file:// URLs (petastorm's own local filesystem)."""
    checks = chunk_crc32 or {}
    if is_posix(files[0]) and not any(p in checks for p in files):
        return ["file://" + os.path.abspath(filesystem(p)[1]) for p in files], None
    fs = filesystem(files[0])[0]
    # petastorm hands back paths as the filesystem sees them: map them to the shards' own names.
    by_inner = {"/" + filesystem(p)[1].lstrip("/"): p for p in files}
    return (["file:///" + filesystem(p)[1].lstrip("/") for p in files],
            _legacy_store_fs(fs, by_inner, checks, columns))


def _legacy_store_fs(fs, by_inner: dict | None = None, checks: dict | None = None, columns: list[str] | None = None):
    """A legacy `pyarrow.filesystem.FileSystem` over a pyarrow.fs one (what petastorm's legacy ParquetDataset
    needs); files are opened for random access, so row groups are read in ranges, not downloaded whole.
    A shard with column-chunk checks (`checks`, by shard path; `by_inner`: path on `fs` -> shard path) is
    checked as it is read: a remote one opens as a `CheckedFile`; a local one as a memory map, whose chunks in
    `columns` are all checked the first time petastorm opens it (it opens the file again for each row group)."""
    import pyarrow.fs as pafs
    from pyarrow.filesystem import FileSystem

    keeps_root = fs.type_name != "s3"  # HDFS paths start with "/", S3 paths with the bucket
    mapped: dict[str, MappedShard] = {}  # local shards opened in this pass, each checked once

    class LegacyStoreFs(FileSystem):
        def _path(self, path: str) -> str:
            return path if keeps_root else path.lstrip("/")

        def _type(self, path: str):
            return fs.get_file_info(self._path(path)).type

        def isfile(self, path):
            return self._type(path) == pafs.FileType.File

        def isdir(self, path):
            return self._type(path) == pafs.FileType.Directory

        def exists(self, path):
            return self._type(path) != pafs.FileType.NotFound

        def open(self, path, mode="rb"):
            shard = (by_inner or {}).get("/" + path.lstrip("/"))
            if shard is None or shard not in (checks or {}):
                return fs.open_input_file(self._path(path))
            if not is_posix(shard):
                return CheckedFile(fs.open_input_file(self._path(path)), shard, checks[shard])
            if shard not in mapped:
                mapped[shard] = MappedShard(shard, filesystem(shard)[1], checks[shard])
                if columns:
                    mapped[shard].select(column_indices(pq.read_metadata(mapped[shard].source()), columns))
                mapped[shard].check()
            return mapped[shard].source()

        def ls(self, path):
            return [i.path for i in fs.get_file_info(pafs.FileSelector(self._path(path)))]

    return LegacyStoreFs()


def open_reader(kind: str, plan: ReadPlan, cols: Columns, batch_size: int, seed: int, rank: int) -> _Reader:
    if kind == "petastorm":
        return PetastormReader(plan, cols, batch_size, seed, rank)
    if kind == "arrow":
        return ArrowReader(plan, cols, batch_size, seed, rank)
    raise ValueError(f"train.reader: unknown reader {kind!r}; use 'petastorm' or 'arrow'")


def to_tensors(batch: Batch, device: torch.device, *, pin_only: bool = False) -> dict:
    """Numpy batch -> tensors on `device`; pinned memory and non_blocking copies on GPU. `pin_only`: stop at
    pinned CPU tensors (`to_device` finishes the copy)."""
    out = {}
    for name in ("num", "cat", "label", "arr"):
        if name not in batch:
            continue
        t = torch.from_numpy(np.ascontiguousarray(batch[name]))
        if device.type == "cuda":
            t = t.pin_memory() if pin_only else t.pin_memory().to(device, non_blocking=True)
        out[name] = t
    if "key" in batch:
        out["key"] = list(batch["key"])
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def prefetch(batches: Iterator[Batch], device: torch.device, depth: int = 4, *,
             copy_in_consumer: bool = False) -> Iterator[dict]:
    """Read and convert in a background thread so the training step does not wait on I/O.
    `copy_in_consumer`: the thread pins the batch, and the consumer's thread issues the copy to the GPU."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()
    pin_only = copy_in_consumer and device.type == "cuda"

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(to_tensors(batch, device, pin_only=pin_only))
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=produce, name="ringtrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield to_device(item, device) if pin_only else item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
