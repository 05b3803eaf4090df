"""Expanding corpus globs without following symlink loops: each real file once.

Python's ``glob.glob(..., recursive=True)`` follows directory symlinks under ``**``: a link back
to an ancestor makes it list the same files dozens of times (until the path is too long), and two
such links make the expansion exponential. :func:`expand_glob` walks the tree itself, entering
each real directory once (by device and inode), and matches the rest of the pattern segment by
segment with glob's rules (``*`` stays within a segment and skips hidden names, ``**`` spans any
number of directories). :func:`unique_files` drops a file seen under another name (a symlink).
"""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path


def _segment_matches(name: str, pattern: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False  # glob's rule: wildcards do not match hidden names
    return fnmatch.fnmatchcase(name, pattern)


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether the path segments ``parts`` match the pattern segments (``**`` spans any)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(
            _matches(parts[i:], pattern[1:])
            for i in range(len(parts) + 1)
            if not any(p.startswith(".") for p in parts[:i])
        )
    return (
        bool(parts) and _segment_matches(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])
    )


def expand_glob(pattern: str) -> list[Path]:
    """Files and directories matching ``pattern``, sorted; ``**`` never loops on symlinks."""
    if "**" not in pattern:
        return sorted(Path(m) for m in glob.glob(pattern))  # no recursion: no loops
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:first]) if first else Path(".")
    rest = parts[first:]
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # a directory met again through a link
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames + dirnames):
            if _matches((*rel, name), rest):
                found.append(Path(dirpath, name))
    return sorted(found)


def unique_files(paths) -> list[Path]:
    """``paths`` without a file already listed under another name (first one kept)."""
    out, seen = [], set()
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out
