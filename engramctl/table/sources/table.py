"""Open tables: :func:`open_table` and :class:`Table` (gather, rows, write_rows, info).

:class:`Table` picks its row source once, at open (:mod:`engramctl.table.sources.base`): a
linked table reads its checkpoint's shards (:class:`~engramctl.table.sources.linked.LinkedSource`),
any other table its chunk files (:class:`~engramctl.table.sources.chunked.ChunkedSource`:
memory-mapped or fetched, CRC-checked at first load, init values for chunks never written). The
table checks row ids and buffers, delegates the bytes to the source, and keeps the manifest and
the metadata it writes back.

Reading goes through the table's commits (:mod:`engramctl.table.edits`): the source's rows
first, then the rows of the newest commit that holds them, then (in a writer) rows staged but not
committed yet. A handle reads the log it opened (a snapshot), pinned against compaction.

Writing (``mode="r+"``, under the writer lock) never touches the base: :meth:`Table.write_rows`
is one commit (a segment file per layer, then one atomic rename of the log), or one staged batch
of the commit that :meth:`Table.flush` (or the end of a :meth:`Table.edit` block) makes. This
works on every base: chunk files, a lazy table, a linked checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..core.checks import metadata_problems, unfinished_reason
from ..core.codec import chunk_key
from ..core.dtypes import encode_rows
from ..core.info import LayerInfo, TableInfo, table_info
from ..core.lock import LOCK_NAME, WriterLock, active_writer
from ..core.manifest import read_group, table_state, write_group_attrs
from ..core.meta import TableMeta, check_vocab
from ..core.store import TableStore, open_store
from ..edits.log import (
    Commit,
    EditLog,
    Pin,
    new_commit_id,
    read_log,
    rows_state,
    write_log,
)
from ..edits.overlay import Overlay
from ..edits.place import commits_store, open_commits
from ..edits.session import StagedWrites, check_side, make_commit
from ._gather import check_row_ids
from .base import RowSource
from .chunked import ChunkedSource
from .linked import LinkedSource


def row_source(
    store: TableStore, meta: TableMeta, manifest: dict, *, check_chunks: bool, writer: bool
) -> RowSource:
    """The row source of a table: its checkpoint's shards if linked, else its chunk files."""
    if meta.linked:
        return LinkedSource(meta, store.location, check_blocks=check_chunks)
    return ChunkedSource(store, meta, manifest, check_chunks=check_chunks, writer=writer)


class _EditBlock:
    """What ``with table.edit() as e`` yields: ``e.write_rows`` stages into the block."""

    def __init__(self, table: Table):
        self.table = table

    def write_rows(self, layer_id: int, row_ids, values) -> None:
        self.table.write_rows(layer_id, row_ids, values, flush=False)

    def gather(self, layer_id: int, row_ids) -> np.ndarray:
        """Rows as the block sees them (its staged rows included)."""
        return self.table.gather(layer_id, row_ids)


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
        edit_log: EditLog | None = None,
        pin: Pin | None = None,
        commits: TableStore | None = None,
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
        self.edit_log = edit_log if edit_log is not None else EditLog()
        self.commits_store = commits or store  # where the commits live (see edits.place)
        self._pin = pin
        self._staged = StagedWrites()
        self._origin: dict = {"kind": "write"}  # what made the next commit (see record_run)
        self._runs_dirty = False  # a run record not in the log file yet
        self.overlay: Overlay | None = None
        try:
            self.overlay = self._open_overlay(self.edit_log)
        except BaseException:
            self.close()
            raise

    def _open_overlay(self, edit_log: EditLog) -> Overlay | None:
        if not edit_log.commits:
            return None
        return Overlay(self.commits_store, edit_log, check_crc=self.check_chunks)

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
        """What ``engramctl info`` shows: layout, layers, chunks written, the commits read."""
        return dataclasses.replace(
            table_info(self.path, self.meta, self.manifest),
            commits=len(self.edit_log.commits),
            commit_rows=self.edit_log.rows,
            commit_bytes=self.edit_log.bytes,
        )

    @property
    def commits(self) -> tuple[Commit, ...]:
        """The commits this handle reads, oldest first (its snapshot of the log)."""
        return self.edit_log.commits

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
        start, _ = self.meta.chunk_span(layer_id, chunk_index)  # refuses a chunk out of range
        rows = self.source.read_chunk(layer_id, chunk_index)
        return self._through_edits(layer_id, start, start + self.meta.chunk_rows, rows)

    def _through_edits(self, layer_id: int, start: int, stop: int, rows: np.ndarray):
        """Rows ``[start, stop)`` of the base with the commits' (and staged) rows put over
        them; copied first only when something is put over them."""
        if self.overlay is None and self._staged.empty:
            return rows
        rows = rows if rows.flags.writeable else np.array(rows)
        if self.overlay is not None:
            self.overlay.apply_range(layer_id, start, stop, rows)
        return self._staged.apply_range(layer_id, start, stop, rows)

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
        found, hits = (None, 0) if self.overlay is None else self.overlay.find(layer_id, ids)
        if hits:  # the base reads only the rows no commit holds; one pass puts both in
            base_rows = np.empty((ids.size - hits, shape[1]), out.dtype)
            if hits < ids.size:
                self.source.gather(layer_id, ids[found < 0], base_rows)
            self.overlay.merge(layer_id, found, base_rows, out)
        else:
            self.source.gather(layer_id, ids, out)
        if not self._staged.empty:
            self._staged.apply(layer_id, ids, out)
        return out

    def rows(self, layer_id: int, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one layer in their raw storage dtype, as :meth:`gather`
        returns them; read now and not kept."""
        rows = self.meta.layer(layer_id).rows
        if not 0 <= start <= stop <= rows:
            raise EngramError(
                f"rows [{start}, {stop}) are out of range: the layer has {rows} rows "
                f"(0..{rows - 1})"
            )
        return self._through_edits(layer_id, start, stop, self.source.rows(layer_id, start, stop))

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
        self, layer_id: int, row_ids, values, *, flush: bool = True, fsync: bool = True, side=None
    ) -> None:
        """Overwrite rows of one layer: one commit, or staged for the next one.

        ``values`` are stored rows as :meth:`gather` returns them, or floats ``[n, dim]``
        encoded to the table's dtype. Of repeated row ids the last one wins (also across staged
        calls). ``flush=True`` makes this call (with any rows staged before it) one commit,
        visible to readers that open the table after it; ``flush=False`` stages the rows: this
        handle reads them at once, the table gets them at :meth:`flush`, :meth:`close` or the
        end of an :meth:`edit` block (one commit for all). ``fsync`` is kept for callers of the
        chunk-rewriting writer: a commit always fsyncs its segments before the log that makes
        them visible, so it has no effect. The base's files are never written. ``side``: float
        columns ``{name: [n, width]}`` the commit carries with the rows (:meth:`side_rows`).
        """
        del fsync  # a commit is durable when it is visible (see the docstring)
        self._check_writable()
        ids = check_row_ids(row_ids, self.meta.layer(layer_id).rows)
        stored = self._stored_rows(values, ids.size)
        self._staged.add(layer_id, ids, stored, check_side(side, ids.size))
        if flush:
            self.commit()

    @contextlib.contextmanager
    def edit(self, message: str = "", *, made_by: dict | None = None):
        """A block of writes that is one commit: ``with table.edit("why") as e: e.write_rows(
        layer, ids, rows)`` (the block's ``write_rows`` stages, as ``flush=False`` does).

        Leaving the block commits every staged row at once; an exception (Ctrl-C included), in
        the block or in its commit (a full disk), drops them and commits nothing. Yields a
        handle with ``write_rows`` and ``gather``.
        """
        self._check_writable()
        block = _EditBlock(self)
        try:
            yield block
        except BaseException:
            self._staged.clear()
            raise
        default = {"kind": "edit"} if self._origin == {"kind": "write"} else self._origin
        try:
            self.commit(message, made_by=made_by or default)
        except BaseException:
            self._staged.clear()  # the block is all or nothing: nothing is left to commit later
            raise

    def commit(
        self, message: str = "", *, made_by: dict | None = None, commit_id: str | None = None
    ) -> Commit | None:
        """Commit the staged rows (one segment per layer, then the log's rename, with any run
        record not written yet); returns the commit, or ``None`` if nothing was staged."""
        if self._staged.empty:
            return None
        self._check_writable()
        merged = {layer_id: self._staged.merged(layer_id) for layer_id in self._staged.layers}
        side = {k: v[2] for k, v in merged.items() if v[2]}
        layers = {k: v[:2] for k, v in merged.items()}
        new_log, commit = make_commit(
            self.commits_store.location, self.edit_log, layers, side=side,
            made_by=made_by or self._origin, message=message, commit_id=commit_id,
        )  # fmt: skip
        self._staged.clear()
        self._runs_dirty = False
        old, self.edit_log = self.overlay, new_log
        self.overlay = self._open_overlay(new_log)
        if old is not None:
            old.close()
        return commit

    def side_rows(self, layer_id: int, name: str, row_ids) -> np.ndarray | None:
        """Side column ``name`` of rows as last written, ``[n, width]``: NaN rows where the last
        write had none or none was made; ``None`` if no commit or staged write has the column."""
        ids = check_row_ids(row_ids, self.meta.layer(layer_id).rows)
        return self._staged.apply_side(layer_id, name, ids, self.overlay and self.overlay.side(
            layer_id, name, ids))  # fmt: skip

    def discard(self) -> int:
        """Drop the staged rows (nothing is committed); returns how many were staged."""
        n = self._staged.rows
        self._staged.clear()
        return n

    @property
    def staged_rows(self) -> int:
        """Rows written with ``flush=False`` (or in an edit block) and not committed yet."""
        return self._staged.rows

    def write_chunk(
        self, layer_id: int, chunk_index: int, rows: np.ndarray, *, source: str, fsync=True
    ) -> None:
        """Rewrite one whole chunk of the base (temporary file + rename) and record it in the
        manifest (compaction into the base; a linked base refuses). Rows go to commits
        (:meth:`write_rows`), not here."""
        self._check_writable()
        if self.commits_store is not self.store:
            raise EngramError(
                f"{self.path}: its commits live in {self.commits_store.url}; its base is only "
                "read, not rewritten (compact without --into-base)"
            )
        self.source.check_writable()
        self.source.write_chunk(layer_id, chunk_index, rows, source=source, fsync=fsync)
        self._dirty = True

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise EngramError(f"{self.path} is open read-only; open it with mode='r+' to write")

    @property
    def state(self) -> str:
        """Checksum of the rows as this handle holds them (written chunks and the commits
        included; rows staged but not committed are not)."""
        return rows_state(table_state(self.meta, self.manifest), self.edit_log.head)

    @property
    def runs(self) -> tuple[dict, ...]:
        """Training runs that wrote rows to this table, oldest first (see :meth:`record_run`):
        the log's records, after those an older engramctl kept in ``zarr.json``."""
        newer = {r.get("run_id") for r in self.edit_log.runs}
        return (*(r for r in self.meta.runs if r.get("run_id") not in newer), *self.edit_log.runs)

    def record_run(self, run: dict) -> dict:
        """Record a run that wrote rows, after its rows (replacing a record of the same
        ``run_id``); returns it, with ``state`` (the checksum of the rows it left). It goes into
        the log with the rows staged before it (one rename), or at :meth:`flush` if none are;
        later commits name the run (id, mode, steps, checkpoint) in ``history``."""
        self._check_writable()
        keys = ("run_id", "mode", "steps", "checkpoint")
        self._origin = {"kind": "train"} | {k: run[k] for k in keys if k in run}
        commit_id = None if self._staged.empty else new_commit_id()
        base = table_state(self.meta, self.manifest)
        record = {**run, "state": rows_state(base, commit_id or self.edit_log.head)}
        self.edit_log = self.edit_log.with_run(record)
        self._runs_dirty = commit_id is None
        self.commit(commit_id=commit_id)
        return record

    def flush(self) -> None:
        """Commit the staged rows, write run records recorded since (the log), and write the
        manifest to the group attributes if it changed."""
        self.commit()
        if self._runs_dirty:
            write_log(self.commits_store.location, self.edit_log)
            self._runs_dirty = False
        if self._dirty:
            write_group_attrs(self.path, self.meta, self.manifest)
            self._dirty = False

    def close(self) -> None:
        """Commit the staged rows (a writer), unmap everything, drop the pin and the lock."""
        try:
            if self.mode != "r":
                self.flush()
        finally:
            self.source.close()
            if self.overlay is not None:
                self.overlay.close()  # a later read maps the segments again
            if self._pin is not None:
                self._pin.release()
                self._pin = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Table:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # an error or Ctrl-C in the block: staged rows are not committed
            self._staged.clear()
        self.close()

    def __repr__(self) -> str:
        return (f"Table({str(self.path)!r}, layers={list(self.layers)}, dim={self.dim}, "
                f"dtype={self.dtype!r}, mode={self.mode!r})")  # fmt: skip


def check_metadata(store: TableStore, meta: TableMeta, *, unfinished_ok: bool = False) -> None:
    """Refuse metadata that ``verify`` would report (cheap: O(layers)), naming the first fault,
    and an unfinished import or init (unless ``unfinished_ok``), naming the command to resume."""
    problems = metadata_problems(store, meta)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EngramError(f"{store.url} is damaged: {problems[0]}{more}; run engramctl verify")
    if not unfinished_ok and meta.status == "initializing":
        writer = active_writer(store.location) if store.supports_writes else None
        raise EngramError(f"{store.url} {unfinished_reason(meta, writer=writer)}")


def read_info(path, *, storage_options: dict | None = None, commits_dir=None) -> TableInfo:
    """The :class:`TableInfo` of a table (``engramctl info``), an unfinished one too (its
    ``status`` says so); metadata that fails its checks is refused as :func:`open_table` does.
    The commits counted are those in ``commits_dir`` where given."""
    store = open_store(path, storage_options)
    meta, manifest = read_group(store)
    check_metadata(store, meta, unfinished_ok=True)
    place = commits_store(store, table_state(meta, manifest), commits_dir, create=False)
    edit_log = read_log(place)
    return dataclasses.replace(
        table_info(store.location, meta, manifest),
        commits=len(edit_log.commits),
        commit_rows=edit_log.rows,
        commit_bytes=edit_log.bytes,
    )


def open_table(
    path,
    mode: str = "r",
    *,
    vocab=None,
    check_chunks: bool = True,
    storage_options: dict | None = None,
    commits_dir=None,
) -> Table:
    """Open an engramctl table.

    Parameters
    ----------
    path : str or Path
        The table directory (a zarr v3 group written by engramctl), or an fsspec URL
        (``s3://bucket/t.zarr``: chunks are fetched whole, not memory-mapped; its commits
        live in ``commits_dir``).
    mode : {"r", "r+"}
        ``"r+"`` takes the writer lock (a second writer is refused) and allows
        :meth:`Table.write_rows`.
    vocab : CanonicalVocab, optional
        If given, refuse it unless its fingerprint is the table's.
    check_chunks : bool
        Check bytes before returning them: a chunk in the page cache against its CRC-32 the
        first time it is used; a cold read per block where the table has block checksums (else
        its whole chunk, once); a linked table's blocks against their block checksums the
        first time they are read. Turn off to skip the checks (sizes are still checked; a link
        to a URL checks every fetched block regardless).
    storage_options : dict, optional
        fsspec options of a URL (``endpoint_url``, ``key``, ``secret``, ``anon`` ...).
    commits_dir : str or Path, optional
        A local directory for the table's commits instead of the table's own (required to
        write a table at a URL): made by the first write, bound to this base (its URL and
        state) and refused for another (:mod:`engramctl.table.edits.place`).
    """
    if mode not in ("r", "r+"):
        raise UsageError(f"mode must be 'r' or 'r+', got {mode!r}")
    store = open_store(path, storage_options)
    meta, manifest = read_group(store)
    check_metadata(store, meta)
    check_vocab(meta, vocab, where=store.url)
    opened = open_commits(store, meta, manifest, mode=mode, commits_dir=commits_dir)
    try:
        return Table(
            store, opened.meta, opened.manifest, mode=mode, check_chunks=check_chunks,
            lock=opened.lock, edit_log=opened.edit_log, pin=opened.pin, commits=opened.store,
        )  # fmt: skip
    except BaseException:
        if opened.pin is not None:
            opened.pin.release()
        if opened.lock is not None:
            opened.lock.release()
        raise


__all__ = ["open_table", "read_info", "Table", "TableInfo", "LayerInfo", "LOCK_NAME"]
