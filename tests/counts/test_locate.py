"""The row ids' radix directory (:mod:`engramctl.counts.locate`) held to ``np.searchsorted``
on sparse, dense, clustered and empty stores."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.counts.accumulate import SENTINEL
from engramctl.counts.locate import RowLocator, locate_reference


def _store(rng, kind: str) -> np.ndarray:
    if kind == "empty":
        ids = np.zeros(0, np.int64)
    elif kind == "sparse":  # a few rows spread over a huge range
        ids = rng.choice(1 << 40, size=3000, replace=False)
    elif kind == "dense":  # every row from 0 up, a few missing
        ids = np.flatnonzero(rng.random(5000) < 0.95)
    elif kind == "one":
        ids = np.array([int(rng.integers(0, 1 << 50))])
    else:  # clustered: a dense unigram column, then sparse hashed columns far above it
        ids = np.concatenate([np.arange(2000), 10**9 + rng.choice(10**9, 2000, replace=False)])
    return np.append(np.unique(ids).astype(np.int64), SENTINEL)


@pytest.mark.parametrize("kind", ["empty", "sparse", "dense", "one", "clustered"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_locator_equals_the_reference(kind, seed):
    rng = np.random.default_rng(seed)
    row_ids = _store(rng, kind)
    stored = row_ids[:-1]
    top = int(stored[-1]) + 2 if stored.size else 100
    queries = [rng.integers(0, top, size=4000), np.array([0, top, top + 1, 2**62, -1])]
    if stored.size:  # hits, their neighbours, and the ends
        pick = rng.choice(stored, size=2000)
        queries += [pick, pick - 1, pick + 1, stored[:1], stored[-1:]]
    rows = np.concatenate(queries).astype(np.int64).reshape(-1, 1)
    locator = RowLocator.build(row_ids)
    got = locator(rows)
    assert got.shape == rows.shape
    valid = rows >= 0  # (searchsorted has no notion of a negative row: it is absent)
    np.testing.assert_array_equal(got[valid], locate_reference(row_ids, rows[valid]))
    assert (got[~valid] == row_ids.shape[0] - 1).all()
    hits = got != row_ids.shape[0] - 1
    np.testing.assert_array_equal(row_ids[got[hits]], rows[hits])
    assert locator.nbytes <= 8 * (2 * stored.size // 2 + 4) + 64  # O(occupied rows)


def test_locator_refuses_a_store_without_its_sentinel():
    with pytest.raises(ValueError, match="sentinel"):
        RowLocator.build(np.zeros(0, np.int64))
