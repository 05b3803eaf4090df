"""Writing commits: rows staged in memory (:class:`StagedWrites`) and :func:`make_commit`, which
writes one segment per layer, then the log that makes them visible.

A commit is all or nothing. Its segments are written (and fsynced) under fresh names the log does
not list yet; only then is the new log renamed into place. A failure before the rename (a full
disk, Ctrl-C, a kill) leaves the log as it was: the segments written so far are removed at once,
or, after a kill, at the next open for writing (:func:`~engramctl.table.edits.log.
remove_unlisted_segments`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import EngramError
from .log import (
    Commit,
    EditLog,
    log_path,
    new_commit_id,
    parse_log,
    segment_name,
    segments_path,
    utc_now,
    write_log,
)
from .overlay import LayerIndex, build_index, lookup
from .segment import SegmentFile, write_segment, write_segment_columns


@dataclass(frozen=True)
class StreamedRows:
    """A layer of a commit whose rows are produced block by block as its segment is written
    (compaction: O(block) memory however many rows): sorted distinct ``ids``, the stored rows'
    ``dtype`` and ``width``, ``produce(start, stop)`` giving the rows of ``ids[start:stop]``,
    and side columns ``(name, dtype, width, produce)`` produced the same way."""

    ids: np.ndarray
    dtype: np.dtype
    width: int
    produce: Callable[[int, int], np.ndarray]
    side: tuple[tuple[str, np.dtype, int, Callable[[int, int], np.ndarray]], ...] = ()

    def write(self, path, layer_id: int) -> SegmentFile:
        ids = np.ascontiguousarray(self.ids, dtype="<i8")
        columns = [
            ("ids", ids.dtype, 1, lambda a, b: ids[a:b].reshape(-1, 1)),
            ("rows", self.dtype, self.width, self.produce),
            *self.side,
        ]
        return write_segment_columns(path, layer_id, ids.size, columns)


def last_wins(
    ids: np.ndarray, rows: np.ndarray, side: dict | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sorted distinct ``ids`` and, for each, the row (and side values) of its last occurrence
    (copies)."""
    side = side or {}
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        reversed_ids = ids[::-1]
        unique, first = np.unique(reversed_ids, return_index=True)
        pick = {k: np.ascontiguousarray(np.asarray(v)[::-1][first]) for k, v in side.items()}
        return unique, np.ascontiguousarray(rows[::-1][first]), pick
    copies = {k: np.array(v, copy=True, order="C") for k, v in side.items()}
    return ids.copy(), np.array(rows, copy=True, order="C"), copies


def check_side(side: dict | None, n: int) -> dict:
    """Side columns as ``{name: float array [n, width]}`` (a 1-d column becomes width 1)."""
    out = {}
    for name, values in (side or {}).items():
        values = np.asarray(values)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != n or values.dtype.kind != "f":
            raise EngramError(
                f"side column {name!r} must be floats [{n}, width], got {values.dtype} "
                f"{list(values.shape)}"
            )
        if name in ("ids", "rows"):
            raise EngramError(f"a side column cannot be named {name!r}")
        out[str(name)] = values
    return out


def absent_side(n: int, like: np.ndarray) -> np.ndarray:
    """Side values of rows written without that column: NaN rows, which readers take as absent
    (a plain write of a trained row drops its moments and master copy)."""
    return np.full((n, like.shape[1]), np.nan, dtype=like.dtype)


class StagedWrites:
    """Rows written but not committed yet, per layer, in the order they were written."""

    def __init__(self):
        self.layers: dict[int, list[tuple[np.ndarray, np.ndarray, dict]]] = {}

    def add(self, layer_id: int, ids: np.ndarray, rows: np.ndarray, side: dict | None = None):
        """Stage rows (int64 ids in range, stored rows, optional side columns ``{name: [n,
        width]}``); of repeated ids the last one wins."""
        if ids.size:
            self.layers.setdefault(layer_id, []).append(last_wins(ids, rows, side))

    @property
    def empty(self) -> bool:
        return not self.layers

    @property
    def rows(self) -> int:
        return sum(b[0].size for batches in self.layers.values() for b in batches)

    def clear(self) -> None:
        self.layers.clear()

    def apply(self, layer_id: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Overwrite the rows of ``out`` (row ``ids[i]``) that staged writes hold."""
        for staged_ids, staged_rows, _ in self.layers.get(layer_id, ()):
            hits, at = lookup(LayerIndex(staged_ids, None, None), ids)
            out[hits] = staged_rows[at]
        return out

    def apply_side(self, layer_id: int, name: str, ids: np.ndarray, out: np.ndarray | None):
        """Overwrite ``out`` (side column ``name`` of row ``ids[i]``, NaN where absent; ``None``
        when no value is known yet) with what staged writes hold; returns it."""
        for staged_ids, _, side in self.layers.get(layer_id, ()):
            hits, at = lookup(LayerIndex(staged_ids, None, None), ids)
            if not hits.size:
                continue
            if name not in side:
                if out is not None:
                    out[hits] = np.nan
                continue
            if out is None:
                out = absent_side(ids.size, side[name])
            out[hits] = side[name][at]
        return out

    def apply_range(self, layer_id: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        for staged_ids, staged_rows, _ in self.layers.get(layer_id, ()):
            lo, hi = np.searchsorted(staged_ids, [start, stop])
            out[staged_ids[lo:hi] - start] = staged_rows[lo:hi]
        return out

    def merged(self, layer_id: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """One layer's staged rows as one sorted batch (later writes win) and their side
        columns (NaN for rows whose last write had no such column)."""
        batches = self.layers[layer_id]
        if len(batches) == 1:
            return batches[0]
        index = build_index([b[0] for b in batches])
        rows = np.empty((index.ids.size, batches[0][1].shape[1]), dtype=batches[0][1].dtype)
        side: dict[str, np.ndarray] = {}
        for _, _, batch_side in batches:
            for name, values in batch_side.items():
                if name not in side:
                    side[name] = absent_side(index.ids.size, values)
        for b, (_, batch_rows, batch_side) in enumerate(batches):
            mine = np.flatnonzero(index.segment == b)
            rows[mine] = batch_rows[index.slot[mine]]
            for name, values in side.items():
                if name in batch_side:
                    values[mine] = batch_side[name][index.slot[mine]]
        return np.asarray(index.ids), rows, side


def _visible(table_path, commit_id: str) -> bool:
    """Whether the table's log already lists ``commit_id`` (the rename happened)."""
    try:
        return commit_id in (
            c.id for c in parse_log(log_path(table_path).read_bytes(), where="").commits
        )
    except (OSError, EngramError):
        return False


def make_commit(
    table_path,
    log: EditLog,
    layers: dict[int, tuple[np.ndarray, np.ndarray] | StreamedRows],
    *,
    made_by: dict,
    message: str = "",
    side: dict[int, dict[str, np.ndarray]] | None = None,
    commit_id: str | None = None,
) -> tuple[EditLog, Commit]:
    """Write ``layers`` (``{layer: (sorted distinct ids, stored rows)}``, or
    :class:`StreamedRows`) as one commit after ``log``; returns the new log (now the table's)
    and the commit. Call under the writer lock.

    ``commit_id``: the new commit's id, chosen by the caller (a run record naming the state
    after it goes into the same log), else a fresh one. A failure leaves the table's log as it
    was and removes what this call wrote; a full disk or
    another OS error is one :class:`EngramError` line.
    """
    commit_id = commit_id or new_commit_id()
    folder = segments_path(table_path)
    written: list = []
    where = f"{table_path}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        records: dict[int, SegmentFile] = {}
        for layer_id, layer in sorted(layers.items()):
            path = folder / segment_name(commit_id, layer_id)
            written.append(path)
            if isinstance(layer, StreamedRows):
                records[layer_id] = layer.write(path, layer_id)
                continue
            ids, rows = layer
            records[layer_id] = write_segment(path, layer_id, ids, rows, (side or {}).get(layer_id))
        commit = Commit(commit_id, log.head, utc_now(), dict(made_by), message, records)
        new_log = log.with_commit(commit)
        write_log(table_path, new_log)
    except BaseException as exc:
        if _visible(table_path, commit_id):  # interrupted after the log's rename: it stands
            raise
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, OSError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise EngramError(
                f"cannot commit rows to {where}: {why}; nothing was committed (the table reads "
                "as before); free space and write again"
            ) from None
        raise
    return new_log, commit


__all__ = ["StagedWrites", "StreamedRows", "make_commit", "last_wins", "check_side", "absent_side"]
