"""The streamed policies equal the in-memory ones (which the other tests check against
OrderedDict LRU, the pager simulation and brute force)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.cacheplan.lru import lru_histogram, pager_histogram
from engramctl.cacheplan.opt import opt_hits, opt_hits_spilled
from engramctl.cacheplan.static import access_ranks, static_ranks
from engramctl.cacheplan.stream import LayerStream, RowIndex, StackDistances


@st.composite
def row_batches(draw):
    """Batches of distinct whole-table row ids (ascending), long enough to need compactions."""
    universe = draw(
        st.lists(st.integers(0, 2**40), min_size=1, max_size=40, unique=True).map(sorted)
    )
    picks = st.sets(st.sampled_from(universe), min_size=1, max_size=12).map(sorted)
    batches = draw(st.lists(picks, min_size=2, max_size=60))
    lookups = [draw(st.lists(st.integers(1, 9), min_size=len(b), max_size=len(b))) for b in batches]
    return [np.array(b, dtype=np.int64) for b in batches], [np.array(c) for c in lookups]


def _in_memory(batches):
    """The trace as build_traces stores it: dense ids (sorted rows) and batch bounds."""
    flat = np.concatenate(batches)
    rows, dense = np.unique(flat, return_inverse=True)
    bounds = np.cumsum([0] + [len(b) for b in batches]).astype(np.int64)
    return rows, dense.astype(np.int64), bounds


@settings(max_examples=150, deadline=None)
@given(trace=row_batches(), warm=st.integers(0, 5), window=st.integers(64, 200))
def test_streaming_equals_in_memory(tmp_path_factory, trace, warm, window):
    batches, lookups = trace
    warm = min(warm, len(batches) - 1)
    rows, dense, bounds = _in_memory(batches)
    start = int(bounds[warm])
    spill = tmp_path_factory.mktemp("spill") / "layer.ids"
    stream = LayerStream(1, warmup=warm, policies=("lru", "pager", "static", "opt"),
                         spill=spill, id_dtype=np.int32)  # fmt: skip
    # a window of 64..200 positions: compactions every few batches
    stream.stacks = StackDistances(min_window=window)
    for b, c in zip(batches, lookups, strict=True):
        stream.add(b, c, int(c.sum()))
    stream.close()
    n = stream.distinct
    assert n == len(rows) and stream.counted_from == start
    assert stream.accesses == len(dense)
    np.testing.assert_array_equal(
        stream.stacks.histogram(n), lru_histogram(dense, n, count_from=start)
    )
    hist, need = pager_histogram(dense, bounds, n, count_from_batch=warm)
    np.testing.assert_array_equal(stream.stacks.histogram(n, pager=True), hist)
    assert stream.stacks.pager_min_rows == need
    sizes = list(range(1, n + 2))
    np.testing.assert_array_equal(
        opt_hits_spilled(stream.spill, n, sizes, count_from=start, chunk=7),
        opt_hits(dense, n, sizes, count_from=start),
    )
    if warm:
        ranked, _ = static_ranks(np.concatenate(batches[:warm]), np.concatenate(lookups[:warm]))
        ranks = access_ranks(ranked, rows[dense[start:]])
        expected = np.searchsorted(ranks, np.arange(len(ranked) + 1))
        np.testing.assert_array_equal(stream.static.cumulative(), expected)
    if len(dense) > 2 * window:
        assert stream.stacks.compactions > 0


def test_long_trace_compacts_and_keeps_its_window_bounded():
    rng = np.random.default_rng(7)
    universe = np.sort(rng.choice(2**40, 500, replace=False))
    stack = StackDistances(lru=True, pager=False, min_window=64)
    pager = StackDistances(lru=False, pager=True, min_window=64)
    index = RowIndex()
    batches = [np.unique(rng.choice(universe, 30)) for _ in range(2000)]
    for k, b in enumerate(batches):
        dense = index.dense(b)
        stack.add(dense, index.count, counting=k >= 10)
        pager.add(dense, index.count, counting=k >= 10)
    rows, dense, bounds = _in_memory(batches)
    # dense ids are first-seen, not sorted: map the in-memory trace onto them
    dense = index.dense(rows)[dense]
    start = int(bounds[10])
    np.testing.assert_array_equal(stack.histogram(500), lru_histogram(dense, 500, count_from=start))
    np.testing.assert_array_equal(
        pager.histogram(500, pager=True),
        pager_histogram(dense, bounds, 500, count_from_batch=10)[0],
    )
    assert stack.compactions > 10  # ~55k accesses, a window of ~2 x (500 + 30)
    assert stack.window <= 2 * (500 + 30)


def test_row_index_grows_and_keeps_its_ids():
    index = RowIndex()
    rows = np.random.default_rng(1).choice(2**50, 20000, replace=False)
    first = np.concatenate([index.dense(rows[i : i + 1000]) for i in range(0, 20000, 1000)])
    np.testing.assert_array_equal(first, np.arange(20000))
    np.testing.assert_array_equal(index.dense(rows[::-1]), np.arange(20000)[::-1])
    np.testing.assert_array_equal(index.row_ids(), rows)


@pytest.mark.parametrize("fail", [False, True])
def test_spill_directory_is_removed(tmp_path, fail):
    from engramctl.cacheplan import plan as plan_module
    from engramctl.cacheplan.trace import Workload
    from engramctl.layout import EngramLayout

    class FakeHasher:
        layout = EngramLayout.from_preset("demo-v1", vocab_size=100)

        def hash(self, sequences, *, layers, table_rows):
            if fail:
                raise KeyboardInterrupt
            return {layer: np.asarray(sequences)[:, :, None] % 50 for layer in layers}

    seqs = np.random.default_rng(0).integers(0, 100, (12, 8))
    kwargs = dict(workload=Workload(seqs, seqs.size, 1, "test"), workload_paths=["x"],
                  hasher=FakeHasher(), layer_ids=(1,), dim=8, dtype="float32", batch=2,
                  seq_len=8, sizes=[4, 16], spill_dir=tmp_path)  # fmt: skip
    if fail:
        with pytest.raises(KeyboardInterrupt):
            plan_module.plan_cache(**kwargs)
    else:
        plan = plan_module.plan_cache(**kwargs)
        assert plan.layers[1].curves["opt"][1].hits >= plan.layers[1].curves["lru"][1].hits
    assert list(tmp_path.iterdir()) == []
