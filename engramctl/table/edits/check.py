"""Checking a table's commits (``engramctl verify``): each segment the log lists exists, has the
size the log records and (``deep``) its CRC-32; segments no commit lists are reported as
leftovers (removed at the next open for writing)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import EngramError
from .journal import read_journal
from .log import EDITS_DIR, SEGMENTS_DIR, live_pins, read_log
from .segment import Segment


@dataclass
class CommitCheck:
    """What :func:`check_commits` found."""

    commits: int = 0
    segments_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_commits(store, *, deep: bool, progress=None) -> CommitCheck:
    """Check the log and every segment it lists (``deep``: re-read and checksum them)."""
    report = CommitCheck()
    try:
        edit_log = read_log(store)
    except EngramError as exc:
        report.problems.append(str(exc))
        return report
    report.commits = len(edit_log.commits)
    try:
        journal = read_journal(store)
    except EngramError as exc:
        report.problems.append(str(exc))
        journal = None
    if journal is not None:
        report.problems.append(
            f"a compaction into the base of {len(journal.merged)} commits was cut short (its "
            f"chunks may disagree with the manifest until it is finished); run engramctl compact "
            f"--into-base {store.url} (or open the table for writing) to finish it"
        )
    total = edit_log.bytes if deep else 0
    for position, commit in enumerate(edit_log.commits):
        for _layer_id, record in sorted(commit.layers.items()):
            key = f"{EDITS_DIR}/{SEGMENTS_DIR}/{record.name}"
            try:
                if store.supports_mmap:
                    source = store.location_of(key)
                else:
                    source = store.read_bytes(key)
                segment = Segment(source, record, commit=commit.id, check_crc=deep)
            except FileNotFoundError:
                report.problems.append(
                    f"segment {store.where(key)} of commit {commit.id} is missing"
                )
                continue
            except EngramError as exc:
                earlier = edit_log.commits[position - 1].id if position else "base"
                report.problems.append(f"{exc} (revert --to {earlier} drops it)")
                continue
            if deep and (segment.ids.size > 1 and not (segment.ids[1:] > segment.ids[:-1]).all()):
                report.problems.append(f"{segment.where} is damaged: its row ids are not sorted")
            segment.close()
            report.segments_checked += 1
            if deep:
                report.bytes_checked += record.size
                if progress:
                    progress(report.bytes_checked, total)
    if store.supports_mmap:
        folder = store.location_of(f"{EDITS_DIR}/{SEGMENTS_DIR}")
        listed = edit_log.segment_names
        for names in live_pins(store.location).values():
            listed |= names
        try:
            extra = sorted(p.name for p in folder.iterdir() if p.name not in listed)
        except OSError:
            extra = []
        if extra:
            report.warnings.append(
                f"{len(extra)} segment files no commit lists (a commit cut short, or dropped by "
                f"revert or compaction; first: {extra[0]}): removed at the next open for writing"
            )
    return report


__all__ = ["CommitCheck", "check_commits"]
