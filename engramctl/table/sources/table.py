"""Open tables: :func:`open_table` and :class:`Table` (gather, rows, write_rows, info).

:class:`Table` picks its row source once, at open (:mod:`engramctl.table.sources.base`): a
linked table reads its checkpoint's shards (:class:`~engramctl.table.sources.linked.LinkedSource`),
any other table its chunk files (:class:`~engramctl.table.sources.chunked.ChunkedSource`:
memory-mapped or fetched, CRC-checked at first load, init values for chunks never written). The
table checks row ids and buffers, delegates the bytes to the source, and keeps the manifest and
the metadata it writes back.

Writing (``mode="r+"``, under the writer lock): :meth:`Table.write_rows` rewrites whole chunks
(read, patch, temporary file, rename) and records their checksums in the manifest; a linked table
refuses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..core.checks import metadata_problems
from ..core.codec import chunk_key
from ..core.dtypes import encode_rows
from ..core.info import LayerInfo, TableInfo, table_info
from ..core.lock import LOCK_NAME, WriterLock
from ..core.manifest import read_group, table_state, write_group_attrs
from ..core.meta import TableMeta, check_vocab
from ..core.store import TableStore, open_store
from ._gather import check_row_ids
from .base import RowSource
from .chunked import ChunkedSource
from .linked import LinkedSource


def row_source(
    store: TableStore, meta: TableMeta, manifest: dict, *, check_chunks: bool, writer: bool
) -> RowSource:
    """The row source of a table: its checkpoint's shards if linked, else its chunk files."""
    if meta.linked:
        return LinkedSource(meta, store.location)
    return ChunkedSource(store, meta, manifest, check_chunks=check_chunks, writer=writer)


class Table:
    """An open engramctl table. Use :func:`open_table`; ``with`` closes it (and flushes)."""

    def __init__(
        self,
        store: TableStore,
        meta: TableMeta,
        manifest: dict,
        *,
        mode: str,
        check_chunks: bool,
        lock: WriterLock | None,
    ):
        self.store = store
        self.path = store.location  # a Path, or a URL string for a remote table
        self.meta = meta
        self.manifest = manifest
        self.mode = mode
        self.check_chunks = check_chunks
        self._lock = lock
        self._dirty = False
        self.source = row_source(
            store, meta, manifest, check_chunks=check_chunks, writer=mode != "r"
        )

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

    def chunk_path(self, layer_id: int, chunk_index: int):
        """The chunk's file (a URL string for a remote table)."""
        return self.store.location_of(chunk_key(layer_id, chunk_index))

    def read_chunk(self, layer_id: int, chunk_index: int) -> np.ndarray:
        """Stored rows ``[chunk_rows, row_width]`` of any chunk: its file, its linked rows, or
        its init values if never written; read now and not kept (streaming a table through this
        holds one chunk, unlike :meth:`gather`, which keeps the chunks it maps)."""
        self.meta.chunk_span(layer_id, chunk_index)  # refuses a chunk out of range
        return self.source.read_chunk(layer_id, chunk_index)

    # ----------------------------------------------------------------------- gather
    def gather(self, layer_id: int, row_ids, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of one layer in their raw storage dtype, ``[n, row_width]``.

        float32/float16 tables give float32/float16 rows, bfloat16 tables ``uint16`` bits, and
        float8_e4m3fn tables ``uint8`` rows of ``dim`` values then ``dim / 32`` ue8m0 scale
        bytes (decode with :func:`engramctl.table.core.dtypes.decode_rows`, or view with
        :func:`engramctl.model.to_torch`).

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
        return self.source.gather(layer_id, ids, out)

    def rows(self, layer_id: int, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one layer in their raw storage dtype, as :meth:`gather`
        returns them; read now and not kept."""
        rows = self.meta.layer(layer_id).rows
        if not 0 <= start <= stop <= rows:
            raise EngramError(
                f"rows [{start}, {stop}) are out of range: the layer has {rows} rows "
                f"(0..{rows - 1})"
            )
        return self.source.rows(layer_id, start, stop)

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
        self._check_writable()
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
        self._check_writable()
        self.source.write_chunk(layer_id, chunk_index, rows, source=source, fsync=fsync)
        self._dirty = True

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise EngramError(f"{self.path} is open read-only; open it with mode='r+' to write")
        self.source.check_writable()

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
            self.source.close()
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
        Check bytes before returning them: a chunk in the page cache against its CRC-32 the
        first time it is used; a cold read per block where the table has block checksums (else
        its whole chunk, once). Turn off to skip the checks (sizes are still checked).
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
    lock = WriterLock(store.location).acquire() if mode == "r+" else None
    if lock is not None:
        try:
            meta, manifest = read_group(store)  # re-read under the lock
        except BaseException:
            lock.release()
            raise
    return Table(store, meta, manifest, mode=mode, check_chunks=check_chunks, lock=lock)


__all__ = ["open_table", "Table", "TableInfo", "LayerInfo", "LOCK_NAME"]
