"""RowPager: rows equal the table's, LRU cache behaviour, paged == resident bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engramctl.errors import EngramError  # noqa: E402
from engramctl.hashing import NgramHasher  # noqa: E402
from engramctl.model.serve.paging import (  # noqa: E402
    DeviceRowCache,
    ResidentRows,
    RowPager,
    resolve_device,
)
from tests.conftest import make_layout  # noqa: E402
from tests.model.table_double import InMemoryTable  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_layout(tiny_vocab):
    return make_layout(
        (97, 101), layers=(0, 2), pad_id=0, vocab_size=tiny_vocab.canonical_vocab_size
    )


@pytest.fixture(scope="module")
def hasher(small_layout, tiny_vocab):
    return NgramHasher(small_layout, tiny_vocab)


def make_table(layout, vocab, dim=4):
    return InMemoryTable(layout, dim, vocab.fingerprint, std=1.0, seed=3)


def batches(vocab, n=8, shape=(2, 6), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab.source_vocab_size, size=shape) for _ in range(n)]


def reference_rows(table, hasher, batch):
    """Plain lookup: the table's rows at every hashed position, flattened over heads."""
    out = {}
    for layer, ids in hasher.hash_reference(batch, table_rows=True).items():
        out[layer] = table.values[layer][ids].reshape(*ids.shape[:2], -1)
    return out


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("cache_rows", [300, 100_000])
def test_paged_rows_equal_table_rows(small_layout, tiny_vocab, hasher, prefetch, cache_rows):
    table = make_table(small_layout, tiny_vocab)
    pager = RowPager(table, hasher, device=CPU, cache_rows=cache_rows, prefetch=prefetch)
    data = batches(tiny_vocab)
    seen = 0
    for (batch, rows), expected_batch in zip(pager.iterate(data), data, strict=True):
        np.testing.assert_array_equal(batch, expected_batch)
        expected = reference_rows(table, hasher, batch)
        for layer in small_layout.layers:
            np.testing.assert_array_equal(rows[layer].numpy(), expected[layer])
        seen += 1
    assert seen == len(data)
    stats = pager.stats
    heads = small_layout.heads_per_layer
    assert stats.rows_requested == sum(b.size for b in data) * heads * 2
    assert stats.cache_hits + stats.cache_misses == stats.unique_rows
    assert stats.bytes_read == stats.cache_misses * 4 * 4
    assert stats.batches == len(data)


def test_resident_rows_equal_table_rows(small_layout, tiny_vocab, hasher):
    table = make_table(small_layout, tiny_vocab)
    resident = ResidentRows(table, hasher, device=CPU)
    for batch, rows in resident.iterate(batches(tiny_vocab, n=3)):
        expected = reference_rows(table, hasher, batch)
        for layer in small_layout.layers:
            np.testing.assert_array_equal(rows[layer].numpy(), expected[layer])


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
    capacity = 3 * max(len(b) for b in batch_rows) + capacity_extra
    cache = DeviceRowCache(61, capacity, 1, CPU)
    history = []
    for index, rows in enumerate(batch_rows):
        slots, miss = cache.assign(rows, index)
        history.append((rows, slots))
        for rows_k, slots_k in history[-3:]:  # this batch and the two in flight
            np.testing.assert_array_equal(cache.row_of_slot[slots_k], rows_k)
        assert len(np.unique(slots)) == len(rows)


def test_layer_cache_lru_hand_worked():
    cache = DeviceRowCache(10, 4, 1, CPU)
    cache.assign(np.array([1]), 0)
    cache.assign(np.array([2]), 1)
    cache.assign(np.array([3]), 2)
    cache.assign(np.array([4]), 3)  # full: rows 1..4
    slots, miss = cache.assign(np.array([2, 5]), 4)  # 2 hits; 5 evicts row 1 (least recent)
    assert miss.tolist() == [False, True]
    assert cache.slot_of_row.lookup(np.array([1]))[0] == -1 and cache.row_of_slot[slots[1]] == 5
    with pytest.raises(EngramError, match="--cache-rows too small"):
        cache.assign(np.array([6, 7, 8]), 5)  # only row 3's slot is free of in-flight batches


def test_cache_budget_beyond_device_memory(small_layout, tiny_vocab, hasher, monkeypatch):
    import engramctl.model.serve.paging as paging

    monkeypatch.setattr(paging, "free_device_bytes", lambda device: 100)
    with pytest.raises(EngramError, match="lower --cache-rows"):
        RowPager(make_table(small_layout, tiny_vocab), hasher, device=CPU, cache_rows=1000)


def test_producer_errors_reach_the_consumer(small_layout, tiny_vocab, hasher):
    pager = RowPager(make_table(small_layout, tiny_vocab), hasher, device=CPU, cache_rows=1000)
    bad = [np.array([[0, 1, 10**9]])]  # an id outside the tokenizer
    with pytest.raises(EngramError):
        list(pager.iterate(bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(EngramError, match="no CUDA"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paged_equals_resident(small_layout, tiny_vocab, hasher):
    device = torch.device("cuda")
    table = make_table(small_layout, tiny_vocab)
    pager = RowPager(table, hasher, device=device, cache_rows=300)
    resident = ResidentRows(table, hasher, device=device)
    data = batches(tiny_vocab)
    for (_, paged), (_, whole) in zip(pager.iterate(data), resident.iterate(data), strict=True):
        for layer in small_layout.layers:
            assert torch.equal(paged[layer], whole[layer])


@settings(max_examples=300, deadline=None)
@given(
    batch_rows=st.lists(
        st.sets(st.integers(0, 14), min_size=1, max_size=9), min_size=2, max_size=30
    ),
    capacity=st.integers(1, 16),
)
@example(  # ties within a batch decide the victim: argpartition by stamp alone missed this
    batch_rows=[{0, 1, 2, 3, 4, 5, 7, 9, 11}, {0}, {0}, {0, 2, 6, 8, 10}, {1}], capacity=14
)
def test_device_row_cache_is_the_cache_plan_pager_model(batch_rows, capacity):
    """The pager's hits (or its refusal) equal cache-plan's one-pass pager curve at this size."""
    from engramctl.cacheplan.lru import (
        PAGER_IN_FLIGHT,
        cumulative_hits,
        hits_at,
        pager_histogram,
    )
    from engramctl.model.serve.paging import IN_FLIGHT

    assert PAGER_IN_FLIGHT == IN_FLIGHT
    ids = np.array([r for rows in batch_rows for r in sorted(rows)], dtype=np.int64)
    bounds = np.cumsum([0] + [len(rows) for rows in batch_rows])
    hist, need = pager_histogram(ids, bounds, 15)
    cache = DeviceRowCache(15, capacity, 1, CPU)
    hits = 0
    try:
        for k, rows in enumerate(batch_rows):
            _, miss = cache.assign(np.array(sorted(rows), dtype=np.int64), k)
            hits += int((~miss).sum())
    except EngramError:
        assert capacity < need
        return
    assert capacity >= need and hits == hits_at(cumulative_hits(hist), [capacity])[0]
