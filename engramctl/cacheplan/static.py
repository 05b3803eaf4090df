"""A static cache: the rows with the most lookups in the warm-up batches, fixed thereafter.

Lookups count every (position, head) before de-duplication, so a row a batch reads at 40
positions counts 40. Ties go to the lower row id. The cache of ``C`` rows is the first ``C`` of
that ranking; it is scored on the accesses of the batches after the warm-up, which it never saw,
so the figure is honest. Every size comes from one ranking: an access hits a cache of ``C`` rows
exactly when its row's rank is below ``C``.
"""

from __future__ import annotations

import numpy as np

from ..errors import EngramError


def static_ranks(rows: np.ndarray, lookups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ranked by lookups (descending), ties to the lower row id: ``(ranked_rows, lookups)``.

    ``rows`` may repeat (counts from several batches); their lookups are summed.

    >>> static_ranks(np.array([7, 3, 7, 5]), np.array([1, 2, 1, 2]))[0].tolist()
    [3, 5, 7]
    """
    rows = np.asarray(rows, dtype=np.int64)
    lookups = np.asarray(lookups, dtype=np.int64)
    if rows.shape != lookups.shape:
        raise EngramError("rows and lookups must have the same shape")
    unique, inverse = np.unique(rows, return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=lookups.ravel(), minlength=len(unique))
    totals = totals.astype(np.int64)
    order = np.lexsort((unique, -totals))  # most lookups first, then the lower row id
    return unique[order], totals[order]


def access_ranks(ranked_rows: np.ndarray, accesses: np.ndarray) -> np.ndarray:
    """Ranks of the accesses' rows in the static order, ascending; unranked rows left out.

    A static cache of ``C`` rows hits the accesses whose rank is below ``C``.

    >>> access_ranks(np.array([3, 5, 7]), np.array([5, 9, 3, 7, 5])).tolist()
    [0, 1, 1, 2]
    """
    ranked_rows = np.asarray(ranked_rows, dtype=np.int64)
    accesses = np.asarray(accesses, dtype=np.int64)
    if len(ranked_rows) == 0:
        return np.zeros(0, dtype=np.int64)
    by_row = np.argsort(ranked_rows, kind="stable")
    sorted_rows = ranked_rows[by_row]
    at = np.minimum(np.searchsorted(sorted_rows, accesses), len(sorted_rows) - 1)
    found = sorted_rows[at] == accesses
    return np.sort(by_row[at[found]])


def static_hits(ranked_rows: np.ndarray, accesses: np.ndarray, sizes) -> np.ndarray:
    """Hits among ``accesses`` (row ids) of a static cache of the top ``C`` ranked rows, per size.

    >>> static_hits(np.array([3, 5, 7]), np.array([5, 9, 3, 7]), [1, 2, 3]).tolist()
    [1, 2, 3]
    """
    ranks = access_ranks(ranked_rows, accesses)
    return np.searchsorted(ranks, np.asarray(sizes, dtype=np.int64), side="left")


def static_hits_reference(warm_lookups: dict, accesses, size: int) -> int:
    """Brute force: sort ``{row: lookups}`` by (-lookups, row), keep ``size``, count hits."""
    ranked = sorted(warm_lookups, key=lambda row: (-warm_lookups[row], row))[:size]
    kept = set(ranked)
    return sum(int(row) in kept for row in accesses)
