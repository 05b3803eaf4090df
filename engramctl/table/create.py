"""Creating tables: :func:`create_table` (lazy or full, resumable) and :func:`init_chunk`.

A full init writes every chunk's deterministic init values (:mod:`engramctl.table.rowinit`), each to
a temporary name renamed into place, from a pool of ``workers`` threads (the numba kernel runs
without the GIL). Checksums go to the manifest in the group attributes every couple of seconds
and when the run ends, however it ends. Re-running the same command on an interrupted table
re-checks the written chunks and writes only those missing or failing their checksum.

:func:`init_chunk` initializes ONE chunk given the table path: scale-out code (Dask) calls it from
other processes and merges the returned records with :func:`record_chunks`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import EngramError
from ..layout import EngramLayout
from .dtypes import format_bytes
from .format import (
    ZSTD_LEVEL,
    TableMeta,
    chunk_key,
    crc32_of,
    default_chunk_rows,
    encode_chunk,
    group_attrs,
    init_chunk_rows,
    read_group,
    write_file_atomic,
    write_group_attrs,
)
from .replace import clear_unborn, install_table, is_unborn, locked_path
from .rowinit import InitRecipe
from .store import LocalStore, TableStore, open_store
from .table import TableInfo, table_info

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


@dataclass(frozen=True)
class CreateResult:
    """What :func:`create_table` did."""

    path: str
    info: TableInfo
    resumed: bool  # an interrupted init was continued
    chunks_written: int
    chunks_skipped: int  # already written and checksum-valid
    bytes_written: int
    seconds: float


# ------------------------------------------------------------------------- one chunk
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
    return ChunkRecord(layer_id, chunk_index, crc32_of(data), memoryview(data).nbytes)


def init_chunk(path, layer_id: int, chunk_index: int) -> ChunkRecord:
    """Initialize ONE chunk of an existing table from its metadata (for other processes).

    The values depend only on (seed, layer, row, column), so any process may write any chunk
    in any order. The manifest is not touched: pass the records to :func:`record_chunks`.
    ``path`` may be a local path, an fsspec URL or a :class:`~engramctl.table.store.TableStore`.
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


# ---------------------------------------------------------------------------- create
def _build_meta(
    layout, vocab_fingerprint, dim, dtype, init, std, seed, lazy, chunk_rows, compressor
) -> TableMeta:
    from .dtypes import parse_dtype

    dtype = parse_dtype(dtype)
    recipe = init if isinstance(init, InitRecipe) else InitRecipe(kind=init, std=std, seed=seed)
    largest = max(layout.layer_rows(layer) for layer in layout.layers)
    if chunk_rows is None:  # 0 or less is refused by TableMeta.build, not replaced
        chunk_rows = default_chunk_rows(dim, dtype, largest)
    return TableMeta.build(
        layout=layout,
        vocab_fingerprint=vocab_fingerprint,
        dim=dim,
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=compressor,
        init=recipe,
        lazy=lazy,
        status="lazy" if lazy else "initializing",
    )


def _write_group_files(path: Path, meta: TableMeta) -> None:
    """Create the zarr group and its arrays (no chunks) at ``path``, which must not exist."""
    import zarr
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(str(path), mode="w-")
    compressors = ZstdCodec(level=ZSTD_LEVEL) if meta.compressor == "zstd" else None
    for layer in meta.layers.values():
        group.create_array(
            layer.array,
            shape=(layer.rows, meta.row_width),
            chunks=(meta.chunk_rows, meta.row_width),
            dtype=meta.storage_dtype,
            compressors=compressors,
            fill_value=0,
            attributes={"engramctl_dtype": meta.dtype, "engramctl_dim": meta.dim},
        )
    group.attrs.put(group_attrs(meta, {}))


def _write_new_group(path: Path, meta: TableMeta) -> None:
    """Create the zarr group and arrays under a temporary name, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_group_files(tmp, meta)
        if path.exists():  # an empty directory the user made for it
            path.rmdir()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _upload_new_group(store: TableStore, meta: TableMeta) -> None:
    """Create the group in a local scratch directory, then upload it (group zarr.json last)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="engramctl-") as scratch:
        local = Path(scratch) / "table.zarr"
        _write_new_group(local, meta)
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        for key in sorted(files, key=lambda k: k == "zarr.json"):  # the table appears last
            store.write_bytes(key, (local / key).read_bytes())


def _recipe_differences(old: TableMeta, new: TableMeta) -> list[str]:
    a, b = old.recipe_dict(), new.recipe_dict()
    return [f"{key} {a[key]!r} (table) vs {b[key]!r} (now)" for key in a if a[key] != b[key]]


def check_free_space(path: Path, needed: int) -> None:
    """Refuse to start when the file system of ``path`` has less than ``needed`` bytes free."""
    probe = path if path.exists() else path.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise EngramError(
            f"not enough disk space on {probe}: the table needs {format_bytes(needed)} more, "
            f"{format_bytes(free)} is free; free some space or create it with --lazy"
        )


def _existing_table(store: TableStore) -> TableMeta:
    """The metadata of the table at ``store`` (maybe damaged); refuses anything else."""
    try:
        old, _ = read_group(store, check=False)
    except EngramError:
        raise EngramError(
            f"{store.url} exists and is not an engramctl table; refusing to touch it (remove "
            "it or choose another path)"
        ) from None
    return old


def _can_resume(store: TableStore, old: TableMeta, meta: TableMeta, *, lazy: bool) -> bool:
    """Whether ``old`` is an unfinished init of the same table (other settings: refused)."""
    if old.status != "initializing" or lazy:
        return False
    read_group(store)  # metadata that fails its checksum is not resumed
    differences = _recipe_differences(old, meta)
    if differences:
        raise EngramError(
            f"{store.url} is an unfinished table made with other settings: "
            f"{'; '.join(differences)}; rerun with the same settings to resume, or pass "
            "--overwrite"
        )
    return True


def _prepare_remote(store: TableStore, meta: TableMeta, *, lazy: bool, overwrite: bool) -> bool:
    """Create the group in an object store (or accept an unfinished one to resume)."""
    if store.exists() and not store.is_empty():
        old = _existing_table(store)
        if not overwrite and _can_resume(store, old, meta, lazy=lazy):
            return True
        if not overwrite:
            raise EngramError(f"{store.url} exists; pass --overwrite to replace it")
        store.remove()
    _upload_new_group(store, meta)
    return False


def _resumable_beside(beside: Path, meta: TableMeta, *, lazy: bool) -> bool:
    """Whether ``beside`` holds an interrupted replacement with the same settings."""
    if lazy or not beside.is_dir():
        return False
    try:
        old, _ = read_group(beside)
    except EngramError:
        return False
    return old.status == "initializing" and not _recipe_differences(old, meta)


def _create_local(store: LocalStore, meta: TableMeta, *, lazy, overwrite, initialize):
    """Create, resume or replace a local table, holding its writer lock from the first check to
    the last rename; returns ``(resumed, (chunks written, skipped, bytes))``.

    A new table is put in place whole (metadata, no chunks) and then filled in place, so an
    interrupted init resumes. A replaced table is built beside it (``.<name>.overwrite``, which a
    rerun resumes) and swapped in at the end: an interruption leaves the old table.
    """
    root = store.root
    if not root.parent.is_dir():
        raise EngramError(f"directory {root.parent} does not exist; create it first")
    if root.exists() and not is_unborn(root):
        _existing_table(store)  # refuse to touch something else before taking any lock
    counts = (0, 0, 0)
    with locked_path(root):
        old = None if is_unborn(root) else _existing_table(store)  # again, under the lock
        if old is not None and not overwrite:
            if not _can_resume(store, old, meta, lazy=lazy):
                raise EngramError(f"{store.url} exists; pass --overwrite to replace it")
            return True, initialize(store)
        beside = root.with_name(f".{root.name}.overwrite" if old else f".{root.name}.creating")
        resumed = old is not None and _resumable_beside(beside, meta, lazy=lazy)
        if not resumed:
            shutil.rmtree(beside, ignore_errors=True)
            if not lazy:
                check_free_space(root if old is None else root.parent, _full_bytes(meta))
            if old is None:
                clear_unborn(root)
            _write_group_files(beside, meta)
        if old is not None and not lazy:  # the new table is filled beside the old one
            counts = initialize(LocalStore(beside))
        new_lock = install_table(beside, root)
        try:
            if old is None and not lazy:  # a new table is filled in place: resumable
                counts = initialize(store)
        finally:
            new_lock.release()
    return resumed, counts


@contextlib.contextmanager
def _initializer(scheduler: str | None, workers: int | None, meta: TableMeta):
    """Yields ``initialize(store, progress)``: local threads, or Dask workers (checked now)."""
    if not scheduler or meta.lazy:
        yield lambda store, progress: initialize_table(store, workers=workers, progress=progress)
        return
    from ..cluster import open_client
    from .create_dask import check_init_memory, initialize_table_dask

    with open_client(scheduler) as client:
        check_init_memory(client, meta)  # before the table exists
        yield lambda store, progress: initialize_table_dask(store, client=client, progress=progress)


def create_table(
    path,
    *,
    layout: EngramLayout,
    vocab_fingerprint: str,
    dim: int,
    dtype: str = "float32",
    init: str | InitRecipe = "normal",
    std: float = 0.02,
    seed: int = 0,
    lazy: bool = False,
    chunk_rows: int | None = None,
    compressor: str = "none",
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[InitProgress], None] | None = None,
    scheduler: str | None = None,
    storage_options: dict | None = None,
) -> CreateResult:
    """Create a table (or finish an interrupted init of the same table).

    Parameters
    ----------
    path : str or Path
        The table directory to create, or an fsspec URL (``s3://bucket/t.zarr``).
    layout : EngramLayout
        Fixes the layers, their rows (sum of head primes) and head offsets.
    vocab_fingerprint : str
        ``CanonicalVocab.fingerprint`` of the vocab the layout was built from.
    dim, dtype : int, str
        Values per row and the storage dtype (float32, bfloat16, float16, float8_e4m3fn).
    init, std, seed : str, float, int
        ``normal`` / ``uniform`` (both with standard deviation ``std``) or ``zeros``; the seed
        with the layer id selects the random stream (see :mod:`engramctl.table.rowinit`).
    lazy : bool
        Write metadata only; unwritten chunks read as their init values.
    chunk_rows : int, optional
        Rows per chunk; default about 4 MiB per chunk.
    compressor : {"none", "zstd"}
        ``none`` keeps chunk files memory-mappable (fast gather).
    workers : int, optional
        Threads writing chunks (default: all cores). The result does not depend on it.
    overwrite : bool
        Replace an existing engramctl table at ``path``.
    progress : callable, optional
        Called with an :class:`InitProgress` after every chunk written.
    scheduler : str, optional
        ``local:N`` or a dask scheduler address: the chunks are written by the Dask workers
        (see :mod:`engramctl.table.create_dask`); the table is bit-identical either way.
    storage_options : dict, optional
        fsspec options of a URL ``path`` (``endpoint_url``, ``key``, ``secret`` ...).
    """
    store = open_store(path, storage_options)
    started = time.perf_counter()
    meta = _build_meta(
        layout, vocab_fingerprint, dim, dtype, init, std, seed, lazy, chunk_rows, compressor
    )
    with _initializer(scheduler, workers, meta) as initialize:  # connect to Dask first
        if store.is_local:
            resumed, (written, skipped, nbytes) = _create_local(
                store,
                meta,
                lazy=lazy,
                overwrite=overwrite,
                initialize=lambda target: initialize(target, progress),
            )
        else:
            resumed = _prepare_remote(store, meta, lazy=lazy, overwrite=overwrite)
            written = skipped = nbytes = 0
            if not lazy:
                written, skipped, nbytes = initialize(store, progress)
    meta, manifest = read_group(store)
    return CreateResult(
        path=store.url,
        info=table_info(store.url, meta, manifest),
        resumed=resumed,
        chunks_written=written,
        chunks_skipped=skipped,
        bytes_written=nbytes,
        seconds=time.perf_counter() - started,
    )


def _full_bytes(meta: TableMeta) -> int:
    chunks = sum(layer.n_chunks(meta.chunk_rows) for layer in meta.layers.values())
    return chunks * meta.chunk_bytes


# ------------------------------------------------------------------------- full init
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


def _valid_chunks(store: TableStore, meta: TableMeta, manifest: dict) -> set[tuple[int, int]]:
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


def initialize_table(
    path, *, workers: int | None = None, progress: Callable[[InitProgress], None] | None = None
) -> tuple[int, int, int]:
    """Write every chunk not yet written (or damaged) of a table; the caller holds the lock.

    Returns ``(chunks written, chunks skipped, bytes written)``. On any error (disk full,
    interrupt) the chunks finished so far are recorded, so a rerun resumes.
    """
    path = open_store(path)
    meta, manifest = read_group(path)
    valid = _valid_chunks(path, meta, manifest)
    for layer_id, chunks in manifest.items():  # drop records of damaged chunks
        for chunk_index in [c for c in chunks if (layer_id, c) not in valid]:
            del chunks[chunk_index]
    todo = chunks_to_write(meta, valid)
    total = len(todo) * meta.chunk_bytes
    if path.is_local:
        check_free_space(path.root, total)
    workers = max(1, workers or os.cpu_count() or 1)
    started = last_flush = time.perf_counter()
    done = bytes_done = 0
    if progress:
        progress(InitProgress(0, total, 0, len(todo), 0.0))
    pending: set = set()
    failure: BaseException | None = None
    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engram-init") as pool:
        try:
            while True:
                while failure is None and len(pending) < 2 * workers:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(pool.submit(write_init_chunk, path, meta, *item))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.exception() is not None:
                        failure = failure or future.exception()
                        continue
                    rec = future.result()
                    manifest[rec.layer_id][rec.chunk_index] = [rec.crc32, rec.nbytes, "init"]
                    done += 1
                    bytes_done += meta.chunk_bytes
                    if progress:
                        progress(
                            InitProgress(
                                bytes_done, total, done, len(todo), time.perf_counter() - started
                            )
                        )
                now = time.perf_counter()
                if now - last_flush > MANIFEST_FLUSH_SECONDS:
                    write_group_attrs(path, meta, manifest)
                    last_flush = now
        except BaseException as exc:  # KeyboardInterrupt: let running chunks finish first
            failure = exc
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled() and future.exception() is None:
                    rec = future.result()
                    manifest[rec.layer_id][rec.chunk_index] = [rec.crc32, rec.nbytes, "init"]
        finally:
            complete = failure is None and done == len(todo)
            try:
                write_group_attrs(
                    path, meta.with_status("complete") if complete else meta, manifest
                )
            except OSError as exc:  # e.g. no space left even for zarr.json: the resume redoes
                log.error("cannot record the manifest of %s: %s", path, exc)
                failure = failure or exc
    if failure is not None:
        _raise_init_failure(failure, path.url, total - bytes_done)
    return done, len(valid), bytes_done


def _raise_init_failure(failure: BaseException, path: str, remaining: int) -> None:
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


__all__ = [
    "create_table",
    "init_chunk",
    "record_chunks",
    "initialize_table",
    "InitProgress",
    "CreateResult",
    "ChunkRecord",
]
