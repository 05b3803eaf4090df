"""RowPager: rows equal the table's, LRU cache behaviour, paged == resident bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from engramctl.errors import EngramError  # noqa: E402
from engramctl.hashing import NgramHasher  # noqa: E402
from engramctl.model.device import resolve_device  # noqa: E402
from engramctl.model.serve.paging import ResidentRows, RowPager  # noqa: E402
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


def test_pager_and_cache_plan_read_one_policy(small_layout, tiny_vocab, hasher):
    """The pager's caches and cache-plan's pager curve take the same PagerConfig object."""
    import inspect

    from engramctl.cacheplan.lru import pager_histogram, pager_hits_reference
    from engramctl.cacheplan.stream import StackDistances
    from engramctl.rowcache.policy import PAGER, LruSlots

    pager = RowPager(make_table(small_layout, tiny_vocab), hasher, device=CPU, cache_rows=64)
    for cache in pager.caches.values():
        assert isinstance(cache, LruSlots) and cache.config is PAGER
    for planner in (pager_histogram, pager_hits_reference, StackDistances):
        assert inspect.signature(planner).parameters["config"].default is PAGER
    assert len(pager.buffers[small_layout.layers[0]]) == PAGER.host_buffers
