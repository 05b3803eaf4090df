"""A table's commits as operations: :func:`table_history`, :func:`revert_table`,
:func:`compact_table` (what ``engramctl history``, ``revert`` and ``compact`` call).

Each works on the log (:mod:`engramctl.table.edits.log`) under the writer lock and changes the
table by one atomic rename of the log, so a kill at any point leaves the table as it was before
the call or as it is after it; segment files the new log no longer lists are deleted after the
rename (or at the next open for writing), never while a live reader's pin lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import EngramError
from .core.lock import WriterLock
from .core.manifest import read_group, table_state
from .core.store import open_store
from .edits.journal import finish_journal
from .edits.log import (
    Commit,
    new_commit_id,
    read_log,
    remove_unlisted_segments,
    restate,
    rows_state,
    utc_now,
    write_log,
)
from .edits.place import commits_store
from .edits.session import StreamedRows, make_commit
from .sources.table import open_table


@dataclass(frozen=True)
class TableHistory:
    """A table's commits oldest first, and the events that rewrote its log (reverts,
    compactions)."""

    path: str
    commits: tuple[Commit, ...]
    events: tuple[dict, ...]
    runs: tuple[dict, ...] = ()  # records of the training runs that wrote rows, oldest first

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "commits": [
                {
                    "id": c.id,
                    "parent": c.parent,
                    "time": c.time,
                    "made_by": c.made_by,
                    "message": c.message,
                    "rows": {str(k): v.rows for k, v in sorted(c.layers.items())},
                    "bytes": c.bytes,
                }
                for c in self.commits
            ],
            "events": list(self.events),
            "runs": list(self.runs),
        }


def table_history(path, *, storage_options: dict | None = None, commits_dir=None) -> TableHistory:
    """The commits of a table (read-only; no segment is read).

    Parameters
    ----------
    path : str or Path
        The table (a local path or an fsspec URL).
    storage_options : dict, optional
        fsspec options of a URL.
    commits_dir : str or Path, optional
        The table's commits directory (:mod:`engramctl.table.edits.place`), if not its own.
    """
    opened = open_table(path, storage_options=storage_options, commits_dir=commits_dir)
    with opened as table:  # refuses a non-table
        edit_log = table.edit_log
        where = table.store.url
        runs = table.runs
    return TableHistory(where, edit_log.commits, edit_log.events, runs)


@dataclass(frozen=True)
class RevertResult:
    """What :func:`revert_table` did: the commit the table now reads (``None``: the base) and
    the commits it dropped, newest last."""

    path: str
    head: str | None
    dropped: tuple[str, ...]
    removed_segments: int

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "head": self.head,
            "dropped": list(self.dropped),
            "removed_segments": self.removed_segments,
        }


def revert_table(
    path, to: str, *, storage_options: dict | None = None, commits_dir=None
) -> RevertResult:
    """Make the table read as it was at commit ``to`` (an id, a unique prefix of one, or
    ``"base"``: drop every commit).

    Refused while a writer holds the table. Works when a later commit's segment is damaged or
    missing (the log alone is rewritten): that is how such a commit is dropped. Readers that
    opened the table before keep reading their snapshot. ``commits_dir``: the table's commits
    directory (:mod:`engramctl.table.edits.place`), if not its own.
    """
    store = open_store(path, storage_options)
    meta, manifest = read_group(store)  # refuses a non-table (segments unread: may be damaged)
    place = commits_store(store, table_state(meta, manifest), commits_dir, create=False)
    place.check_writable()
    with WriterLock(place.location):
        if place is store:
            finish_journal(store)  # a compaction into the base cut short: its commits go first
        edit_log = read_log(place)
        keep = 0 if to == "base" else edit_log.index_of(to) + 1
        dropped = tuple(c.id for c in edit_log.commits[keep:])
        if dropped:
            event = {"kind": "revert", "time": utc_now(), "to": to, "dropped": list(dropped)}
            kept = edit_log.commits[:keep]
            edit_log = replace(edit_log, commits=kept, events=(*edit_log.events, event))
            write_log(place.location, edit_log)
        removed = remove_unlisted_segments(place.location, edit_log)
    return RevertResult(store.url, edit_log.head, dropped, len(removed))


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact_table` did."""

    path: str
    commits_merged: int
    rows: dict[int, int] = field(default_factory=dict)  # distinct rows per layer after
    bytes_before: int = 0
    bytes_after: int = 0
    removed_segments: int = 0

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "commits_merged": self.commits_merged,
            "rows": {str(k): v for k, v in self.rows.items()},
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "removed_segments": self.removed_segments,
        }


def base_state(table) -> str:
    """The checksum of a table's base (:func:`~engramctl.table.core.manifest.table_state`)."""
    return table_state(table.meta, table.manifest)


def _streamed_layer(table, layer_id: int, report: Callable[[int], None]) -> StreamedRows:
    """A layer's written rows, newest of each id, produced block by block from the overlay."""
    overlay = table.overlay
    ids = overlay.written_ids(layer_id)
    width, dtype = table.row_width, table.meta.storage_dtype

    def produce(start: int, stop: int) -> np.ndarray:
        rows = np.empty((stop - start, width), dtype=dtype)
        overlay.apply(layer_id, np.asarray(ids[start:stop]), rows)
        report(stop - start)
        return rows

    return StreamedRows(ids, dtype, width, produce, _side_columns(overlay, layer_id))


def _side_columns(overlay, layer_id: int) -> tuple:
    """The side columns any segment of the layer has, each produced block by block from the
    segment holding each id's newest row; NaN where that segment lacks the column (absent: the
    row's newest commit was a plain write or an edit, not training). A column whose segments
    disagree on its dtype or width, or an integer column some segment lacks, is not carried."""
    segments = overlay.segments[layer_id]
    index = overlay.index(layer_id)
    specs = [
        {n: (d, w) for n, (d, w, _, _) in s.columns.items() if n not in ("ids", "rows")}
        for s in segments
    ]
    columns = []
    for name in sorted({n for spec in specs for n in spec}):
        kinds = {spec[name] for spec in specs if name in spec}
        if len(kinds) != 1:
            continue
        dtype, width = kinds.pop()
        floating = np.issubdtype(np.dtype(dtype), np.floating)
        if not floating and any(name not in spec for spec in specs):
            continue

        def produce(start, stop, name=name, dtype=dtype, width=width, floating=floating):
            if index.segment is None:
                return segments[0].column(name)[start:stop]
            out = np.empty((stop - start, width), dtype=dtype)
            if floating:
                out.fill(np.nan)
            seg, slot = index.segment[start:stop], index.slot[start:stop]
            for which in np.unique(seg).tolist():
                if name in specs[which]:
                    mine = seg == which
                    out[mine] = segments[which].column(name)[slot[mine]]
            return out

        columns.append((name, dtype, width, produce))
    return tuple(columns)


def compact_table(
    path,
    *,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
    commits_dir=None,
) -> CompactResult:
    """Merge every commit of a table into one commit (one segment per layer, newest row of each
    id kept); the table reads the same before and after.

    Kill-safe and resumable: the merged segments are written under new names, then the log is
    swapped by one rename; a kill before it leaves the old commits (the new segments are orphans,
    removed at the next open for writing), a kill after it leaves the compacted table. Segments
    that live readers pin are deleted later, by the next compaction or open for writing.

    Streaming: each layer's merged segment is written by id range, a block of rows at a time
    (:class:`~engramctl.table.edits.session.StreamedRows`), so RAM is the index of the written
    rows (about 20 bytes per distinct row, as any read through the commits builds) plus one
    block (16 MiB), never the rows themselves. ``progress(rows_done, rows_total)``.
    ``commits_dir``: the table's commits directory, if not its own (a table at a URL).
    """
    opened = open_table(path, "r+", storage_options=storage_options, commits_dir=commits_dir)
    with opened as table:
        edit_log = table.edit_log
        before = edit_log.bytes
        if len(edit_log.commits) <= 1:
            segments = table.overlay.segments if table.overlay else {}
            rows = {k: s[0].record.rows for k, s in segments.items()}
            return CompactResult(table.store.url, 0, rows, before, before)
        overlay = table.overlay
        total = sum(overlay.written_ids(layer_id).size for layer_id in overlay.segments)
        done = 0

        def report(rows: int) -> None:
            nonlocal done
            done += rows
            if progress:
                progress(done, total)

        layers = {k: _streamed_layer(table, k, report) for k in sorted(overlay.segments)}
        merged = [
            {"id": c.id, "time": c.time, "made_by": c.made_by, "message": c.message}
            for c in edit_log.commits
        ]
        event = {"kind": "compact", "time": utc_now(), "merged": [c.id for c in edit_log.commits]}
        commit_id = new_commit_id()  # the rows do not change: a run record's state follows
        runs = restate(edit_log.runs, table.state, rows_state(base_state(table), commit_id))
        new_log, _ = make_commit(
            table.commits_store.location,
            replace(edit_log, commits=(), events=(*edit_log.events, event), runs=runs),
            layers,
            commit_id=commit_id,
            made_by={"kind": "compact", "merged": merged},
            message=f"compaction of {len(merged)} commits",
        )
        removed = remove_unlisted_segments(table.commits_store.location, new_log)
        url = table.store.url
    if not new_log.commits:
        raise EngramError(f"{url}: compaction wrote no commit")  # pragma: no cover
    return CompactResult(
        url,
        len(merged),
        {k: v.rows for k, v in new_log.commits[0].layers.items()},
        before,
        new_log.bytes,
        len(removed),
    )


__all__ = [
    "TableHistory",
    "RevertResult",
    "CompactResult",
    "table_history",
    "revert_table",
    "compact_table",
]
