"""The log of a table's commits (``<table>/edits/log.json``), reader pins and orphan clean-up.

The log is the one file that makes commits visible: a small JSON document listing the commits
oldest first (id, parent, time, what made it, a message, and per layer its segment file with rows,
size and CRC-32), plus the events that rewrote it (reverts, compactions), the records of the
training runs that wrote rows (``runs``: run id, options, the rows' state they left), and a
SHA-256 of all that. A commit is visible once :func:`write_log` has renamed a new log into place
(one atomic rename, fsynced); a segment the log does not list is an orphan (a commit cut short)
and is removed at the next open for writing.

A reader pins what it reads: ``edits/pins/<host>-<pid>-<token>`` lists the segment files of the
log it opened. Whoever deletes segments (compaction, the orphan clean-up) spares those a live
reader's pin lists; the pin of a process that died is ignored and removed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from ..._files import write_file_atomic
from ...errors import EngramError
from ..core.manifest import json_digest
from .segment import SegmentFile

EDITS_DIR = "edits"
LOG_NAME = "log.json"
SEGMENTS_DIR = "segments"
PINS_DIR = "pins"
LOG_FORMAT = "engramctl-edits"
LOG_VERSION = 1


def edits_path(table_path) -> Path:
    return Path(table_path) / EDITS_DIR


def segments_path(table_path) -> Path:
    return edits_path(table_path) / SEGMENTS_DIR


def log_path(table_path) -> Path:
    return edits_path(table_path) / LOG_NAME


def segment_name(commit_id: str, layer_id: int) -> str:
    return f"{commit_id}-{layer_id}.seg"


def new_commit_id() -> str:
    """A fresh commit id: 12 random hex digits."""
    return secrets.token_hex(6)


def rows_state(base_state: str, head: str | None) -> str:
    """The checksum of a table's rows: its base's (:func:`~engramctl.table.core.manifest.
    table_state`) and the commit it reads (the head), if any."""
    if head is None:
        return base_state
    return json_digest({"base": base_state, "head": head})


def restate(runs: tuple[dict, ...], before: str, after: str) -> tuple[dict, ...]:
    """Run records after a compaction (same rows, new state): those whose ``state`` was
    ``before`` now say ``after``, so a checkpoint still matches the table it trained."""
    return tuple(r | {"state": after} if r.get("state") == before else r for r in runs)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Commit:
    """One commit: the segments it wrote (one per layer it touched) and what made it."""

    id: str
    parent: str | None  # the previous commit's id, None for the first
    time: str  # UTC, ISO 8601
    made_by: dict  # {"kind": "write" | "edit" | "train" | "compact" | ..., ...}
    message: str
    layers: dict[int, SegmentFile]

    @property
    def rows(self) -> int:
        return sum(seg.rows for seg in self.layers.values())

    @property
    def bytes(self) -> int:
        return sum(seg.size for seg in self.layers.values())

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "parent": self.parent,
            "time": self.time,
            "made_by": self.made_by,
            "message": self.message,
            "layers": {str(k): v.to_dict() for k, v in sorted(self.layers.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Commit:
        return cls(
            id=str(data["id"]),
            parent=data["parent"],
            time=str(data["time"]),
            made_by=dict(data.get("made_by") or {}),
            message=str(data.get("message") or ""),
            layers={int(k): SegmentFile.from_dict(v) for k, v in data["layers"].items()},
        )


@dataclass(frozen=True)
class EditLog:
    """The visible commits of a table, oldest first, and the events that rewrote the log."""

    commits: tuple[Commit, ...] = ()
    events: tuple[dict, ...] = ()
    exists: bool = False  # a log file was read (the table was ever edited)
    runs: tuple[dict, ...] = ()  # records of the training runs that wrote rows, oldest first

    @property
    def head(self) -> str | None:
        return self.commits[-1].id if self.commits else None

    @property
    def segment_names(self) -> set[str]:
        return {seg.name for c in self.commits for seg in c.layers.values()}

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.commits)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.commits)

    def index_of(self, commit_id: str) -> int:
        """Position of a commit (a unique prefix of its id is enough), or an error naming the
        known ones."""
        found = [i for i, c in enumerate(self.commits) if c.id.startswith(commit_id)]
        if len(found) != 1 or not commit_id:
            known = ", ".join(c.id for c in self.commits[-5:]) or "none: the table has no commits"
            what = "is ambiguous" if len(found) > 1 else "is not a commit of this table"
            raise EngramError(
                f"{commit_id!r} {what} (last commits: {known}); see engramctl history, or give "
                "--to base to drop every commit"
            )
        return found[0]

    def with_commit(self, commit: Commit) -> EditLog:
        return replace(self, commits=(*self.commits, commit))

    def to_dict(self) -> dict:
        body = {
            "format": LOG_FORMAT,
            "version": LOG_VERSION,
            "commits": [c.to_dict() for c in self.commits],
            "events": list(self.events),
        }
        if self.runs:
            body["runs"] = list(self.runs)
        return body | {"sha256": _digest(body)}

    def with_run(self, record: dict) -> EditLog:
        """The log with a run's record (replacing an earlier record of the same ``run_id``)."""
        earlier = tuple(r for r in self.runs if r.get("run_id") != record.get("run_id"))
        return replace(self, runs=(*earlier, dict(record)))


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_log(data: bytes, *, where: str) -> EditLog:
    """The log in ``data``, refusing a damaged or foreign one (named, with what to do)."""
    advice = "the table's commits cannot be read; restore edits/log.json from a backup"
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != LOG_FORMAT:
            raise ValueError("not an engramctl edit log")
        if not isinstance(doc.get("version"), int) or doc["version"] > LOG_VERSION:
            raise EngramError(
                f"{where} has edit log version {doc.get('version')}, newer than this engramctl "
                "reads; upgrade engramctl"
            )
        digest = doc.pop("sha256", None)
        if digest != _digest(doc):
            raise ValueError("its checksum does not match its content")
        commits = tuple(Commit.from_dict(c) for c in doc["commits"])
        events = tuple(dict(e) for e in doc.get("events") or ())
        runs = tuple(dict(r) for r in doc.get("runs") or ())
    except EngramError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EngramError(f"{where} is damaged ({exc}); {advice}") from None
    return EditLog(commits, events, exists=True, runs=runs)


def read_log(store) -> EditLog:
    """The edit log of a table (:class:`~engramctl.table.core.store.TableStore`); an empty log
    if the table was never edited."""
    key = f"{EDITS_DIR}/{LOG_NAME}"
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return EditLog()
    except OSError as exc:
        raise EngramError(f"cannot read {store.where(key)}: {exc.strerror or exc}") from None
    return parse_log(data, where=store.where(key))


def write_log(table_path, log: EditLog) -> None:
    """Make ``log`` the table's log: one atomic rename, fsynced (file and directory)."""
    path = log_path(table_path)
    write_file_atomic(path, json.dumps(log.to_dict(), indent=1).encode())
    with contextlib.suppress(OSError):  # the rename itself durable (not on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- pins
def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another machine's reader: trust its pin
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Pin:
    """A reader's pin file listing the segments of the log it opened (removed at close)."""

    def __init__(self, table_path):
        pins = edits_path(table_path) / PINS_DIR
        self.path = pins / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        self.held = False

    def hold(self, log: EditLog) -> bool:
        """Write (or rewrite) the pin; False where the table's directory is not writable (a
        read-only copy: nobody can compact it either)."""
        try:
            names = json.dumps(sorted(log.segment_names)).encode()
            write_file_atomic(self.path, names, fsync=False)
        except OSError:
            return False
        self.held = True
        return True

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.held = False


def live_pins(table_path, *, remove_dead: bool = False) -> dict[str, set[str]]:
    """``{pin file: segment names}`` of live readers; dead readers' pins are removed if asked."""
    pins: dict[str, set[str]] = {}
    folder = edits_path(table_path) / PINS_DIR
    try:
        entries = list(folder.iterdir())
    except OSError:
        return pins
    for entry in entries:
        parts = entry.name.rsplit(".", 1)[0].rsplit("-", 2)
        if entry.name.startswith(".") or len(parts) != 3 or not parts[1].isdigit():
            continue
        if not _alive(parts[0], int(parts[1])):
            if remove_dead:
                with contextlib.suppress(OSError):
                    entry.unlink()
            continue
        try:
            pins[entry.name] = set(json.loads(entry.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a pin being rewritten: read the next time
    return pins


def snapshot(store) -> tuple[EditLog, Pin | None]:
    """A reader's log and its pin: the log read, pinned, and read again until the pin holds the
    log read (a compaction between the read and the pin would have deleted its segments)."""
    edit_log = read_log(store)
    if not edit_log.exists or not store.is_local:
        return edit_log, None
    pin = Pin(store.location)
    for _ in range(100):
        if not pin.hold(edit_log):
            return edit_log, None  # a read-only directory: nobody compacts it under us
        again = read_log(store)
        if again == edit_log:
            return edit_log, pin
        edit_log = again
    pin.release()
    raise EngramError(f"{store.url}: its commits kept changing while it was opened; try again")


def remove_unlisted_segments(table_path, log: EditLog) -> list[str]:
    """Delete segment files that neither ``log`` nor a live reader's pin lists (orphans of a
    commit cut short, segments a revert or a compaction dropped); returns their names. Call it
    under the writer lock."""
    keep = set(log.segment_names)
    for names in live_pins(table_path, remove_dead=True).values():
        keep |= names
    removed = []
    folder = segments_path(table_path)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name not in keep:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry.name)
    return sorted(removed)


__all__ = [
    "Commit",
    "EditLog",
    "Pin",
    "snapshot",
    "read_log",
    "write_log",
    "parse_log",
    "live_pins",
    "remove_unlisted_segments",
    "new_commit_id",
    "segment_name",
    "edits_path",
    "segments_path",
    "log_path",
    "utc_now",
    "rows_state",
    "restate",
    "EDITS_DIR",
]
