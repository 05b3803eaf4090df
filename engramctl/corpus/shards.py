"""Cut corpus files into shards that count to exactly the same n-grams as the whole files.

``hash-stats --scheduler`` counts each shard in its own task. A shard is a
:class:`~engramctl.corpus.files.CorpusFile` with a ``span``:

- uncompressed JSON Lines: byte ranges cut at line starts (a line is a document);
- uncompressed plain text with ``--doc-sep``: byte ranges cut after blank lines (at document
  starts, so long documents are tokenized in the same pieces as in one pass);
- Parquet: runs of whole row groups;
- 2-D ``.npy`` token arrays: runs of rows (a row is a document);
- 1-D ``.npy`` and flat token streams: token ranges anywhere; the task starts from the n-gram
  context of the tokens before its range (:func:`engramctl.corpus.readers.token_context`).

Compressed files and plain text without ``--doc-sep`` (one document per file) stay whole. Line
numbers (for warnings and errors) are counted here once, so a shard's messages name the same line
as a single pass would.
"""

from __future__ import annotations

import mmap
from dataclasses import replace
from itertools import pairwise

import numpy as np

from .files import CorpusFile, CorpusOptions, flat_dtype

DEFAULT_SHARD_BYTES = 64 << 20


def _proportional(f: CorpusFile, bounds: list[int], total: int) -> list[CorpusFile]:
    """Shards ``[bounds[i], bounds[i+1])`` of ``total`` units, sizes shared out of ``f.size``."""
    sizes = [f.size * b // max(total, 1) for b in bounds]
    return [
        replace(f, span=(a, b), size=sizes[i + 1] - sizes[i])
        for i, (a, b) in enumerate(pairwise(bounds))
    ]


def _next_cut(mm, target: int, blank_only: bool) -> int:
    """The first line start at or after ``target`` (after a blank line if ``blank_only``)."""
    newline = mm.find(b"\n", target - 1)
    if newline < 0:
        return -1
    start = newline + 1
    while blank_only:
        end = mm.find(b"\n", start)
        if end < 0:
            return -1
        blank = not mm[start : end + 1].strip()
        start = end + 1
        if blank:
            break
    return start


def _line_shards(f: CorpusFile, shard_bytes: int, blank_only: bool) -> list[CorpusFile]:
    if f.size <= shard_bytes:
        return [f]
    with open(f.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cuts = [0]
        while cuts[-1] + shard_bytes < f.size:
            cut = _next_cut(mm, cuts[-1] + shard_bytes, blank_only)
            if cut < 0 or cut >= f.size:
                break
            cuts.append(cut)
        cuts.append(f.size)
        data = np.frombuffer(mm, dtype=np.uint8)
        try:
            newlines = [int(np.count_nonzero(data[a:b] == 10)) for a, b in pairwise(cuts)]
        finally:
            del data  # release the buffer before the map closes
    first_lines = np.concatenate([[1], 1 + np.cumsum(newlines)]).tolist()
    return [
        replace(f, span=(a, b), size=b - a, first_line=int(first_lines[i]))
        for i, (a, b) in enumerate(pairwise(cuts))
    ]


def _parquet_shards(f: CorpusFile, shard_bytes: int) -> list[CorpusFile]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f.path).metadata
    except Exception:  # the reader names the problem in a clear error
        return [f]
    if meta.num_row_groups <= 1:
        return [f]
    sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    bounds, acc = [0], 0
    for g, size in enumerate(sizes):
        acc += size
        if acc >= shard_bytes and g + 1 < len(sizes):
            bounds.append(g + 1)
            acc = 0
    bounds.append(len(sizes))
    return _proportional(f, bounds, len(sizes))


def _token_shards(f: CorpusFile, options: CorpusOptions, shard_bytes: int) -> list[CorpusFile]:
    if f.path.suffix.lower() == ".npy":
        try:
            array = np.load(f.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return [f]  # the reader names the problem in a clear error
        if array.ndim not in (1, 2):
            return [f]
        units = array.shape[0]
        per_unit = array.dtype.itemsize * (array.shape[1] if array.ndim == 2 else 1)
    else:
        itemsize = np.dtype(flat_dtype(f, options)).itemsize
        if f.size % itemsize:
            return [f]
        units, per_unit = f.size // itemsize, itemsize
    step = max(1, shard_bytes // max(per_unit, 1))
    if units <= step:
        return [f]
    return _proportional(f, [*range(0, units, step), units], units)


def split_files(
    files: list[CorpusFile], options: CorpusOptions, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[CorpusFile]:
    """Every file cut into shards of about ``shard_bytes`` (in file order) where that is exact.

    >>> from pathlib import Path
    >>> f = CorpusFile(Path("a.txt"), "text", None, 10)
    >>> split_files([f], CorpusOptions(), 4) == [f]  # one document per file: never cut
    True
    """
    if shard_bytes < 1:
        raise ValueError("shard_bytes must be positive")
    shards: list[CorpusFile] = []
    for f in files:
        if f.compression or f.size <= shard_bytes:
            shards.append(f)
        elif f.format == "jsonl":
            shards.extend(_line_shards(f, shard_bytes, blank_only=False))
        elif f.format == "text" and options.doc_sep:
            shards.extend(_line_shards(f, shard_bytes, blank_only=True))
        elif f.format == "parquet":
            shards.extend(_parquet_shards(f, shard_bytes))
        elif f.format == "tokens":
            shards.extend(_token_shards(f, options, shard_bytes))
        else:
            shards.append(f)
    return shards


__all__ = ["DEFAULT_SHARD_BYTES", "split_files"]
