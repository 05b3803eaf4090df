"""The one-pass LRU and pager curves, the static cache and MIN against plain simulations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.cacheplan.lru import (
    cumulative_hits,
    hits_at,
    lru_histogram,
    lru_hits_reference,
    pager_histogram,
    pager_hits_reference,
)
from engramctl.cacheplan.opt import opt_hits, opt_hits_reference
from engramctl.cacheplan.static import static_hits, static_hits_reference, static_ranks
from engramctl.errors import EngramError


@st.composite
def batched_traces(draw, max_rows=12, max_batches=10, max_batch=6):
    """Batches of distinct rows in ascending order (the trace's shape), dense ids."""
    n_rows = draw(st.integers(1, max_rows))
    batches = draw(
        st.lists(
            st.sets(st.integers(0, n_rows - 1), min_size=1, max_size=max_batch),
            min_size=1,
            max_size=max_batches,
        )
    )
    ids = np.array([r for b in batches for r in sorted(b)], dtype=np.int64)
    bounds = np.cumsum([0] + [len(b) for b in batches]).astype(np.int64)
    return ids, bounds, n_rows


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(0, 30), min_size=1, max_size=200),
    warm=st.floats(0, 0.9),
)
def test_lru_curve_equals_ordereddict_lru_at_every_size(ids, warm):
    ids = np.array(ids, dtype=np.int64)
    n_distinct = int(ids.max()) + 1
    count_from = int(warm * len(ids))
    hist = lru_histogram(ids, n_distinct, count_from=count_from)
    assert hist.sum() == len(ids) - count_from
    sizes = np.arange(1, n_distinct + 2)
    expected = [lru_hits_reference(ids, int(c), count_from=count_from) for c in sizes]
    assert hits_at(cumulative_hits(hist), sizes).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(trace=batched_traces(), warm=st.integers(0, 3))
def test_pager_curve_equals_pager_simulation_at_every_size(trace, warm):
    ids, bounds, n_rows = trace
    warm = min(warm, len(bounds) - 2)
    hist, need = pager_histogram(ids, bounds, n_rows, count_from_batch=warm)
    for size in range(1, n_rows + 2):
        expected = pager_hits_reference(ids, bounds, size, count_from_batch=warm)
        if size < need:
            assert expected is None, (size, need)
        else:
            assert expected == int(hits_at(cumulative_hits(hist), [size])[0]), size


def test_pager_keeps_the_rows_its_batch_reads_where_plain_lru_evicts_them():
    # Cache of 4 holding 5 (least recent), 10, 11, 12; batch {0, 5}: plain LRU's miss on 0 evicts
    # 5 before 5 is read (then 5 evicts 10): no hits. The pager sees 5 cached, keeps it, evicts 10.
    ids = np.array([5, 10, 11, 12, 0, 5], dtype=np.int64)
    bounds = np.array([0, 1, 2, 3, 4, 6])
    count_from = 4
    lru = lru_histogram(ids, 13, count_from=count_from)
    pager, need = pager_histogram(ids, bounds, 13, count_from_batch=4)
    assert hits_at(cumulative_hits(lru), [4]).tolist() == [0]
    assert lru_hits_reference(ids, 4, count_from=4) == 0
    assert need == 4 and hits_at(cumulative_hits(pager), [4]).tolist() == [1]
    assert pager_hits_reference(ids, bounds, 4, count_from_batch=4) == 1
    assert pager_hits_reference(ids, bounds, 3, count_from_batch=4) is None


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(0, 4), min_size=1, max_size=11),
    size=st.integers(1, 4),
    warm=st.integers(0, 4),
)
def test_opt_equals_brute_force_and_bounds_lru(ids, size, warm):
    ids = np.array(ids, dtype=np.int64)
    warm = min(warm, len(ids) - 1)
    n_distinct = int(ids.max()) + 1
    got = int(opt_hits(ids, n_distinct, [size], count_from=warm)[0])
    assert got == opt_hits_reference(ids, size, count_from=warm)
    assert got >= lru_hits_reference(ids, size, count_from=warm)


@settings(max_examples=150, deadline=None)
@given(trace=batched_traces(), lookups_seed=st.integers(0, 2**16), warm=st.integers(1, 4))
def test_static_equals_brute_force(trace, lookups_seed, warm):
    ids, bounds, n_rows = trace
    warm = min(warm, len(bounds) - 1)
    rng = np.random.default_rng(lookups_seed)
    warm_rows = ids[: bounds[warm]]
    lookups = rng.integers(1, 4, size=len(warm_rows))  # ties are common
    counts: dict = {}
    for row, n in zip(warm_rows.tolist(), lookups.tolist(), strict=True):
        counts[row] = counts.get(row, 0) + n
    ranked, _ = static_ranks(warm_rows, lookups)
    rest = ids[bounds[warm] :]
    sizes = list(range(1, n_rows + 2))
    got = static_hits(ranked, rest, sizes).tolist()
    assert got == [static_hits_reference(counts, rest, c) for c in sizes]


def test_static_ties_go_to_the_lower_row_id():
    ranked, totals = static_ranks(np.array([9, 4, 6]), np.array([2, 2, 5]))
    assert ranked.tolist() == [6, 4, 9] and totals.tolist() == [5, 2, 2]
    assert static_hits(ranked, np.array([9, 4]), [2]).tolist() == [1]


def test_hand_worked_lru_and_opt():
    #        a  b  c  a  b  d  a
    ids = np.array([0, 1, 2, 0, 1, 3, 0])
    hist = lru_histogram(ids, 4)
    assert hist.tolist() == [0, 0, 3, 0, 4]  # a@3: b,c; b@4: c,a; a@6: b,d -> 2 each; 4 cold
    assert hits_at(cumulative_hits(hist), [1, 2, 3, 4]).tolist() == [0, 0, 3, 3]
    assert opt_hits(ids, 4, [1, 2, 3]).tolist() == [0, 2, 3]


def test_bad_traces_are_refused():
    with pytest.raises(EngramError, match="lie in"):
        lru_histogram(np.array([0, 5]), 3)
    with pytest.raises(EngramError, match="bounds"):
        pager_histogram(np.array([0, 1]), np.array([0, 1]), 2)
    with pytest.raises(EngramError, match="at least 1"):
        opt_hits(np.array([0, 1]), 2, [0])
