"""Finding layout rows among a store's sorted row ids, through a radix directory in bounded RAM.

A format-2 count memory stores its occupied rows only, ``row_ids`` ascending, the all-zero
sentinel row last; each query row must be located among them (``P x G`` of them per batch).
A binary search over the whole store is ~20 scattered reads a row. :class:`RowLocator` keeps a
directory built once, in one sequential pass over the ids: ``starts[b]`` is the first position
whose id is ``>= b << shift``, so a lookup reads two directory entries and then searches one
bucket of the ids.

The directory's RAM is capped (``max_bytes``, :data:`DEFAULT_MAX_BYTES` = 64 MiB): its entries
are uint32 while the store has fewer than 2**32 rows (int64 beyond), and its bucket width is the
finest power of two that gives about :data:`IDS_PER_BUCKET` ids a bucket *and* fits the cap.
A small store (the sample's 5.2M rows) gets the fine directory, 20 MiB; a larger one gets
coarser buckets instead of more RAM: 48 MiB and 16 ids a bucket at 201M rows, 46 MiB and ~64
ids (512 B) a bucket at a fully occupied V4.1 memory (768M rows), where two ids a bucket would
take 3 GB (int64, as before the cap) or 1.5 GB (uint32).

The trade is RAM against reads per lookup. A coarse bucket of a few hundred bytes lies within
one or two pages of the memory-mapped ids, so it costs cache lines, not page faults. Lookups in
a coarse directory (more than :data:`COARSE_ABOVE` ids a bucket) go in blocks of
:data:`LOOKUP_BLOCK` rows, three passes: the directory entries of every row, then every row's
first id read at a guess interpolated in its bucket (the ids are hashes, near-uniform within a
column; level 1's are dense, where the guess is exact), then each search galloping from its
guess to a small bracket it binary-searches. The first two passes' reads are independent, so the
memory serves many at once. A fine directory is searched row by row (binary, a bucket of one or
two ids; the passes cost more than they save there).

Measured (``benchmarks/bench_locate.py``, one thread, cold caches, a batch of 67,584 rows, this
shared 2-core machine, five runs): on the sample's memory in RAM the capped directory (20 MiB)
looks up 1.17-1.27x as fast as the directory before the cap (int64, 40 MiB); on 201M ids
memory-mapped (1.5 GB) its 48 MiB look up stored rows at 0.96-1.00x the speed of that
directory's 1,537 MiB, and uniform random rows (half absent, which that directory often finds
in an empty bucket without reading the ids) at 0.77-0.82x; row-by-row binary search in the same
coarse buckets was 0.83-0.86x and 0.68-0.73x. A 128 MiB cap (8 ids a bucket there) measured
1.03x / 0.85x, an 8 MiB one (128 ids) 0.83x / 0.71x. The default builds in 0.3 s against 5-6 s.

Building reads the ids once in order, in blocks; a read-only memory map (what
:func:`~engramctl.counts.store.open_counts` gives) lets each block's pages go once read
(``MADV_DONTNEED``: the page cache keeps them), so the pass adds to the process's RSS neither
the ids' pages nor more than a block of them.

:func:`locate_reference` (``np.searchsorted``) is the specification it is held to (tests).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from .._numba import njit, prange

IDS_PER_BUCKET = 2  # the finest directory's mean bucket size
DEFAULT_MAX_BYTES = 64 << 20  # the directory's RAM cap
BINARY_BELOW = 8  # buckets of at most this many ids: the first guess is the middle
LOOKUP_BLOCK = 1024  # rows looked up a pass at a time (a coarse directory)
COARSE_ABOVE = 4.0  # mean ids a bucket above which lookups go in passes (_locate_coarse)
BLOCK_IDS = 1 << 20  # ids read per block while building (8 MiB)


def locate_reference(row_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """numpy specification of :class:`RowLocator`: indices of ``rows`` in sorted ``row_ids``
    (the sentinel last), absent rows mapped to the last."""
    last = row_ids.shape[0] - 1
    idx = np.minimum(np.searchsorted(row_ids, rows), last)
    idx[np.asarray(row_ids[idx]) != rows] = last
    return idx


def directory_shift(n: int, top: int, itemsize: int, max_bytes: int) -> int:
    """Bits of a row id below its bucket: the finest power-of-two bucket width giving about
    :data:`IDS_PER_BUCKET` of ``n`` ids below ``top`` a bucket whose ``(top >> shift) + 2``
    entries of ``itemsize`` bytes fit ``max_bytes``."""
    shift = max(0, (top // max(1, n // IDS_PER_BUCKET)).bit_length() - 1)
    while ((top >> shift) + 2) * itemsize > max_bytes:
        shift += 1
    return shift


@njit(cache=True)
def _directory_block(ids, first, prev, shift, starts, b):
    """Fill ``starts[b:]`` from one block of the sorted ids (position ``first`` on): each bucket
    up to an id's own gets that id's position. Returns the next bucket to fill, or -1 when the
    ids are negative or not ascending (``prev``: the id before the block)."""
    last = starts.shape[0] - 1
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < prev:
            return -1
        prev = r
        top = r >> shift
        if top >= last:  # above the last id: not ascending
            return -1
        while b <= top:
            starts[b] = first + i
            b += 1
    return b


@njit(cache=True, inline="always")
def _first_at_least(ids, lo, hi, r):
    """The first position in ``[lo, hi)`` of sorted ``ids`` whose id is ``>= r``, else ``hi``."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if ids[mid] < r:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, parallel=True)
def _locate_fine(ids, starts, shift, absent, rows, out):
    """:func:`_locate_coarse` for a directory of a few ids a bucket: a binary search in the
    bucket, row by row (the three passes cost more than they save there)."""
    buckets = starts.shape[0] - 1
    for j in prange(rows.shape[0]):
        r = rows[j]
        out[j] = absent
        if r < 0:
            continue
        b = r >> shift
        if b >= buckets:
            continue
        lo, hi = np.int64(starts[b]), np.int64(starts[b + 1])
        end = hi
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and ids[lo] == r:
            out[j] = lo


@njit(cache=True, parallel=True)
def _locate_coarse(ids, starts, shift, width, absent, rows, out):
    """``out[j]``: the position of ``rows[j]`` in ``ids`` through the directory, else ``absent``.

    ``width`` is ``2.0 ** shift`` (as a float: a bucket can be 2**63 wide). In blocks of
    :data:`LOOKUP_BLOCK` rows, three passes: every row's two directory entries, then every row's
    first guess in ``ids``, then each search from its guess. The first two passes' loads do not
    depend on one another, so the memory serves many at once; the third finds its lines cached.
    """
    n = rows.shape[0]
    buckets = starts.shape[0] - 1
    for block in prange((n + LOOKUP_BLOCK - 1) // LOOKUP_BLOCK):
        first = block * LOOKUP_BLOCK
        m = min(n, first + LOOKUP_BLOCK) - first
        los = np.empty(m, np.int64)
        ends = np.empty(m, np.int64)
        guesses = np.empty(m, np.int64)
        seen = np.empty(m, np.int64)
        for i in range(m):  # the bucket of each row (an empty one: absent)
            r = rows[first + i]
            los[i] = 0
            ends[i] = 0
            if r >= 0:
                b = r >> shift
                if b < buckets:
                    los[i] = np.int64(starts[b])
                    ends[i] = np.int64(starts[b + 1])
        for i in range(m):  # a first guess: the middle, or interpolated in a larger bucket
            lo, end = los[i], ends[i]
            if end - lo <= BINARY_BELOW:
                g = (lo + end) >> 1
            else:
                r = rows[first + i]
                g = lo + np.int64((r - ((r >> shift) << shift)) / width * (end - lo))
                if g >= end:
                    g = end - 1
            guesses[i] = g
            seen[i] = ids[g] if lo < end else 0
        for i in range(m):  # gallop from the guess to a bracket, binary-search it
            r = rows[first + i]
            lo, end, g = los[i], ends[i], guesses[i]
            out[first + i] = absent
            if lo >= end:
                continue
            if seen[i] < r:  # the first id >= r is after g
                a, step = g, np.int64(1)
                c = a + step
                while c < end and ids[c] < r:
                    a = c
                    step <<= 1
                    c = a + step
                p = _first_at_least(ids, a + 1, min(c, end), r)
            else:  # it is g or before
                c, step = g, np.int64(1)
                a = c - step
                while a >= lo and ids[a] >= r:
                    c = a
                    step <<= 1
                    a = c - step
                p = _first_at_least(ids, max(a, lo - 1) + 1, c, r)
            if p < end and ids[p] == r:
                out[first + i] = p


def _mapping_of(ids: np.ndarray):
    """The :class:`mmap.mmap` under an array of a read-only :class:`numpy.memmap` (mode "r")
    and the array's byte offset in it; None otherwise (an array in RAM; a writable or
    copy-on-write mapping, whose changed pages ``MADV_DONTNEED`` would throw away)."""
    base, modes = ids, set()
    while base is not None and not isinstance(base, mmap.mmap):
        if isinstance(base, np.memmap):
            modes.add(base.mode)
        base = getattr(base, "base", None)
    if base is None or modes != {"r"} or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    start = np.frombuffer(base, dtype=np.uint8).ctypes.data
    return base, ids.ctypes.data - start


def _blocks(ids: np.ndarray, n: int, block: int):
    """The first ``n`` ids in order, ``block`` at a time. A memory map's pages are let go as
    each block is done (``MADV_DONTNEED``: they stay in the page cache, this process's RSS does
    not keep them), so the pass holds at most a block of the ids."""
    mapping = _mapping_of(ids)
    page = mmap.PAGESIZE
    for first in range(0, n, block):
        yield first, ids[first : min(n, first + block)]
        if mapping is not None:  # the whole pages of the block just read
            mm, offset = mapping
            lo = (offset + first * 8) // page * page
            hi = (offset + min(n, first + block) * 8) // page * page
            if hi > lo:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


@dataclass(frozen=True)
class RowLocator:
    """Positions of layout rows in a store's sorted ``row_ids`` (the sentinel last).

    Attributes
    ----------
    row_ids : numpy.ndarray
        The store's row ids (int64, ascending, the sentinel row last; memory-mapped or in RAM).
    starts : numpy.ndarray
        The directory (uint32, or int64 from 2**32 rows): ``starts[b]`` is the first position
        whose id is ``>= b << shift``.
    shift : int
        Bits of a row id below its bucket.
    """

    row_ids: np.ndarray
    starts: np.ndarray
    shift: int

    @classmethod
    def build(
        cls, row_ids, max_bytes: int = DEFAULT_MAX_BYTES, block: int = BLOCK_IDS
    ) -> RowLocator:
        """The directory of ``row_ids`` in one pass, in at most ``max_bytes`` of RAM.

        Parameters
        ----------
        row_ids : array_like
            Sorted non-negative int64 ids, the sentinel (2**63-1) last; a memory map is read
            in blocks, each block's pages let go once read: never whole.
        max_bytes : int
            The directory's RAM cap (at least 16 bytes: two int64 entries); coarser buckets
            beyond it, never more RAM.
        block : int
            Ids read at a time while building.

        Raises
        ------
        ValueError
            ``row_ids`` is not 1-D, lacks its sentinel, or is not ascending and non-negative;
            ``max_bytes`` below 16.
        """
        ids = np.asarray(row_ids)
        if ids.dtype != np.int64 or not ids.flags.c_contiguous:  # (a store's are already)
            ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.shape[0] < 1:
            raise ValueError("row_ids must be a 1-D array ending with the sentinel row")
        if max_bytes < 16:
            raise ValueError(f"max_bytes must be at least 16 (two int64 entries), got {max_bytes}")
        n = ids.shape[0] - 1  # the sentinel is never searched: an absent row maps to it
        if n and int(ids[0]) < 0:
            raise ValueError("row_ids must be non-negative and ascending (a damaged store?)")
        top = int(ids[n - 1]) + 1 if n else 1
        dtype = np.dtype(np.uint32) if n < 2**32 else np.dtype(np.int64)
        shift = directory_shift(n, top, dtype.itemsize, max_bytes)
        starts = np.empty((top >> shift) + 2, dtype=dtype)
        b, prev = 0, 0
        for first, part in _blocks(ids, n, max(1, int(block))):
            b = _directory_block(part, np.int64(first), np.int64(prev), np.int64(shift), starts, b)
            if b < 0:
                raise ValueError("row_ids must be non-negative and ascending (a damaged store?)")
            prev = int(part[-1])
        starts[b:] = n
        return cls(ids, starts, shift)

    @property
    def nbytes(self) -> int:
        """RAM of the directory (the ids aside)."""
        return int(self.starts.nbytes)

    @property
    def ids_per_bucket(self) -> float:
        """Mean stored ids a bucket: what a lookup searches after the directory."""
        return (self.row_ids.shape[0] - 1) / max(1, self.starts.shape[0] - 1)

    def __call__(self, rows) -> np.ndarray:
        """Indices into the store of ``rows`` (any shape); an absent row maps to the last
        (all-zero) row. Equal to :func:`locate_reference`."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = np.ascontiguousarray(rows).reshape(-1)
        out = np.empty(flat.shape[0], np.int64)
        absent = np.int64(self.row_ids.shape[0] - 1)
        shift = np.int64(self.shift)
        if self.ids_per_bucket <= COARSE_ABOVE:
            _locate_fine(self.row_ids, self.starts, shift, absent, flat, out)
        else:
            width = float(2.0**self.shift)
            _locate_coarse(self.row_ids, self.starts, shift, width, absent, flat, out)
        return out.reshape(rows.shape)
