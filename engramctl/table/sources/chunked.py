"""Rows from chunk files: :class:`ChunkedSource`, the row source of every table that is not linked.

Uncompressed chunk files of a store that ``supports_mmap`` are memory-mapped once and kept;
:meth:`ChunkedSource.gather` copies rows out of the maps with a parallel numba kernel
(:mod:`engramctl.table.sources._gather`) for chunks in the page cache, and reads the rows of the
others with many reads in flight, checked per block (:mod:`engramctl.table.sources.coldgather`).
Chunks never written (lazy tables, or a full init still under way) read as their deterministic
init values (:mod:`engramctl.table.core.rowinit`); zstd chunks, and every chunk of a remote
store (fetched concurrently with ``get_many``), are decoded whole and kept in a small LRU cache.
The first time a chunk is loaded its CRC-32 is checked against the manifest (``check_chunks``),
so a damaged chunk raises an error naming it instead of returning garbage. A reader that finds a
chunk rewritten by a writer at work waits for the writer to record it (``WRITER_WAIT_SECONDS``)
before it calls the chunk damaged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import numpy as np

from ...errors import EngramError
from ..core.blocksums import update_block_record
from ..core.codec import chunk_key, crc32_of, decode_chunk, encode_chunk, init_chunk_rows
from ..core.dtypes import encode_rows
from ..core.lock import active_writer
from ..core.manifest import read_group
from ..core.meta import TableMeta
from ..core.rowinit import init_values
from ..core.store import TableStore
from ..edits.journal import journal_entry
from ._gather import (
    CHUNK_LOADED,
    CHUNK_UNKNOWN,
    CHUNK_UNWRITTEN,
    chunk_address,
    gather_rows,
    word_dtype,
)
from .base import RowSource
from .coldgather import ColdGather
from .coldread import advise_random

log = logging.getLogger(__name__)
DECODED_CACHE_CHUNKS = 64  # zstd chunks kept decoded (64 x 4 MiB by default)
WRITER_WAIT_SECONDS = 60.0  # how long a reader waits for a writer to record a chunk it rewrote
WRITER_POLL_SECONDS = 0.2


class ChunkMismatch(EngramError):
    """A chunk file disagrees with the manifest this reader holds (damage, or a writer at work)."""


class _LoadedChunks:
    """Loaded chunks of one layer: their arrays (kept alive) and base addresses for the kernel."""

    def __init__(self, n_chunks: int):
        self.bases = np.zeros(n_chunks, dtype=np.int64)  # 0 = not loaded
        self.state = np.zeros(n_chunks, dtype=np.uint8)  # CHUNK_UNKNOWN / LOADED / UNWRITTEN
        self.arrays: dict[int, np.ndarray] = {}  # views of mmaps / decoded chunks


class ChunkedSource(RowSource):
    """The chunk files of one table in a :class:`~engramctl.table.core.store.TableStore`.

    ``manifest`` is the table's (shared, not copied): a reader takes a writer's newer entry into
    it, :meth:`write_chunk` records chunks in it. ``writer`` is true for a handle that holds the
    writer lock (it trusts its manifest and never waits for another writer).
    """

    def __init__(
        self,
        store: TableStore,
        meta: TableMeta,
        manifest: dict,
        *,
        check_chunks: bool,
        writer: bool,
    ):
        self.store, self.meta, self.manifest = store, meta, manifest
        self.check_chunks = check_chunks
        self.writer = writer
        self._word = word_dtype(meta.row_bytes)
        self._words = meta.row_bytes // self._word.itemsize
        self._caches: dict[int, _LoadedChunks] = {}
        self._decoded: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._mutex = threading.RLock()
        # local uncompressed chunks: cold chunks are read in parallel, warm ones from the maps
        self.cold = ColdGather(self) if store.supports_mmap and meta.compressor == "none" else None

    @property
    def cached_chunks(self) -> int:
        """How many decoded (or fetched) chunks the LRU cache holds; maps are not counted."""
        return len(self._decoded)

    def chunk_path(self, layer_id: int, chunk_index: int):
        """The chunk's file (a URL string for a remote table)."""
        return self.store.location_of(chunk_key(layer_id, chunk_index))

    # --------------------------------------------------------------- chunk loading
    def _cache(self, layer_id: int) -> _LoadedChunks:
        if layer_id not in self._caches:
            layer = self.meta.layer(layer_id)
            self._caches[layer_id] = _LoadedChunks(layer.n_chunks(self.meta.chunk_rows))
        return self._caches[layer_id]

    def read_chunk_file(
        self, layer_id: int, chunk_index: int, *, fetched=None
    ) -> np.ndarray | None:
        """Stored rows of a written chunk, checked against the manifest; ``None`` if unwritten.

        ``fetched`` maps chunk keys to bytes already read (``None``: missing), as
        :meth:`TableStore.get_many` returns them. A chunk that does not match the manifest
        while another process writes the table is read again once the writer has recorded it
        (up to ``WRITER_WAIT_SECONDS``); it is called damaged only when no writer is at work.
        """
        waited = 0.0
        while True:
            try:
                return self._read_chunk_once(layer_id, chunk_index, fetched)
            except ChunkMismatch as exc:
                if self.writer or not self.store.supports_writes:  # no writer to wait for
                    raise EngramError(str(exc)) from None
                if self._refresh_entry(layer_id, chunk_index):
                    fetched = None
                    continue  # a writer recorded the chunk since we read the manifest
                holder = active_writer(self.store.location)
                if holder is None:
                    raise EngramError(str(exc)) from None
                if waited >= WRITER_WAIT_SECONDS:
                    raise EngramError(
                        f"chunk {chunk_index} of layer {layer_id} of {self.store.location} "
                        f"changed under this reader while {holder} writes the table (it is not "
                        "damaged); rerun when the writer has finished"
                    ) from None
                time.sleep(WRITER_POLL_SECONDS)
                waited += WRITER_POLL_SECONDS
                fetched = None

    def _refresh_entry(self, layer_id: int, chunk_index: int) -> bool:
        """Re-read the manifest (and the journal of a compaction into the base); whether this
        chunk's entry changed (then it is taken)."""
        try:
            _, manifest = read_group(self.store)
        except EngramError:
            return False
        old = self.manifest.get(layer_id, {}).get(chunk_index)
        new = manifest.get(layer_id, {}).get(chunk_index)
        journal = journal_entry(self.store, layer_id, chunk_index) if self.store.is_local else None
        if new == old or (journal is not None and old == journal):
            # a compaction into the base under way or cut short: its entry, taken once
            if journal is None or journal == old:
                return False
            new = journal
        if new is None:
            self.manifest.get(layer_id, {}).pop(chunk_index, None)
        else:
            self.manifest.setdefault(layer_id, {})[chunk_index] = new
        return True

    def _read_chunk_once(self, layer_id: int, chunk_index: int, fetched) -> np.ndarray | None:
        path = self.chunk_path(layer_id, chunk_index)
        entry = self.manifest.get(layer_id, {}).get(chunk_index)
        where = f"chunk {chunk_index} of layer {layer_id} ({path})"
        try:
            if fetched is None:  # mmap when the file is raw rows (uncompressed, full size)
                mappable = self.meta.chunk_bytes if self.meta.compressor == "none" else None
                data = self.store.map_or_read(chunk_key(layer_id, chunk_index), mappable)
            elif (data := fetched[chunk_key(layer_id, chunk_index)]) is None:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            if entry is not None:
                raise ChunkMismatch(
                    f"{where} is missing although the manifest lists it; the table is damaged "
                    "(run engramctl verify)"
                ) from None
            return None
        except OSError as exc:  # a directory, unreadable, an I/O error: the table, not the output
            raise EngramError(
                f"cannot read {where}: {exc.strerror or exc}; the table is damaged or unreadable "
                "(run engramctl verify)"
            ) from None
        if entry is None:  # the manifest is the record of what the table holds
            if self.meta.status == "complete":
                raise ChunkMismatch(
                    f"{where} is damaged: it is not in the manifest of this complete table, so "
                    "its checksum is unknown; run engramctl verify"
                )
            log.warning("%s is not in the manifest (an interrupted write): its init values", where)
            return None
        if len(data) != entry[1]:
            raise ChunkMismatch(
                f"{where} is damaged: {len(data)} bytes, the manifest says {entry[1]}; "
                "run engramctl verify"
            )
        if self.check_chunks and crc32_of(data) != entry[0]:
            raise ChunkMismatch(
                f"{where} is damaged: its checksum does not match the manifest; "
                "run engramctl verify"
            )
        return decode_chunk(self.meta, data, where=where)

    def read_chunk(self, layer_id: int, chunk_index: int) -> np.ndarray:
        """Stored rows of any chunk: its file, or its init values if never written; read now
        and not kept (streaming a table through this holds one chunk, unlike :meth:`gather`,
        which keeps the chunks it maps)."""
        rows = self.read_chunk_file(layer_id, chunk_index)
        if rows is None:  # one chunk: numba's thread pool costs more than it saves here
            return init_chunk_rows(self.meta, layer_id, chunk_index, parallel=False)
        return rows

    def load_chunks(self, layer_id: int, chunk_indexes: np.ndarray) -> None:
        """Map (or fetch and decode) chunks for the gather kernel, each checked against the
        manifest (``check_chunks``); chunks never written are marked to read as init values.
        The caller holds the source's mutex."""
        cache = self._cache(layer_id)
        fetched = None
        if not self.store.supports_mmap:  # fetch the chunks of this gather concurrently
            keys = [chunk_key(layer_id, c) for c in chunk_indexes.tolist()]
            fetched = self.store.get_many(keys)
        for c in chunk_indexes.tolist():
            rows = self.read_chunk_file(layer_id, c, fetched=fetched)
            if rows is None:  # never written: its rows are filled with init values
                cache.state[c] = CHUNK_UNWRITTEN
                continue
            words = rows.view(self._word).reshape(self.meta.chunk_rows, self._words)
            if self.cold is not None:  # a fault on a page evicted later reads that page only
                advise_random(words.ctypes.data, words.nbytes)
            cache.arrays[c] = words  # keeps the mmap (or decoded buffer) alive
            cache.bases[c] = chunk_address(words, self.meta.chunk_rows, self._words, self._word)
            cache.state[c] = CHUNK_LOADED
            if self.meta.compressor != "none" or not self.store.supports_mmap:  # bounded: LRU
                self._decoded[(layer_id, c)] = None
        while len(self._decoded) > max(DECODED_CACHE_CHUNKS, len(chunk_indexes)):
            old_layer, old_chunk = self._decoded.popitem(last=False)[0]
            self._unload(old_layer, old_chunk)

    def _unload(self, layer_id: int, chunk_index: int) -> None:
        cache = self._caches.get(layer_id)
        if cache is not None:
            cache.bases[chunk_index] = 0  # before the array goes: no dangling address
            cache.state[chunk_index] = CHUNK_UNKNOWN
            cache.arrays.pop(chunk_index, None)
        self._decoded.pop((layer_id, chunk_index), None)

    # ----------------------------------------------------------------------- gather
    def gather(self, layer_id: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        with self._mutex:  # loads/unloads never race a kernel reading the chunks
            cache = self._cache(layer_id)
            needed = np.zeros(cache.state.shape[0], dtype=bool)
            needed[ids // self.meta.chunk_rows] = True
            to_load = np.flatnonzero(needed & (cache.state == CHUNK_UNKNOWN))
            cold = None
            if self.cold is not None:  # warm chunks loaded, cold ones left to the reader
                cold = self.cold.route(layer_id, cache, needed)
            elif to_load.size:
                self.load_chunks(layer_id, to_load)
            bases = cache.bases if cold is None else np.where(cold, 0, cache.bases)
            words = out.view(self._word).reshape(ids.size, self._words)
            missing = gather_rows(bases, self.meta.chunk_rows, ids, words)
            if missing.size and cold is not None:
                in_cold = cold[ids[missing] // self.meta.chunk_rows]
                self.cold.read_rows(layer_id, ids[missing[in_cold]], out, missing[in_cold])
                missing = missing[~in_cold]
        if missing.size:  # rows of chunks never written: their init values
            values = init_values(self.meta.init, layer_id, ids[missing], self.meta.dim)
            out[missing] = encode_rows(values, self.meta.dtype)
        return out

    # ----------------------------------------------------------------------- writes
    def check_writable(self) -> None:
        """Chunk files can always be rewritten (a store without writes is refused at open)."""

    def write_chunk(
        self, layer_id: int, chunk_index: int, rows: np.ndarray, *, source: str, fsync=True
    ) -> None:
        """Write one whole chunk (temporary file + rename) and record it in the manifest."""
        data = encode_chunk(self.meta, rows)
        self.store.write_bytes(chunk_key(layer_id, chunk_index), data, fsync=fsync)
        self.manifest.setdefault(layer_id, {})[chunk_index] = [
            crc32_of(data),
            memoryview(data).nbytes,
            source,
        ]
        update_block_record(self.store, self.meta, layer_id, chunk_index, crc32_of(data), data)
        with self._mutex:
            self._unload(layer_id, chunk_index)
            if self.cold is not None:
                self.cold.forget(layer_id, chunk_index)

    def close(self) -> None:
        with self._mutex:
            if self.cold is not None:
                self.cold.close()
            self._caches.clear()
            self._decoded.clear()


__all__ = ["ChunkedSource", "ChunkMismatch", "DECODED_CACHE_CHUNKS", "WRITER_WAIT_SECONDS"]
