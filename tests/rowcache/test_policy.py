"""The pager's cache policy (torch-free): in-flight rows stay, LRU by (last batch, row id), and
cache-plan's one-pass pager curve is this policy exactly, for any number of batches in flight."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engramctl.cacheplan.lru import (
    cumulative_hits,
    hits_at,
    pager_histogram,
    pager_hits_reference,
)
from engramctl.errors import EngramError, UsageError
from engramctl.rowcache.policy import PAGER, LruSlots, PagerConfig


@settings(max_examples=15, deadline=None)
@given(
    capacity_extra=st.integers(0, 40),
    batch_rows=st.lists(
        st.lists(st.integers(0, 60), min_size=1, max_size=12), min_size=1, max_size=12
    ),
)
def test_layer_cache_never_evicts_in_flight_rows(capacity_extra, batch_rows):
    """Whatever the batches, a slot read by an in-flight batch keeps its row."""
    batch_rows = [np.unique(np.array(b, dtype=np.int64)) for b in batch_rows]
    capacity = (PAGER.in_flight + 1) * max(len(b) for b in batch_rows) + capacity_extra
    cache = LruSlots(capacity)
    history = []
    for index, rows in enumerate(batch_rows):
        slots, miss = cache.assign(rows, index)
        history.append((rows, slots))
        for rows_k, slots_k in history[-(PAGER.in_flight + 1) :]:  # this batch, those in flight
            np.testing.assert_array_equal(cache.row_of_slot[slots_k], rows_k)
        assert len(np.unique(slots)) == len(rows)


def test_layer_cache_lru_hand_worked():
    cache = LruSlots(4)
    cache.assign(np.array([1]), 0)
    cache.assign(np.array([2]), 1)
    cache.assign(np.array([3]), 2)
    cache.assign(np.array([4]), 3)  # full: rows 1..4
    slots, miss = cache.assign(np.array([2, 5]), 4)  # 2 hits; 5 evicts row 1 (least recent)
    assert miss.tolist() == [False, True]
    assert cache.slot_of_row.lookup(np.array([1]))[0] == -1 and cache.row_of_slot[slots[1]] == 5
    with pytest.raises(EngramError, match="--cache-rows too small"):
        cache.assign(np.array([6, 7, 8]), 5)  # only row 3's slot is free of in-flight batches


def test_pager_config_defaults_and_refusal():
    assert (PAGER.in_flight, PAGER.host_buffers, PAGER.default_cache_rows) == (2, 4, 1 << 18)
    PAGER.check_cache_rows(1)
    with pytest.raises(UsageError, match="--cache-rows must be at least 1, got 0"):
        PAGER.check_cache_rows(0)


@settings(max_examples=300, deadline=None)
@given(
    batch_rows=st.lists(
        st.sets(st.integers(0, 14), min_size=1, max_size=9), min_size=2, max_size=30
    ),
    capacity=st.integers(1, 16),
    in_flight=st.integers(0, 3),
)
@example(  # ties within a batch decide the victim: argpartition by stamp alone missed this
    batch_rows=[{0, 1, 2, 3, 4, 5, 7, 9, 11}, {0}, {0}, {0, 2, 6, 8, 10}, {1}],
    capacity=14,
    in_flight=2,
)
def test_policy_is_the_cache_plan_pager_model(batch_rows, capacity, in_flight):
    """The policy's hits (or its refusal) equal cache-plan's one-pass pager curve at this size,
    from the same configuration."""
    config = PagerConfig(in_flight=in_flight)
    ids = np.array([r for rows in batch_rows for r in sorted(rows)], dtype=np.int64)
    bounds = np.cumsum([0] + [len(rows) for rows in batch_rows])
    hist, need = pager_histogram(ids, bounds, 15, config=config)
    reference = pager_hits_reference(ids, bounds, capacity, config=config)
    cache = LruSlots(capacity, config)
    hits = 0
    try:
        for k, rows in enumerate(batch_rows):
            _, miss = cache.assign(np.array(sorted(rows), dtype=np.int64), k)
            hits += int((~miss).sum())
    except EngramError:
        assert capacity < need and reference is None
        return
    assert capacity >= need and hits == hits_at(cumulative_hits(hist), [capacity])[0] == reference


def test_cache_too_small_names_its_remedy():
    slots = LruSlots(2, PagerConfig(in_flight=0))
    with pytest.raises(EngramError, match="raise --cache-rows or lower --batch") as caught:
        slots.assign(np.arange(3, dtype=np.int64), 0)
    other = caught.value.with_remedy("raise --cache-rows")
    assert str(other).endswith("but its cache holds 2; raise --cache-rows")
    assert (other.needed, other.capacity) == (3, 2)
