"""A table's commits as operations: :func:`table_history`, :func:`revert_table`,
:func:`compact_table` (what ``engramctl history``, ``revert`` and ``compact`` call).

Each works on the log (:mod:`engramctl.table.edits.log`) under the writer lock and changes the
table by one atomic rename of the log, so a kill at any point leaves the table as it was before
the call or as it is after it; segment files the new log no longer lists are deleted after the
rename (or at the next open for writing), never while a live reader's pin lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import EngramError
from .core.lock import WriterLock
from .core.manifest import read_group
from .core.store import open_store
from .edits.log import Commit, EditLog, read_log, remove_unlisted_segments, utc_now, write_log
from .edits.session import make_commit
from .sources.table import open_table


@dataclass(frozen=True)
class TableHistory:
    """A table's commits oldest first, and the events that rewrote its log (reverts,
    compactions)."""

    path: str
    commits: tuple[Commit, ...]
    events: tuple[dict, ...]

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
        }


def table_history(path, *, storage_options: dict | None = None) -> TableHistory:
    """The commits of a table (read-only; no segment is read).

    Parameters
    ----------
    path : str or Path
        The table (a local path or an fsspec URL).
    storage_options : dict, optional
        fsspec options of a URL.
    """
    with open_table(path, storage_options=storage_options) as table:  # refuses a non-table
        edit_log = table.edit_log
        where = table.store.url
    return TableHistory(where, edit_log.commits, edit_log.events)


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


def revert_table(path, to: str) -> RevertResult:
    """Make the table read as it was at commit ``to`` (an id, a unique prefix of one, or
    ``"base"``: drop every commit).

    Refused while a writer holds the table. Works when a later commit's segment is damaged or
    missing (the log alone is rewritten): that is how such a commit is dropped. Readers that
    opened the table before keep reading their snapshot.
    """
    store = open_store(path)
    store.check_writable()
    read_group(store)  # refuses a non-table (its segments are not read: they may be damaged)
    with WriterLock(store.location):
        edit_log = read_log(store)
        keep = 0 if to == "base" else edit_log.index_of(to) + 1
        dropped = tuple(c.id for c in edit_log.commits[keep:])
        if dropped:
            event = {"kind": "revert", "time": utc_now(), "to": to, "dropped": list(dropped)}
            edit_log = EditLog(edit_log.commits[:keep], (*edit_log.events, event), exists=True)
            write_log(store.location, edit_log)
        removed = remove_unlisted_segments(store.location, edit_log)
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


def compact_table(path, *, progress: Callable[[int, int], None] | None = None) -> CompactResult:
    """Merge every commit of a table into one commit (one segment per layer, newest row of each
    id kept); the table reads the same before and after.

    Kill-safe and resumable: the merged segments are written under new names, then the log is
    swapped by one rename; a kill before it leaves the old commits (the new segments are orphans,
    removed at the next open for writing), a kill after it leaves the compacted table. Segments
    that live readers pin are deleted later, by the next compaction or open for writing. RAM:
    the merged layer's ids and rows (what the commits hold), not the table.
    """
    with open_table(path, mode="r+") as table:
        edit_log = table.edit_log
        before = edit_log.bytes
        if len(edit_log.commits) <= 1:
            segments = table.overlay.segments if table.overlay else {}
            rows = {k: s[0].record.rows for k, s in segments.items()}
            return CompactResult(table.store.url, 0, rows, before, before)
        layers, side = {}, {}
        overlay = table.overlay
        total = len(overlay.segments)
        for done, layer_id in enumerate(sorted(overlay.segments)):
            ids = np.asarray(overlay.written_ids(layer_id))
            rows = np.empty((ids.size, table.row_width), dtype=table.meta.storage_dtype)
            overlay.apply(layer_id, ids, rows)
            layers[layer_id] = (ids, rows)
            names = overlay.side_names(layer_id)  # side columns go along (NaN: absent)
            side[layer_id] = {name: overlay.side(layer_id, name, ids) for name in names}
            if progress:
                progress(done + 1, total)
        merged = [
            {"id": c.id, "time": c.time, "made_by": c.made_by, "message": c.message}
            for c in edit_log.commits
        ]
        event = {"kind": "compact", "time": utc_now(), "merged": [c.id for c in edit_log.commits]}
        new_log, _ = make_commit(
            table.path,
            EditLog((), (*edit_log.events, event), exists=True),
            layers,
            made_by={"kind": "compact", "merged": merged},
            message=f"compaction of {len(merged)} commits",
            side=side,
        )
        removed = remove_unlisted_segments(table.path, new_log)
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
