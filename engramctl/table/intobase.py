"""Compaction into the base (``engramctl compact --into-base``): every commit folded into the
base's chunk files, each touched chunk rewritten once however many commits touched it; the
table then reads its base alone, as fast as a table never edited.

Resumable through a journal (:mod:`engramctl.table.edits.journal`): the new chunks are staged,
the journal decides, then renames, block checksums, manifest and log follow; a kill at any point
leaves the table reading as before, and the next open for writing (or ``compact --into-base``)
finishes the compaction or, before the journal, drops what was staged.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import EngramError
from .core.codec import crc32_of, encode_chunk, init_chunk_rows
from .core.manifest import read_group, table_state
from .core.store import open_store
from .edits.journal import (
    ChunkRewrite,
    Journal,
    discard_staging,
    finish_journal,
    staged_name,
    staging_path,
    write_journal,
)
from .edits.log import live_pins, utc_now
from .sources.table import open_table


@dataclass(frozen=True)
class IntoBaseResult:
    """What :func:`compact_into_base` did: commits merged, chunks rewritten per layer, the
    rows the commits held per layer, the commits' bytes dropped and the chunk bytes written."""

    path: str
    commits_merged: int
    chunks: dict[int, int] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    commit_bytes: int = 0
    bytes_written: int = 0

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "into_base": True,
            "commits_merged": self.commits_merged,
            "chunks": {str(k): v for k, v in self.chunks.items()},
            "rows": {str(k): v for k, v in self.rows.items()},
            "commit_bytes": self.commit_bytes,
            "bytes_written": self.bytes_written,
        }


def _refuse_base(store, meta, path) -> None:
    if meta.linked:
        raise EngramError(
            f"{store.url} is linked to a checkpoint, whose files engramctl never writes: run "
            f"`engramctl compact {path}` to merge its commits into one segment instead, or "
            "`engramctl import` a copy of the checkpoint and compact that into its base"
        )
    if not store.is_local:
        raise EngramError(
            f"{store.url} is not a local table: compaction into the base renames chunk files in "
            f"place; run `engramctl compact {path}` instead"
        )


def _refuse_readers(table, path) -> None:
    pins = live_pins(table.path, remove_dead=True)
    if pins:
        raise EngramError(
            f"{table.store.url}: {len(pins)} reader(s) have the table open (pins in "
            f"edits/pins/), and a compaction into the base rewrites the chunk files they read; "
            f"close them and run it again, or run `engramctl compact {path}` (merges the "
            "commits into one segment; readers may stay open)"
        )


def _stage_chunks(table, progress) -> list[ChunkRewrite]:
    """Each touched chunk, base rows with the commits' rows over them, written to the staging
    folder (one chunk in memory at a time), then every staged file fsynced."""
    meta, overlay = table.meta, table.overlay
    per = meta.chunk_rows
    todo = []
    for layer_id in sorted(overlay.segments):
        ids = np.asarray(overlay.written_ids(layer_id))
        todo += [(layer_id, int(c)) for c in np.unique(ids // per)]
    staging = staging_path(table.path)
    staging.mkdir(parents=True, exist_ok=True)
    rewrites = []
    for done, (layer_id, chunk) in enumerate(todo):
        rows = table.source.read_chunk_file(layer_id, chunk)  # the base's, or None: lazy
        if rows is None:  # init values, computed in parallel (most of the time of a lazy base)
            rows = init_chunk_rows(meta, layer_id, chunk)
        rows = np.array(rows)  # a copy to write over
        overlay.apply_range(layer_id, chunk * per, (chunk + 1) * per, rows)
        data = encode_chunk(meta, rows)
        name = staged_name(layer_id, chunk)
        with open(staging / name, "wb") as handle:  # fsynced all at once, below
            handle.write(memoryview(data).cast("B"))
        rewrites.append(
            ChunkRewrite(layer_id, chunk, name, crc32_of(data), memoryview(data).nbytes)
        )
        if progress:
            progress(done + 1, len(todo))
    for rewrite in rewrites:  # durable before the journal decides (written back meanwhile)
        fd = os.open(staging / rewrite.staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return rewrites


def compact_into_base(
    path, *, progress: Callable[[int, int], None] | None = None
) -> IntoBaseResult:
    """Fold every commit of a table into its base's chunk files and drop the commits.

    Each chunk any commit touched is rewritten once (the base's rows with the newest commit's
    rows over them), with its manifest CRC-32 and its block checksum record; then the commits
    leave the log (``history`` records the compaction as an event). Memory: one chunk and the
    index of the written rows. Kill-safe and resumable (see the module docstring).

    Refused for a base engramctl does not own (a linked checkpoint: use :func:`~engramctl.
    table.commits.compact_table`), while a writer holds the table, and while live readers have
    it open (their count is named). ``progress(chunks_done, chunks_total)``.
    """
    store = open_store(path)
    store.check_writable()
    meta, _ = read_group(store)
    _refuse_base(store, meta, path)
    with open_table(path, "r+") as table:  # the lock; a compaction cut short is finished here
        edit_log = table.edit_log
        url = table.store.url
        if not edit_log.commits:
            return IntoBaseResult(url, 0)
        _refuse_readers(table, path)
        rows = {k: int(table.overlay.written_ids(k).size) for k in table.overlay.segments}
        try:
            rewrites = _stage_chunks(table, progress)
        except BaseException as exc:  # not decided: the table never changed
            discard_staging(table.path)
            if isinstance(exc, OSError):
                why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or exc
                raise EngramError(
                    f"cannot compact {url} into its base: {why}; nothing was changed (the table "
                    "reads as before); free space and run it again"
                ) from None
            raise
        merged = tuple(c.id for c in edit_log.commits)
        event = {
            "kind": "compact-into-base",
            "time": utc_now(),
            "merged": list(merged),
            "made_by": [{"id": c.id, "made_by": c.made_by, "message": c.message}
                        for c in edit_log.commits],
            "chunks": len(rewrites),
        }  # fmt: skip
        manifest = {layer: dict(chunks) for layer, chunks in table.manifest.items()}
        for r in rewrites:
            manifest.setdefault(r.layer, {})[r.chunk] = r.entry
        states = (table.state, table_state(table.meta, manifest))  # same rows: records follow
        write_journal(table.path, Journal(merged, tuple(rewrites), event, states))
        finish_journal(table.store)
    chunks: dict[int, int] = {}
    for rewrite in rewrites:
        chunks[rewrite.layer] = chunks.get(rewrite.layer, 0) + 1
    return IntoBaseResult(
        url, len(merged), chunks, rows, edit_log.bytes, sum(r.size for r in rewrites)
    )


__all__ = ["IntoBaseResult", "compact_into_base"]
