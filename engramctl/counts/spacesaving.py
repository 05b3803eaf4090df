"""SpaceSaving summaries of rows: the dense specification and the table of occupied rows.

A row keeps its top-K continuations with counts and its total. Adding ``y`` to a row: if ``y``
holds a slot or a slot is free (slots fill in order), that slot counts one more; otherwise ``y``
replaces the smallest count (the first of ties) and inherits it, so a kept count over-counts by
at most the row's smallest count (SpaceSaving's error bound, <= total/K). A row's summary
depends only on the sequence of continuations it saw, in order.

- :func:`space_saving_reference` / :func:`space_saving_kernel`: the dense form (an array of
  every table row), the plain specification the table below is held to (tests);
- :class:`~.rowtable.RowTable` (:mod:`.rowtable`): the same summaries for the rows that occur
  only, in an open-addressing segment per column with homes monotone in the row id (memory
  grows with occupied rows, never with table rows), read out sorted by row id.
"""

from __future__ import annotations

import numpy as np

from .._numba import njit, prange

COUNT_MAX = 2**32 - 1  # a slot's count saturates here (totals are 64-bit)


def space_saving_reference(rows, targets, keep, tokens, counts, totals, occupied) -> None:
    """Plain-Python specification of :func:`space_saving_kernel` (one pair at a time)."""
    K = tokens.shape[1]
    for g in range(rows.shape[1]):
        for p in range(rows.shape[0]):
            if not keep[p]:
                continue
            r, y = rows[p, g], targets[p]
            occupied[g] += totals[r] == 0
            totals[r] += 1
            slot = None
            for s in range(K):
                if counts[r, s] == 0 or tokens[r, s] == y:
                    slot = s
                    break
            if slot is None:  # full and y absent: y replaces the smallest count (first of ties)
                slot = int(np.argmin(counts[r]))
                tokens[r, slot] = y  # and inherits its count, the SpaceSaving error bound
            elif counts[r, slot] == 0:
                tokens[r, slot] = y
            if counts[r, slot] < COUNT_MAX:
                counts[r, slot] += 1


@njit(cache=True, inline="always")
def _add(tokens, counts, totals, i, y):
    """Add continuation ``y`` to summary ``i`` (the SpaceSaving step)."""
    K = tokens.shape[1]
    totals[i] += 1
    slot = -1
    low = 0
    for s in range(K):
        c = counts[i, s]
        if c == 0 or tokens[i, s] == y:
            slot = s
            break
        if c < counts[i, low]:
            low = s
    if slot < 0:
        slot = low
        tokens[i, slot] = y
    elif counts[i, slot] == 0:
        tokens[i, slot] = y
    if counts[i, slot] < COUNT_MAX:
        counts[i, slot] += 1


@njit(cache=True, parallel=True)
def space_saving_kernel(rows, targets, keep, tokens, counts, totals, occupied):
    """Add ``targets[p]`` to row ``rows[p, g]`` for each kept pair p and column g (dense).

    rows (P, G) int64; targets (P,) int64; keep (P,) bool; tokens (R, K) int32, counts (R, K)
    uint32, totals (R,) uint64; occupied (G,) int64 += rows each column starts using. Columns
    own disjoint rows, so each thread takes whole columns and visits pairs in order: the
    result is the sequential one.
    """
    P, G = rows.shape
    for g in prange(G):
        for p in range(P):
            if not keep[p]:
                continue
            r = rows[p, g]
            if totals[r] == 0:
                occupied[g] += 1
            _add(tokens, counts, totals, r, targets[p])
