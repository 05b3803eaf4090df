"""Belady's optimum (MIN): the most hits any cache of ``C`` rows can get on a trace.

On a miss with a full cache, MIN evicts the cached row whose next use is farthest in the future;
no policy that must hold the row it reads gets more hits. The cache starts, after the warm-up,
holding the ``C`` warm-up rows used soonest afterwards (the best state any policy could have built
from the warm-up), so the figure bounds every policy scored on the same accesses.

Unlike LRU, MIN has no cheap all-sizes pass here: each size is one simulation, O(n log C) with an
indexed max-heap of next-use times, so it takes about as long as the LRU pass per size asked.
"""

from __future__ import annotations

import itertools

import numpy as np

from .._numba import njit
from ..errors import EngramError


@njit(cache=True)
def next_use_kernel(ids, n_distinct, out):
    """``out[i]``: position of the next access to ``ids[i]``, or ``len(ids)`` if none."""
    n = ids.shape[0]
    upcoming = np.full(n_distinct, n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        out[i] = upcoming[ids[i]]
        upcoming[ids[i]] = i


@njit(cache=True)
def _place(keys, rows, where, at, key, row):
    keys[at] = key
    rows[at] = row
    where[row] = at


@njit(cache=True)
def _sift_up(keys, rows, where, at, key, row):
    """Put (key, row) at ``at`` and move it towards the root of the max-heap."""
    while at > 0:
        parent = (at - 1) >> 1
        if keys[parent] >= key:
            break
        _place(keys, rows, where, at, keys[parent], rows[parent])
        at = parent
    _place(keys, rows, where, at, key, row)


@njit(cache=True)
def _sift_down(keys, rows, where, at, size, key, row):
    """Put (key, row) at ``at`` and move it towards the leaves of the max-heap."""
    while True:
        child = 2 * at + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        _place(keys, rows, where, at, keys[child], rows[child])
        at = child
    _place(keys, rows, where, at, key, row)


@njit(cache=True)
def opt_hits_kernel(ids, next_use, n_distinct, count_from, size):
    """Hits of MIN with ``size`` rows on ``ids[count_from:]``, warm-started from the warm-up.

    The cache is a max-heap of (next use, row), keys stored beside the rows so that sifting
    reads consecutive memory; ``where`` finds a cached row's heap slot.
    """
    n = ids.shape[0]
    where = np.full(n_distinct, -1, dtype=np.int64)  # heap slot of each cached row, -1 if absent
    keys = np.empty(size, dtype=np.int64)
    rows = np.empty(size, dtype=np.int64)
    filled = 0
    if count_from > 0:
        # Warm start: each warm-up row's first use at or after count_from, soonest first.
        upcoming = np.full(n_distinct, n, dtype=np.int64)
        for i in range(count_from):
            upcoming[ids[i]] = next_use[i]
        candidates = np.flatnonzero(upcoming < n)
        order = np.argsort(upcoming[candidates], kind="mergesort")
        for j in range(min(size, candidates.shape[0])):
            row = candidates[order[j]]
            filled += 1
            _sift_up(keys, rows, where, filled - 1, upcoming[row], row)
    hits = 0
    for i in range(count_from, n):
        row = ids[i]
        key = next_use[i]
        at = where[row]
        if at >= 0:
            hits += 1
            _sift_up(keys, rows, where, at, key, row)  # its next use only moves later
        elif filled < size:
            filled += 1
            _sift_up(keys, rows, where, filled - 1, key, row)
        else:
            where[rows[0]] = -1  # evict the row used farthest ahead
            _sift_down(keys, rows, where, 0, filled, key, row)
    return hits


def next_use(ids: np.ndarray, n_distinct: int) -> np.ndarray:
    """Position of each access's next access to the same row (``len(ids)``: never).

    >>> next_use(np.array([0, 1, 0]), 2).tolist()
    [2, 3, 3]
    """
    ids = np.ascontiguousarray(ids)
    out = np.empty(len(ids), dtype=np.int64)
    next_use_kernel(ids, int(n_distinct), out)
    return out


def opt_hits(ids: np.ndarray, n_distinct: int, sizes, *, count_from: int = 0) -> np.ndarray:
    """MIN's hits on ``ids[count_from:]`` for each cache size (one simulation per size).

    >>> opt_hits(np.array([0, 1, 2, 0, 1]), 3, [1, 2]).tolist()
    [0, 1]
    """
    ids = np.ascontiguousarray(ids)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n_distinct):
        raise EngramError(f"trace ids must lie in [0, {n_distinct})")
    upcoming = next_use(ids, n_distinct)
    out = []
    for size in sizes:
        if int(size) < 1:
            raise EngramError(f"cache sizes must be at least 1, got {size}")
        capped = min(int(size), max(1, n_distinct))
        out.append(opt_hits_kernel(ids, upcoming, int(n_distinct), int(count_from), capped))
    return np.asarray(out, dtype=np.int64)


def opt_hits_reference(ids, size: int, *, count_from: int = 0) -> int:
    """Brute force over every eviction choice and every warm start (tiny traces only)."""
    ids = [int(r) for r in ids]
    warm = sorted(set(ids[:count_from]))
    memo: dict = {}

    def best(i: int, cache: frozenset) -> int:
        if i == len(ids):
            return 0
        if (i, cache) in memo:
            return memo[(i, cache)]
        row = ids[i]
        if row in cache:
            result = 1 + best(i + 1, cache)
        elif len(cache) < size:
            result = best(i + 1, cache | {row})
        else:
            result = max(best(i + 1, (cache - {victim}) | {row}) for victim in cache)
        memo[(i, cache)] = result
        return result

    starts = [frozenset(c) for c in itertools.combinations(warm, min(size, len(warm)))]
    return max(best(count_from, start) for start in starts or [frozenset()])
