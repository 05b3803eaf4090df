"""Open tables: :func:`open_table`, :class:`Table` (gather, write_rows, info) and its chunk reader.

Reading: uncompressed chunk files are memory-mapped once and cached; :meth:`Table.gather` copies
rows out of the maps with a parallel numba kernel (:mod:`engramctl.table.sources.gather`). Chunks
never written (lazy tables, or a full init still under way) read as their deterministic init values
(:mod:`engramctl.table.core.rowinit`); zstd chunks are decoded whole and kept in a small LRU cache.
The first time a chunk is loaded its CRC-32 is checked against the manifest (``check_chunks``), so a
damaged chunk raises an error naming it instead of returning garbage.

Writing (``mode="r+"``, under the writer lock): :meth:`Table.write_rows` rewrites whole chunks
(read, patch, temporary file, rename) and records their checksums in the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..core.checks import metadata_problems
from ..core.codec import chunk_key, crc32_of, decode_chunk, encode_chunk, init_chunk_rows
from ..core.dtypes import encode_rows
from ..core.info import LayerInfo, TableInfo, table_info
from ..core.lock import LOCK_NAME, WriterLock, active_writer
from ..core.manifest import read_group, table_state, write_group_attrs
from ..core.meta import TableMeta, check_vocab
from ..core.rowinit import init_values
from ..core.store import LocalStore, TableStore, open_store
from .gather import check_row_ids, chunk_address, gather_rows, word_dtype
from .linked import COPY_HINT, LinkedLayers

log = logging.getLogger(__name__)
DECODED_CACHE_CHUNKS = 64  # zstd chunks kept decoded (64 x 4 MiB by default)
WRITER_WAIT_SECONDS = 60.0  # how long a reader waits for a writer to record a chunk it rewrote
WRITER_POLL_SECONDS = 0.2


# --------------------------------------------------------------------------------- table
CHUNK_UNKNOWN, CHUNK_LOADED, CHUNK_UNWRITTEN = 0, 1, 2


class ChunkMismatch(EngramError):
    """A chunk file disagrees with the manifest this reader holds (damage, or a writer at work)."""


class _LoadedChunks:
    """Loaded chunks of one layer: their arrays (kept alive) and base addresses for the kernel."""

    def __init__(self, n_chunks: int):
        self.bases = np.zeros(n_chunks, dtype=np.int64)  # 0 = not loaded
        self.state = np.zeros(n_chunks, dtype=np.uint8)  # CHUNK_UNKNOWN / LOADED / UNWRITTEN
        self.arrays: dict[int, np.ndarray] = {}  # views of mmaps / decoded chunks


class Table:
    """An open engramctl table. Use :func:`open_table`; ``with`` closes it (and flushes)."""

    def __init__(
        self,
        path: Path,
        meta: TableMeta,
        manifest: dict,
        *,
        mode: str,
        check_chunks: bool,
        lock: WriterLock | None,
        store: TableStore | None = None,
    ):
        self.store = store if store is not None else LocalStore(path)
        self.path = self.store.location  # a Path, or a URL string for a remote table
        self.meta = meta
        self.manifest = manifest
        self.mode = mode
        self.check_chunks = check_chunks
        self._lock = lock
        self._word = word_dtype(meta.row_bytes)
        self._words = meta.row_bytes // self._word.itemsize
        self._caches: dict[int, _LoadedChunks] = {}
        self._decoded: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._dirty = False
        self._mutex = threading.RLock()
        self._linked = LinkedLayers(meta, self.path)  # layers mapped from checkpoint shards

    # ---------------------------------------------------------------- properties
    @property
    def layout(self) -> EngramLayout:
        return self.meta.layout

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def dtype(self) -> str:
        return self.meta.dtype

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.meta.layers)

    @property
    def row_width(self) -> int:
        return self.meta.row_width

    @property
    def info(self) -> TableInfo:
        return table_info(self.path, self.meta, self.manifest)

    def check_vocab(self, vocab) -> None:
        """Raise if ``vocab`` is not the vocab this table was made for (names both)."""
        check_vocab(self.meta, vocab, where=str(self.path))

    def chunk_path(self, layer_id: int, chunk_index: int) -> Path | str:
        """The chunk's file (a URL string for a remote table)."""
        key = chunk_key(layer_id, chunk_index)
        return self.path / key if isinstance(self.path, Path) else self.store.where(key)

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
                if self.mode != "r" or not self.store.supports_writes:  # no writer to wait for
                    raise EngramError(str(exc)) from None
                if self._refresh_entry(layer_id, chunk_index):
                    fetched = None
                    continue  # a writer recorded the chunk since we read the manifest
                holder = active_writer(self.store.root)
                if holder is None:
                    raise EngramError(str(exc)) from None
                if waited >= WRITER_WAIT_SECONDS:
                    raise EngramError(
                        f"chunk {chunk_index} of layer {layer_id} of {self.path} changed under "
                        f"this reader while {holder} writes the table (it is not damaged); rerun "
                        "when the writer has finished"
                    ) from None
                time.sleep(WRITER_POLL_SECONDS)
                waited += WRITER_POLL_SECONDS
                fetched = None

    def _refresh_entry(self, layer_id: int, chunk_index: int) -> bool:
        """Re-read the manifest; whether this chunk's entry changed (then it is taken)."""
        try:
            _, manifest = read_group(self.store)
        except EngramError:
            return False
        old = self.manifest.get(layer_id, {}).get(chunk_index)
        new = manifest.get(layer_id, {}).get(chunk_index)
        if new == old:
            return False
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
        """Stored rows ``[chunk_rows, row_width]`` of any chunk: its file, its linked rows, or
        its init values if never written; read now and not kept (streaming a table through this
        holds one chunk, unlike :meth:`gather`, which keeps the chunks it maps)."""
        if self.meta.linked:  # the chunk's rows from the checkpoint's shards
            return self._linked.chunk(layer_id, chunk_index)
        rows = self.read_chunk_file(layer_id, chunk_index)
        if rows is None:  # one chunk: numba's thread pool costs more than it saves here
            return init_chunk_rows(self.meta, layer_id, chunk_index, parallel=False)
        return rows

    def _ensure_loaded(self, layer_id: int, chunk_indexes: np.ndarray) -> None:
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
    def gather(self, layer_id: int, row_ids, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of one layer in their raw storage dtype, ``[n, row_width]``.

        float32/float16 tables give float32/float16 rows, bfloat16 tables ``uint16`` bits, and
        float8_e4m3fn tables ``uint8`` rows of ``dim`` values then ``dim / 32`` ue8m0 scale
        bytes (decode with :func:`engramctl.table.core.dtypes.decode_rows`, or view with
        ``to_torch``).

        Parameters
        ----------
        layer_id : int
            An Engram layer of the table.
        row_ids : array of int
            Rows of that layer's table (``head_offsets[h] + row`` of head ``h``), any shape;
            flattened. Every id must be in ``[0, rows)``: the error names the first bad one.
        out : ndarray, optional
            C-contiguous ``[n, row_width]`` buffer of the storage dtype (e.g. pinned memory).
        """
        rows = self.meta.layer(layer_id).rows
        ids = check_row_ids(row_ids, rows)
        shape = (ids.size, self.meta.row_width)
        if out is None:
            out = np.empty(shape, dtype=self.meta.storage_dtype)
        elif (
            out.shape != shape
            or out.dtype != self.meta.storage_dtype
            or not (out.flags.c_contiguous)
        ):
            raise UsageError(
                f"out must be C-contiguous {self.meta.storage_dtype} {list(shape)}, got "
                f"{out.dtype} {list(out.shape)}"
            )
        if not ids.size:
            return out
        if self.meta.linked:
            return self._linked.layer(layer_id).gather(ids, out)
        with self._mutex:  # loads/unloads never race a kernel reading the chunks
            cache = self._cache(layer_id)
            needed = np.zeros(cache.state.shape[0], dtype=bool)
            needed[ids // self.meta.chunk_rows] = True
            to_load = np.flatnonzero(needed & (cache.state == CHUNK_UNKNOWN))
            if to_load.size:
                self._ensure_loaded(layer_id, to_load)
            words = out.view(self._word).reshape(ids.size, self._words)
            missing = gather_rows(cache.bases, self.meta.chunk_rows, ids, words)
        if missing.size:  # rows of chunks never written: their init values
            values = init_values(self.meta.init, layer_id, ids[missing], self.meta.dim)
            out[missing] = encode_rows(values, self.meta.dtype)
        return out

    # ----------------------------------------------------------------------- writes
    def _stored_rows(self, values, n: int) -> np.ndarray:
        values = np.asarray(values)
        meta = self.meta
        if values.ndim != 2 or values.shape[0] != n:
            raise EngramError(f"values must be [{n}, dim], got shape {list(values.shape)}")
        if values.dtype == meta.storage_dtype and values.shape[1] == meta.row_width:
            return values  # already stored rows (as gather returns them)
        if values.dtype.kind == "f" and values.shape[1] == meta.dim:
            return encode_rows(values, meta.dtype)
        raise EngramError(
            f"values must be stored rows [{n}, {meta.row_width}] of {meta.storage_dtype} or "
            f"floats [{n}, {meta.dim}], got {values.dtype} {list(values.shape)}"
        )

    def write_rows(
        self, layer_id: int, row_ids, values, *, flush: bool = True, fsync: bool = True
    ) -> None:
        """Overwrite rows of one layer; whole chunks are rewritten atomically, each once.

        ``values`` are stored rows as :meth:`gather` returns them, or floats ``[n, dim]``
        encoded to the table's dtype. Of repeated row ids the last one wins. ``flush`` writes
        the manifest at the end of the call (otherwise at :meth:`flush` / :meth:`close`).
        ``fsync=False`` leaves the chunk files to the page cache: the caller makes them durable
        (one ``os.sync()`` for many chunks) before it flushes the manifest.
        """
        if self.mode == "r":
            raise EngramError(f"{self.path} is open read-only; open it with mode='r+' to write")
        if self.meta.linked:
            raise EngramError(f"{self.path} is linked to a checkpoint (read-only); {COPY_HINT}")
        ids = check_row_ids(row_ids, self.meta.layer(layer_id).rows)
        stored = self._stored_rows(values, ids.size)
        chunk_of = ids // self.meta.chunk_rows
        order = np.argsort(chunk_of, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk_of[order])) + 1
        for group in np.split(order, bounds):
            if not group.size:
                continue
            c = int(chunk_of[group[0]])
            rows = np.array(self.read_chunk(layer_id, c))  # a writable copy
            rows[ids[group] - c * self.meta.chunk_rows] = stored[group]
            self.write_chunk(layer_id, c, rows, source="data", fsync=fsync)
        if flush:
            self.flush()

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
        with self._mutex:
            self._unload(layer_id, chunk_index)
        self._dirty = True

    @property
    def state(self) -> str:
        """Checksum of the rows as this handle holds them (written chunks included)."""
        return table_state(self.meta, self.manifest)

    @property
    def runs(self) -> tuple[dict, ...]:
        """Training runs that wrote rows to this table, oldest first (see :meth:`record_run`)."""
        return self.meta.runs

    def record_run(self, run: dict) -> dict:
        """Record a run that wrote rows (after its rows, before :meth:`flush`, which writes the
        record with the manifest in one atomic write); it replaces an earlier record of the same
        ``run_id``. Returns the record, with ``state``."""
        if self.mode == "r":
            raise EngramError(f"{self.path} is open read-only; open it with mode='r+' to write")
        record = {**run, "state": self.state}
        earlier = tuple(r for r in self.meta.runs if r.get("run_id") != run.get("run_id"))
        self.meta = dataclasses.replace(self.meta, runs=(*earlier, record))
        self._dirty = True
        return record

    def flush(self) -> None:
        """Write the manifest to the group attributes if chunks were written."""
        if self._dirty:
            write_group_attrs(self.path, self.meta, self.manifest)
            self._dirty = False

    def close(self) -> None:
        try:
            if self.mode != "r":
                self.flush()
        finally:
            with self._mutex:
                self._caches.clear()
                self._decoded.clear()
                self._linked.clear()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Table({str(self.path)!r}, layers={list(self.layers)}, dim={self.dim}, "
            f"dtype={self.dtype!r}, mode={self.mode!r})"
        )


def check_metadata(store: TableStore, meta: TableMeta) -> None:
    """Refuse metadata that ``verify`` would report (cheap: O(layers)), naming the first fault."""
    problems = metadata_problems(store, meta)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EngramError(f"{store.url} is damaged: {problems[0]}{more}; run engramctl verify")


def open_table(
    path,
    mode: str = "r",
    *,
    vocab=None,
    check_chunks: bool = True,
    storage_options: dict | None = None,
) -> Table:
    """Open an engramctl table.

    Parameters
    ----------
    path : str or Path
        The table directory (a zarr v3 group written by engramctl), or an fsspec URL
        (``s3://bucket/t.zarr``; read-only: chunks are fetched whole, not memory-mapped).
    mode : {"r", "r+"}
        ``"r+"`` takes the writer lock (a second writer is refused) and allows
        :meth:`Table.write_rows`.
    vocab : CanonicalVocab, optional
        If given, refuse it unless its fingerprint is the table's.
    check_chunks : bool
        Check each chunk's CRC-32 against the manifest the first time it is loaded (reads the
        whole chunk once). Turn off to serve a cold table with single-row reads.
    storage_options : dict, optional
        fsspec options of a URL (``endpoint_url``, ``key``, ``secret``, ``anon`` ...).
    """
    if mode not in ("r", "r+"):
        raise UsageError(f"mode must be 'r' or 'r+', got {mode!r}")
    store = open_store(path, storage_options)
    meta, manifest = read_group(store)
    check_metadata(store, meta)
    check_vocab(meta, vocab, where=store.url)
    if mode == "r+":
        store.check_writable()
    lock = WriterLock(store.root).acquire() if mode == "r+" else None
    if lock is not None:
        try:
            meta, manifest = read_group(store)  # re-read under the lock
        except BaseException:
            lock.release()
            raise
    return Table(
        store.url, meta, manifest, mode=mode, check_chunks=check_chunks, lock=lock, store=store
    )


__all__ = ["open_table", "Table", "TableInfo", "LayerInfo", "LOCK_NAME"]
