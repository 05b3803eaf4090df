"""LRU hit rates of every cache size from one pass over a trace (Mattson stack distances).

An access's *stack distance* is the number of distinct other rows used since that row's last use;
an LRU cache of ``C`` rows hits exactly the accesses whose distance is below ``C`` (the inclusion
property). One pass over the trace computes every distance with a Fenwick tree over trace
positions that marks the stale ones (uses followed by a later use of the same row): the distance
of an access is the number of positions since the row's previous use less the stale ones among
them, O(log n) per access. A histogram of distances then answers any number of sizes at once.

Two curves share the machinery:

- ``lru``: textbook LRU over the trace, access by access (a miss may evict a row that a later
  access of the same batch needs). Checked against an ``OrderedDict`` simulation
  (:func:`lru_hits_reference`).
- ``pager``: what :class:`engramctl.model.serve.paging.RowPager` does, by the one policy of
  :mod:`engramctl.rowcache.policy` (its batches in flight from the same ``PAGER``). It looks at a
  batch's rows all at once: the rows already cached are hits (never evicted by that batch's
  misses), and misses evict the least recently used rows, by (last batch, row id). Its cache
  therefore holds the ``C`` rows of highest (last batch, row id), so a row hits when fewer than
  ``C`` rows outrank it at the *start* of its batch: the same distances, taken before the batch
  updates the tree. The pager also refuses a cache that cannot hold the rows of the batches in
  flight; the smallest size it accepts comes out of the same pass. Checked against
  :func:`pager_hits_reference`.

Memory here: the trace's dense ids, a Fenwick tree over trace positions and a last-use position
per distinct row: O(accesses + distinct rows), never O(table rows). The plan feeds the same
kernels' arithmetic batch by batch over a compacted window instead (:mod:`.stream`): O(distinct
rows); these whole-trace functions are its oracle in the tests.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .._numba import njit
from ..errors import EngramError
from ..rowcache.policy import PAGER, PagerConfig


@njit(cache=True)
def popcount(x):
    """Set bits of a uint64 (SWAR; LLVM turns it into one instruction where there is one)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True)
def new_marks(n):
    """Position marks: a bit per position in 64-bit words, and a Fenwick tree of per-word counts
    (n/64 nodes: small enough to stay in cache, where a tree over positions would not)."""
    words = (n >> 6) + 1
    return np.zeros(words, dtype=np.uint64), np.zeros(words + 1, dtype=np.int32)


@njit(cache=True)
def mark(bits, tree, position):
    word = position >> 6
    bits[word] |= np.uint64(1) << np.uint64(position & 63)
    i = word + 1
    while i < tree.shape[0]:
        tree[i] += 1
        i += i & (-i)


@njit(cache=True)
def marked_through(bits, tree, position):
    """Marks at positions 0..position (inclusive)."""
    word = position >> 6
    below = (np.uint64(2) << np.uint64(position & 63)) - np.uint64(1)  # wraps to all ones at 63
    total = np.int64(popcount(bits[word] & below))
    i = word
    while i > 0:
        total += tree[i]
        i -= i & (-i)
    return total


@njit(cache=True)
def lru_histogram_kernel(ids, n_distinct, count_from, hist):
    """Stack distances of ``ids[count_from:]`` counted into ``hist`` (cold misses at
    ``hist[n_distinct]``); accesses before ``count_from`` only warm the stack.

    The tree marks *stale* positions (a row's earlier uses): the distinct rows used after
    position ``p`` are the positions after it, less the stale ones. One query and one update per
    access, both starting at ``p`` (one cache line for the two).
    """
    n = ids.shape[0]
    bits, tree = new_marks(n)
    last = np.full(n_distinct, -1, dtype=np.int64)
    stale = 0
    for i in range(n):
        r = ids[i]
        p = last[r]
        if p < 0:
            distance = n_distinct
        else:
            distance = (i - p - 1) - (stale - marked_through(bits, tree, p))
            mark(bits, tree, p)
            stale += 1
        last[r] = i
        if i >= count_from:
            hist[distance] += 1


@njit(cache=True)
def pager_histogram_kernel(ids, bounds, n_distinct, count_from_batch, in_flight, hist):
    """Batch-start ranks of the accesses of batches ``count_from_batch..`` counted into ``hist``;
    returns the smallest cache the pager accepts (rows of in-flight batches stay)."""
    n = ids.shape[0]
    bits, tree = new_marks(n)  # stale positions, as in lru_histogram_kernel
    last = np.full(n_distinct, -1, dtype=np.int64)
    stale = 0
    need = 1
    for k in range(bounds.shape[0] - 1):
        start, stop = bounds[k], bounds[k + 1]
        deepest = -1  # the largest rank in this batch: a cache of that size or less misses
        for i in range(start, stop):
            p = last[ids[i]]
            if p < 0:
                distance = n_distinct
            else:  # rows whose last use, as the batch starts, is after p
                distance = (start - p - 1) - (stale - marked_through(bits, tree, p))
            deepest = max(deepest, distance)
            if k >= count_from_batch:
                hist[distance] += 1
        for i in range(start, stop):
            p = last[ids[i]]
            if p >= 0:
                mark(bits, tree, p)
                stale += 1
            last[ids[i]] = i
        first = bounds[max(0, k - in_flight)]  # rows of this batch and those in flight
        before = marked_through(bits, tree, first - 1) if first > 0 else 0
        window = (stop - first) - (stale - before)
        # The pager fails at size C when the batch misses (C <= deepest) and the rows it may not
        # evict (this batch's and the in-flight batches') do not fit (C < window).
        need = max(need, min(window - 1, deepest) + 1)
    return need


def _dense(ids: np.ndarray, n_distinct: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise EngramError(f"a trace must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n_distinct):
        raise EngramError(f"trace ids must lie in [0, {n_distinct})")
    return ids


def lru_histogram(ids: np.ndarray, n_distinct: int, *, count_from: int = 0) -> np.ndarray:
    """Histogram of LRU stack distances, ``[n_distinct + 1]`` int64 (last bin: cold misses).

    ``ids`` are dense row ids in ``[0, n_distinct)``; accesses before ``count_from`` warm the
    cache without being counted. An LRU cache of ``C`` rows hits ``hist[:C].sum()`` accesses
    (:func:`hits_at`).

    >>> lru_histogram(np.array([0, 1, 0, 2, 1]), 3).tolist()
    [0, 1, 1, 3]
    """
    ids = _dense(ids, n_distinct)
    hist = np.zeros(n_distinct + 1, dtype=np.int64)
    lru_histogram_kernel(ids, n_distinct, int(count_from), hist)
    return hist


def pager_histogram(
    ids: np.ndarray,
    bounds: np.ndarray,
    n_distinct: int,
    *,
    count_from_batch: int = 0,
    config: PagerConfig = PAGER,
) -> tuple[np.ndarray, int]:
    """The pager's histogram of batch-start ranks and the smallest cache it accepts.

    ``bounds[k]:bounds[k+1]`` are batch ``k``'s accesses (its distinct rows, ascending row id);
    ``config``: the pager's configuration (its batches in flight). A pager cache of
    ``C >= min_rows`` rows hits ``hist[:C].sum()`` accesses.

    >>> hist, need = pager_histogram(np.array([0, 1, 0, 2, 1]), np.array([0, 2, 4, 5]), 3)
    >>> hist.tolist(), need
    ([0, 1, 1, 3], 3)
    """
    ids = _dense(ids, n_distinct)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if bounds.ndim != 1 or len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != len(ids):
        raise EngramError("batch bounds must run from 0 to the trace length")
    if np.any(np.diff(bounds) < 0):
        raise EngramError("batch bounds must not decrease")
    hist = np.zeros(n_distinct + 1, dtype=np.int64)
    need = pager_histogram_kernel(
        ids, bounds, n_distinct, int(count_from_batch), config.in_flight, hist
    )
    return hist, int(need)


def cumulative_hits(hist: np.ndarray) -> np.ndarray:
    """``out[C]``: hits of a cache of ``C`` rows, for ``C`` in ``0..n_distinct``.

    >>> cumulative_hits(np.array([0, 1, 1, 3])).tolist()
    [0, 0, 1, 2]
    """
    out = np.zeros(len(hist), dtype=np.int64)
    np.cumsum(hist[:-1], out=out[1:])
    return out


def hits_at(cumulative: np.ndarray, sizes) -> np.ndarray:
    """Hits of a cache of each size, from :func:`cumulative_hits` (O(1) per size).

    >>> hits_at(cumulative_hits(np.array([0, 1, 1, 3])), [1, 2, 3, 99]).tolist()
    [0, 1, 2, 2]
    """
    sizes = np.minimum(np.asarray(sizes, dtype=np.int64), len(cumulative) - 1)
    return cumulative[sizes]


# ------------------------------------------------------------------------- references
def lru_hits_reference(ids, size: int, *, count_from: int = 0) -> int:
    """Hits of a plain ``OrderedDict`` LRU cache of ``size`` rows (the specification)."""
    cache: OrderedDict = OrderedDict()
    hits = 0
    for i, row in enumerate(ids):
        row = int(row)
        if row in cache:
            cache.move_to_end(row)
            hits += i >= count_from
        else:
            cache[row] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits


def pager_hits_reference(
    ids, bounds, size: int, *, count_from_batch: int = 0, config: PagerConfig = PAGER
) -> int | None:
    """Hits of the pager's policy simulated batch by batch (``None``: the pager refuses ``size``).

    Mirrors :class:`engramctl.rowcache.policy.LruSlots` (the pager's policy): a batch's cached
    rows are hits and are stamped first; misses take never-used slots while there are enough,
    else evict the rows of lowest (stamp, row id) among those not used by this batch or the
    ``config.in_flight`` before it.
    """
    stamp: dict = {}  # cached row -> last batch
    filled = 0
    hits = 0
    for k in range(len(bounds) - 1):
        rows = [int(r) for r in ids[bounds[k] : bounds[k + 1]]]
        missing = [r for r in rows if r not in stamp]
        if k >= count_from_batch:
            hits += len(rows) - len(missing)
        for r in rows:
            if r in stamp:
                stamp[r] = k
        if missing and len(missing) <= size - filled:
            filled += len(missing)
        elif missing:
            empty = size - len(stamp)
            old = sorted((s, r) for r, s in stamp.items() if s < k - config.in_flight)
            if empty + len(old) < len(missing):
                return None
            for _, r in old[: max(0, len(missing) - empty)]:
                del stamp[r]
            filled = size
        for r in missing:
            stamp[r] = k
    return hits
