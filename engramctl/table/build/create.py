"""Creating tables: :func:`create_table` (lazy or full, resumable) and :func:`initialize_table`.

A full init writes every chunk's deterministic init values (:mod:`engramctl.table.core.rowinit`),
each to a temporary name renamed into place, from a pool of ``workers`` threads (the numba kernel
runs without the GIL). Checksums go to the manifest in the group attributes every couple of seconds
and when the run ends, however it ends. Re-running the same command on an interrupted table
re-checks the written chunks and writes only those missing or failing their checksum.

Writing, checking and recording single chunks (and the one manifest flush loop) live in
:mod:`engramctl.table.build.chunks`, shared with the Dask init of
:mod:`engramctl.table.build.create_dask`, which ``create_table(..., scheduler=...)`` uses instead of
the local threads.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..._files import atomic_directory, check_free_space, check_name_length
from ..._system import cpu_count, format_bytes
from ...cluster import open_client
from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..core.codec import ZSTD_LEVEL, default_chunk_rows
from ..core.dtypes import parse_dtype, row_bytes
from ..core.manifest import group_attrs, read_group
from ..core.meta import TableMeta
from ..core.rowinit import InitRecipe
from ..core.store import LocalStore, TableStore, open_store
from ..sources.table import TableInfo, table_info
from .chunks import (
    InitProgress,
    ManifestRecorder,
    chunks_to_write,
    raise_init_failure,
    remove_stale_chunk_files,
    valid_chunks,
    write_chunks_in_pool,
    write_init_chunk,
)
from .create_dask import check_init_memory, initialize_table_dask
from .replace import clear_unborn, install_table, is_unborn, locked_path


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

    def to_dict(self) -> dict:
        """The ``--json`` document of ``init-table`` and ``import``: the table's info and what
        this run did."""
        doc = self.info.to_dict()
        doc.update(
            resumed=self.resumed,
            chunks_written_now=self.chunks_written,
            chunks_skipped=self.chunks_skipped,
            seconds=round(self.seconds, 3),
        )
        return doc


# ---------------------------------------------------------------------------- create
def build_meta(
    *,
    layout: EngramLayout,
    vocab_fingerprint: str,
    dim: int,
    dtype: str,
    init: InitRecipe,
    lazy: bool = False,
    chunk_rows: int | None = None,
    compressor: str = "none",
) -> TableMeta:
    """The metadata of a new table (arguments as :func:`create_table`'s, the init as a recipe);
    ``chunk_rows`` defaults to about 4 MiB per chunk."""
    dtype = parse_dtype(dtype)
    largest = max(layout.layer_rows(layer) for layer in layout.layers)
    if chunk_rows is None:  # 0 or less is refused by TableMeta.build, not replaced
        chunk_rows = default_chunk_rows(dim, dtype, largest)
    elif chunk_rows > largest:  # a chunk is padded to full size: the file would be mostly zeros
        raise UsageError(
            f"--chunk-rows {chunk_rows} is larger than the largest layer ({largest} rows); use at "
            f"most {largest}, or leave it out for about 4 MiB chunks"
        )
    elif chunk_rows > 0:
        check_chunk_count(chunk_rows, largest, row_bytes(dim, dtype))
    return TableMeta.build(
        layout=layout,
        vocab_fingerprint=vocab_fingerprint,
        dim=dim,
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=compressor,
        init=init,
        lazy=lazy,
        status="lazy" if lazy else "initializing",
    )


# One file per chunk: file systems serve a few thousand small files per layer, or many large ones;
# a million tiny files take minutes to write and list (init-table --chunk-rows 1 on a 4 MB table
# had not finished after 4 minutes).
MAX_SMALL_CHUNKS = 1024  # chunks per layer smaller than SMALL_CHUNK_BYTES
SMALL_CHUNK_BYTES = 64 * 2**10
MAX_CHUNKS = 2**20  # chunks per layer, whatever their size


def check_chunk_count(chunk_rows: int, layer_rows: int, row_size: int) -> None:
    """Refuse a ``--chunk-rows`` that cuts the largest layer into more chunk files than a file
    system serves well (more than ``MAX_SMALL_CHUNKS`` under 64 KiB, or ``MAX_CHUNKS`` in all),
    naming the count and a ``--chunk-rows`` that works.

    >>> check_chunk_count(4096, 10**6, 264)  # 245 chunks of about 1 MiB: fine
    """
    chunks = -(-layer_rows // chunk_rows)
    chunk_bytes = chunk_rows * row_size
    small = chunk_bytes < SMALL_CHUNK_BYTES and chunks > MAX_SMALL_CHUNKS
    if not small and chunks <= MAX_CHUNKS:
        return
    better = max(-(-SMALL_CHUNK_BYTES // row_size), -(-layer_rows // MAX_CHUNKS))
    limit = (
        f"file systems serve at most {MAX_SMALL_CHUNKS:,} chunks under "
        f"{format_bytes(SMALL_CHUNK_BYTES)} per layer well"
        if small
        else f"at most {MAX_CHUNKS:,} chunks per layer are served well"
    )
    raise UsageError(
        f"--chunk-rows {chunk_rows} cuts the largest layer ({layer_rows:,} rows) into {chunks:,} "
        f"chunk files of {format_bytes(chunk_bytes)}: {limit}; use --chunk-rows {better} or "
        "more, or leave it out for about 4 MiB chunks"
    )


def write_group_files(path: Path, meta: TableMeta) -> None:
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


def write_new_group(path: Path, meta: TableMeta) -> None:
    """Create the zarr group and arrays under a temporary name, then rename it to ``path``."""
    with atomic_directory(path, label="creating") as tmp:
        write_group_files(tmp, meta)


def _upload_new_group(store: TableStore, meta: TableMeta) -> None:
    """Create the group in a local scratch directory, then upload it (group zarr.json last)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="engramctl-") as scratch:
        local = Path(scratch) / "table.zarr"
        write_new_group(local, meta)
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        for key in sorted(files, key=lambda k: k == "zarr.json"):  # the table appears last
            store.write_bytes(key, (local / key).read_bytes())


def _recipe_differences(old: TableMeta, new: TableMeta) -> list[str]:
    a, b = old.recipe_dict(), new.recipe_dict()
    return [f"{key} {a[key]!r} (table) vs {b[key]!r} (now)" for key in a if a[key] != b[key]]


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
    """Whether ``old`` is an unfinished init of the same table (other settings: refused), or
    the same table complete (a rerun after a kill that landed once it was complete)."""
    if lazy or old.status not in ("complete", "initializing"):
        return False
    read_group(store)  # metadata that fails its checksum is not resumed
    if old.status == "complete":
        return not old.lazy and not _recipe_differences(old, meta)
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


def _create_remote(store: TableStore, meta: TableMeta, *, lazy, overwrite, initialize):
    """Create (or resume) a table in an object store, then fill it unless lazy; returns
    ``(resumed, (chunks written, skipped, bytes))`` as :func:`_create_local` does."""
    resumed = _prepare_remote(store, meta, lazy=lazy, overwrite=overwrite)
    return resumed, ((0, 0, 0) if lazy else initialize(store))


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
    check_name_length(root)
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
            write_group_files(beside, meta)
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
        with the layer id selects the random stream (see :mod:`engramctl.table.core.rowinit`).
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
        (see :mod:`engramctl.table.build.create_dask`); the table is bit-identical either way.
    storage_options : dict, optional
        fsspec options of a URL ``path`` (``endpoint_url``, ``key``, ``secret`` ...).
    """
    store = open_store(path, storage_options)
    started = time.perf_counter()
    meta = build_meta(
        layout=layout,
        vocab_fingerprint=vocab_fingerprint,
        dim=dim,
        dtype=dtype,
        init=init if isinstance(init, InitRecipe) else InitRecipe(kind=init, std=std, seed=seed),
        lazy=lazy,
        chunk_rows=chunk_rows,
        compressor=compressor,
    )
    with _initializer(scheduler, workers, meta) as initialize:  # connect to Dask first
        create = _create_local if store.is_local else _create_remote
        resumed, (written, skipped, nbytes) = create(
            store,
            meta,
            lazy=lazy,
            overwrite=overwrite,
            initialize=lambda target: initialize(target, progress),
        )
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
def initialize_table(
    path, *, workers: int | None = None, progress: Callable[[InitProgress], None] | None = None
) -> tuple[int, int, int]:
    """Write every chunk not yet written (or damaged) of a table; the caller holds the lock.

    Returns ``(chunks written, chunks skipped, bytes written)``. On any error (disk full,
    interrupt) the chunks finished so far are recorded, so a rerun resumes.
    """
    store = open_store(path)
    meta, manifest = read_group(store)
    remove_stale_chunk_files(store, meta)  # a killed writer's .0.tmp-<pid> files
    valid = valid_chunks(store, meta, manifest)
    _drop_damaged(manifest, valid)
    todo = chunks_to_write(meta, valid)
    if store.is_local:
        check_free_space(store.root, len(todo) * meta.chunk_bytes)
    recorder = ManifestRecorder(store, meta, manifest, chunks_total=len(todo), progress=progress)
    failure = _write_chunks(store, meta, todo, recorder, workers=max(1, workers or cpu_count()))
    failure = recorder.finish(failure)
    if failure is not None:
        raise_init_failure(failure, store.url, recorder.bytes_total - recorder.bytes_done)
    return recorder.done, len(valid), recorder.bytes_done


def _drop_damaged(manifest: dict, valid: set[tuple[int, int]]) -> None:
    """Forget the manifest records of chunks that are missing or fail their checksum."""
    for layer_id, chunks in manifest.items():
        for chunk_index in [c for c in chunks if (layer_id, c) not in valid]:
            del chunks[chunk_index]


def _write_chunks(
    store: TableStore,
    meta: TableMeta,
    todo: list[tuple[int, int]],
    recorder: ManifestRecorder,
    *,
    workers: int,
) -> BaseException | None:
    """Write ``todo`` from a thread pool (at most ``2 * workers`` chunks in flight), recording
    each finished chunk; returns what stopped the run, if anything."""
    write_one = functools.partial(write_init_chunk, store, meta)
    failure, _ = write_chunks_in_pool(
        todo, write_one, recorder, workers=workers, thread_name="engram-init"
    )
    return failure


__all__ = [
    "create_table",
    "initialize_table",
    "build_meta",
    "write_new_group",
    "CreateResult",
]
