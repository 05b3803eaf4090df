"""Table chunks: write one chunk's init values, check a written one, and record them.

Shared by the local init (:func:`engramctl.table.build.create.initialize_table`, threads) and the
Dask init (:mod:`engramctl.table.build.create_dask`, one task per chunk): :func:`write_init_chunk`
writes a chunk atomically and returns its :class:`ChunkRecord`; :func:`chunk_is_valid` re-checks a
chunk against its manifest entry (resume); :class:`ManifestRecorder` is the one manifest flush
loop (record finished chunks, report progress, flush every ``MANIFEST_FLUSH_SECONDS`` and once at
the end however the run ends); :func:`raise_init_failure` turns what stopped a run into one line.
:func:`init_chunk` and :func:`record_chunks` let other processes write and record chunks.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._files import remove_stale_siblings, write_file_atomic
from ..._system import format_bytes
from ...errors import EngramError
from ..core.blocksums import chunk_block_crcs, merge_block_sums
from ..core.codec import chunk_key, crc32_of, encode_chunk, init_chunk_rows
from ..core.manifest import read_group, write_group_attrs
from ..core.meta import TableMeta
from ..core.store import TableStore, open_store

log = logging.getLogger(__name__)
MANIFEST_FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class InitProgress:
    """Passed to the progress callback after every chunk."""

    bytes_done: int  # chunk bytes written in this run
    bytes_total: int  # chunk bytes this run has to write
    chunks_done: int
    chunks_total: int
    seconds: float


@dataclass(frozen=True)
class ChunkRecord:
    """One written chunk, as the manifest records it."""

    layer_id: int
    chunk_index: int
    crc32: int
    nbytes: int
    blocks: np.ndarray | None = None  # block CRC-32Cs (local uncompressed tables)


def write_init_chunk(
    path, meta: TableMeta, layer_id: int, chunk_index: int, *, parallel: bool = False
) -> ChunkRecord:
    """Write one chunk's init values (atomically, to a path or store) and return its record."""
    rows = init_chunk_rows(meta, layer_id, chunk_index, parallel=parallel)
    data = encode_chunk(meta, rows)
    key = chunk_key(layer_id, chunk_index)
    if isinstance(path, TableStore) and not path.is_local:
        path.write_bytes(key, data)  # one PUT: the object appears whole or not at all
    else:
        root = path.root if isinstance(path, TableStore) else Path(path)
        write_file_atomic(root / key, data)
    local = not isinstance(path, TableStore) or path.supports_mmap
    blocks = chunk_block_crcs(meta, data, local=local)
    return ChunkRecord(layer_id, chunk_index, crc32_of(data), memoryview(data).nbytes, blocks)


def init_chunk(path, layer_id: int, chunk_index: int) -> ChunkRecord:
    """Initialize ONE chunk of an existing table from its metadata (for other processes).

    The values depend only on (seed, layer, row, column), so any process may write any chunk
    in any order. The manifest is not touched: pass the records to :func:`record_chunks`.
    ``path`` may be a local path, an fsspec URL or a
    :class:`~engramctl.table.core.store.TableStore`.
    """
    store = open_store(path)
    meta, _ = read_group(store)
    return write_init_chunk(store, meta, layer_id, chunk_index, parallel=True)


def record_chunks(path, records: list[ChunkRecord], *, status: str | None = None) -> None:
    """Add chunk records to a table's manifest (and optionally set its status)."""
    path = open_store(path)
    meta, manifest = read_group(path)
    for rec in records:
        manifest.setdefault(rec.layer_id, {})[rec.chunk_index] = [rec.crc32, rec.nbytes, "init"]
    write_group_attrs(path, meta.with_status(status) if status else meta, manifest)


def chunk_is_valid(store: TableStore, layer_id: int, chunk_index: int, entry) -> bool:
    """Whether a chunk's file exists and matches its manifest entry ``[crc32, nbytes, ...]``."""
    try:
        data = store.read_bytes(chunk_key(layer_id, chunk_index))
    except OSError:
        return False
    if len(data) == entry[1] and crc32_of(data) == entry[0]:
        return True
    log.warning("chunk %d of layer %d fails its checksum; rewriting", chunk_index, layer_id)
    return False


def remove_stale_chunk_files(store: TableStore, meta: TableMeta) -> int:
    """Remove the temporary chunk files (``.0.tmp-<pid>``) of killed writers; the caller holds
    the writer lock. Returns how many were removed."""
    if not store.is_local:
        return 0
    removed = 0
    for layer in meta.layers.values():
        for chunk_dir in (store.root / layer.array / "c").glob("*"):
            removed += len(remove_stale_siblings(chunk_dir / "0"))
    return removed


def valid_chunks(store: TableStore, meta: TableMeta, manifest: dict) -> set[tuple[int, int]]:
    """Chunks whose file exists and matches its manifest checksum."""
    return {
        (layer_id, chunk_index)
        for layer_id, chunks in manifest.items()
        for chunk_index, entry in chunks.items()
        if chunk_is_valid(store, layer_id, chunk_index, entry)
    }


def chunks_to_write(meta: TableMeta, valid: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every ``(layer, chunk)`` of the table not in ``valid``, in layer then chunk order."""
    return [
        (layer_id, c)
        for layer_id, layer in meta.layers.items()
        for c in range(layer.n_chunks(meta.chunk_rows))
        if (layer_id, c) not in valid
    ]


class ManifestRecorder:
    """The one manifest flush loop of a table init, local threads and Dask workers alike.

    :meth:`record` adds a finished chunk to the manifest and reports progress; :meth:`flush_if_due`
    writes the manifest to the group attributes at most every ``MANIFEST_FLUSH_SECONDS``;
    :meth:`finish` writes it one last time (status ``complete`` once every chunk is done), however
    the run ended, so an interrupted init resumes from what finished.
    """

    def __init__(
        self,
        store: TableStore,
        meta: TableMeta,
        manifest: dict,
        *,
        chunks_total: int,
        progress: Callable[[InitProgress], None] | None = None,
        source: str = "init",
    ):
        self.store, self.meta, self.manifest = store, meta, manifest
        self.source = source  # the manifest's source of each chunk: "init" or "data" (imports)
        self.chunks_total = chunks_total
        self.bytes_total = chunks_total * meta.chunk_bytes
        self.progress = progress
        self.done = 0
        self.blocks: dict[int, dict] = {}  # block checksums of the chunks written, by layer
        self.started = self.last_flush = time.perf_counter()
        if progress:
            progress(InitProgress(0, self.bytes_total, 0, chunks_total, 0.0))

    @property
    def bytes_done(self) -> int:
        return self.done * self.meta.chunk_bytes

    def note(self, record: ChunkRecord) -> None:
        """Put a chunk in the manifest without counting it (one that finished after a failure)."""
        entry = [record.crc32, record.nbytes, self.source]
        self.manifest.setdefault(record.layer_id, {})[record.chunk_index] = entry
        if record.blocks is not None:
            layer = self.blocks.setdefault(record.layer_id, {})
            layer[record.chunk_index] = (record.crc32, record.blocks)

    def record(self, record: ChunkRecord) -> None:
        """A chunk is done: into the manifest, counted, reported."""
        self.note(record)
        self.done += 1
        if self.progress:
            elapsed = time.perf_counter() - self.started
            self.progress(
                InitProgress(
                    self.bytes_done, self.bytes_total, self.done, self.chunks_total, elapsed
                )
            )

    def flush_if_due(self) -> None:
        now = time.perf_counter()
        if now - self.last_flush > MANIFEST_FLUSH_SECONDS:
            write_group_attrs(self.store, self.meta, self.manifest)
            self.last_flush = now

    @property
    def complete(self) -> bool:
        return self.done == self.chunks_total

    def finish(self, failure: BaseException | None) -> BaseException | None:
        """Write the manifest a last time; returns the run's failure (or the write's own)."""
        complete = failure is None and self.complete
        meta = self.meta.with_status("complete") if complete else self.meta
        try:
            write_group_attrs(self.store, meta, self.manifest)
        except Exception as exc:  # e.g. no space left even for zarr.json: the resume redoes
            log.error("cannot record the manifest of %s: %s", self.store.url, exc)
            failure = failure or exc
        try:  # a chunk without a record is checked whole on first read: never wrong, slower
            merge_block_sums(self.store, self.meta, self.blocks)
        except Exception as exc:  # noqa: BLE001 - the table stays correct without them
            log.warning("cannot record the block checksums of %s: %s", self.store.url, exc)
        return failure


def write_chunks_in_pool(
    todo: Iterable,
    write_one: Callable[..., ChunkRecord],
    recorder,
    *,
    workers: int,
    thread_name: str,
    rejected_type: type[BaseException] | None = None,
) -> tuple[BaseException | None, list]:
    """Run ``write_one(*item)`` for each item of ``todo`` on a thread pool (at most ``2 * workers``
    in flight), recording each finished chunk with ``recorder``; the one loop of table init and
    checkpoint import. On Ctrl-C the running chunks finish and are noted before it returns.

    Returns ``(failure, rejected)``: what stopped the run, if anything, and ``(item, exc)`` for
    each chunk whose error is a ``rejected_type`` (bad input data, collected rather than raised).
    No new chunk starts after a failure or a rejection.
    """
    queued = iter(todo)
    failure: BaseException | None = None
    rejected: list = []
    pending: dict = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
        try:
            while True:
                while failure is None and not rejected and len(pending) < 2 * workers:
                    item = next(queued, None)
                    if item is None:
                        break
                    pending[pool.submit(write_one, *item)] = item
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    item, exc = pending.pop(future), future.exception()
                    if rejected_type is not None and isinstance(exc, rejected_type):
                        rejected.append((item, exc))
                    elif exc is not None:
                        failure = failure or exc
                    else:
                        recorder.record(future.result())
                recorder.flush_if_due()
        except BaseException as exc:  # Ctrl-C: let running chunks finish and note them
            failure = exc
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled() and future.exception() is None:
                    recorder.note(future.result())
    return failure, rejected


def raise_init_failure(failure: BaseException, path: str, remaining: int) -> None:
    """Re-raise what stopped an init: a full disk or another OSError as one line saying how to
    resume (``remaining`` bytes were still to write), anything else as it is."""
    if isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT):
        raise EngramError(
            f"disk full while initializing {path} ({format_bytes(remaining)} still to write); "
            "the chunks written so far are kept: free space and rerun the same command to resume"
        ) from failure
    if isinstance(failure, OSError):
        raise EngramError(
            f"cannot write {path}: {failure.strerror or failure}; rerun the same command to resume"
        ) from failure
    raise failure
