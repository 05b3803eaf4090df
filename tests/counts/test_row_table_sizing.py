"""The row table's fast paths held to their plain forms: sized at once from an estimate (or cut
to ``max_bytes``) it holds the same summaries as grown by doubling, and its radix-sorted
write-out order is ``argsort`` of the keys."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.counts.rowtable import EMPTY, RowTable, sorted_slots


def _pairs(seed, P=4000, G=3):
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 300, size=(P, 1))  # a dense column (unigram-like)
    sparse = 10**6 + rng.choice(10**9, size=(P, G - 1))  # hashed, spread over a huge range
    return np.concatenate([dense, sparse], 1).astype(np.int64), rng.integers(0, 50, P)


@pytest.mark.parametrize("reserve", [0, 10, 5000, 10**5])
@pytest.mark.parametrize("max_bytes", [0, 4096])
def test_sizing_does_not_change_the_summaries(reserve, max_bytes):
    rows, targets = _pairs(reserve % 7)
    plain = RowTable(4, shards=2, capacity=8)
    for part in np.array_split(np.arange(rows.shape[0]), 4):
        plain.add(rows[part], targets[part])
    sized = RowTable(4, shards=2, capacity=8, max_bytes=max_bytes)
    sized.reserve(reserve)
    for part in np.array_split(np.arange(rows.shape[0]), 4):
        sized.reserve(sized.occupied * 2)
        sized.add(rows[part], targets[part])
    for a, b in zip(plain.extract(), sized.extract(), strict=True):
        np.testing.assert_array_equal(a, b)
    if max_bytes and reserve == 10**5:  # the estimate was cut; doubling went on as needed
        assert sized.capacity <= 2 * plain.capacity


@pytest.mark.parametrize("seed", [0, 1])
def test_sorted_slots_equal_argsort(seed):
    rows, targets = _pairs(seed)
    table = RowTable(2, shards=4, capacity=8)
    table.add(rows, targets)
    keys = table.keys.reshape(-1)
    where = np.flatnonzero(keys != EMPTY)
    np.testing.assert_array_equal(sorted_slots(table), where[np.argsort(keys[where])])
    assert sorted_slots(RowTable(2, shards=2)).shape == (0,)
