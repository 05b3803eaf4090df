"""Table init on Dask: every chunk is one task that a worker writes straight to the table's store.

:func:`initialize_table_dask` is what ``init-table --scheduler`` runs after the group exists
(``create_table(..., scheduler=...)``). The table metadata goes to the workers once (one task whose
result the chunk tasks share), then one task per chunk re-checks a chunk the manifest already lists
(its bytes against the recorded CRC-32, so a resumed init skips good chunks) or writes the chunk's
deterministic init values with :func:`engramctl.table.build.chunks.write_init_chunk`. The values
depend only on (seed, layer, row, column), so which worker writes which chunk, and how often (a
killed worker's tasks are re-run by Dask), never changes a byte of the table.

Only the client touches the manifest: it records finished chunks as futures complete (every
couple of seconds and at the end, however the run ends), so an interrupted run resumes like a
local one. A worker holds one chunk at a time (:func:`init_task_memory`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from ...cluster import check_worker_memory, check_workers_see, open_client, submit_shared
from ...errors import EngramError
from ..core.manifest import read_group
from ..core.meta import TableMeta
from ..core.store import TableStore
from .chunks import (
    ChunkRecord,
    InitProgress,
    ManifestRecorder,
    chunk_is_valid,
    chunks_to_write,
    raise_init_failure,
    write_init_chunk,
)

log = logging.getLogger(__name__)


def init_task_memory(meta: TableMeta) -> int:
    """Bytes a worker needs for one chunk task: float32 values, their encoding, the file bytes."""
    values = meta.chunk_rows * meta.dim * 4  # float32 init values of the whole chunk
    return 3 * values + 2 * meta.chunk_bytes  # + random-stream scratch, stored rows, file bytes


def check_init_memory(client, meta: TableMeta) -> None:
    """Refuse workers whose memory limit cannot hold one chunk task."""
    check_worker_memory(
        client,
        init_task_memory(meta),
        what="init-table",
        advice="give the workers more memory or create the table with a smaller --chunk-rows",
    )


def ensure_chunk_task(
    store: TableStore, meta: TableMeta, layer_id: int, chunk_index: int, entry: list | None
) -> tuple[ChunkRecord, bool]:
    """Runs on a worker: keep a chunk matching its manifest ``entry``, else (re)write it.

    Returns the chunk's record and whether it was already there (skipped).
    """
    if entry is not None and chunk_is_valid(store, layer_id, chunk_index, entry):
        return ChunkRecord(layer_id, chunk_index, int(entry[0]), int(entry[1])), True
    return write_init_chunk(store, meta, layer_id, chunk_index, parallel=True), False


def _remove_temporaries(store: TableStore, meta: TableMeta) -> None:
    """Delete the temporary files of killed workers' half-written chunks (local tables)."""
    if not store.is_local:
        return  # object stores: a chunk is one PUT, nothing is left half-written
    for layer in meta.layers.values():
        prefix = f"{layer.array}/c"
        for key in store.file_sizes(prefix):
            if ".tmp-" in key.rsplit("/", 1)[-1]:
                log.info("removing %s, left by a worker that died", key)
                (store.root / prefix / key).unlink(missing_ok=True)


def _store_missing(store: TableStore) -> list[str]:
    """Runs on a worker: the table's URL if this worker cannot see it."""
    return [] if store.exists() else [store.url]


def initialize_table_dask(
    store: TableStore,
    *,
    scheduler: str | None = None,
    client=None,
    progress: Callable[[InitProgress], None] | None = None,
) -> tuple[int, int, int]:
    """Write every missing or damaged chunk of a table from the Dask workers.

    Parameters
    ----------
    store : TableStore
        The table (already created with its group metadata; see :func:`create_table`). A local
        path must be on a file system every worker shares.
    scheduler : str, optional
        ``local:N`` or a scheduler address, opened with :func:`engramctl.cluster.open_client`.
    client : distributed.Client, optional
        An open client to use instead of ``scheduler``.
    progress : callable, optional
        Called with an :class:`InitProgress` as chunks complete; chunks found intact (resume)
        count as done without being written.

    Returns
    -------
    (chunks written, chunks skipped, bytes written)
    """
    if client is None:
        if not scheduler:
            raise EngramError("initialize_table_dask needs a scheduler or a client")
        with open_client(scheduler) as opened:
            return initialize_table_dask(store, client=opened, progress=progress)
    if store.is_local:
        store = type(store)(store.root.resolve())  # workers may run in another directory
    meta, manifest = read_group(store)
    check_init_memory(client, meta)
    check_workers_see(
        client,
        _store_missing,
        store,
        what=store.url,
        advice="a local path must be on a file system every worker mounts at the same path; or "
        "use an fsspec URL (s3://...)",
    )
    return _run_tasks(client, store, meta, manifest, progress)


def _run_tasks(client, store, meta, manifest, progress) -> tuple[int, int, int]:
    from distributed import as_completed

    every = chunks_to_write(meta, set())
    run = uuid.uuid4().hex[:12]  # fresh task keys: never reuse a result of an earlier run
    # a task, not scattered data: if every worker holding it dies, the scheduler recomputes it
    meta_future = submit_shared(client, meta, key=f"engramctl-meta-{run}")
    futures = [
        client.submit(
            ensure_chunk_task,
            store,
            meta_future,
            layer_id,
            chunk_index,
            manifest.get(layer_id, {}).get(chunk_index),
            key=f"engramctl-init-{run}-{layer_id}-{chunk_index}",
            pure=False,
        )
        for layer_id, chunk_index in every
    ]
    recorder = ManifestRecorder(store, meta, manifest, chunks_total=len(every), progress=progress)
    written = skipped = 0
    failure: BaseException | None = None
    try:
        for future in as_completed(futures, loop=client.loop):
            try:
                record, was_there = future.result()
            except Exception as exc:  # disk full, permissions, a chunk that killed its workers
                failure = failure or exc
                break
            recorder.record(record)
            skipped += was_there
            written += not was_there
            recorder.flush_if_due()
    except BaseException as exc:  # KeyboardInterrupt: record what finished, stop the rest
        failure = exc
    finally:
        if failure is not None:
            client.cancel(futures)
        elif recorder.complete:
            _remove_temporaries(store, meta)
        failure = recorder.finish(failure)
    if failure is not None:
        if type(failure).__name__ == "KilledWorker":
            raise EngramError(
                f"dask workers kept dying while writing a chunk of {store.url} ({failure}); "
                "check their memory and logs, then rerun the same command to resume"
            ) from None
        raise_init_failure(failure, store.url, recorder.bytes_total - recorder.bytes_done)
    return written, skipped, written * meta.chunk_bytes


__all__ = [
    "initialize_table_dask",
    "ensure_chunk_task",
    "init_task_memory",
    "check_init_memory",
]
