"""TierConfig (one configuration of the serving tiers) and the host tier's cache, torch-free."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.cacheplan.lru import pager_histogram
from engramctl.cacheplan.tiers import tier_counts
from engramctl.errors import UsageError
from engramctl.rowcache.tiers import HOST_INDEX_BYTES, HostTier, TierConfig


def test_options_become_one_checked_config():
    config = TierConfig.from_options(
        cache_rows=1000, host_cache="1.5M", read_threads=8, prefetch_depth=3
    )
    assert config == TierConfig(1000, 3 * 2**19, 8, 3) and config.host_tier
    assert config.to_dict() == {
        "device_rows": 1000, "host_bytes": 3 * 2**19, "read_threads": 8, "prefetch_depth": 3,
        "host_static": None,
    }  # fmt: skip
    assert not TierConfig.from_options(cache_rows=10).host_tier  # no --host-cache: no host tier


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host_cache": "8X"}, "--host-cache: expected e.g. 8G"),
        ({"host_cache": "lots"}, "--host-cache: expected e.g. 8G"),
        ({"host_cache": "-1G"}, "--host-cache must be positive"),
        ({"host_cache": "9999T"}, "more than this machine's RAM"),
        ({"prefetch_depth": -1}, "--prefetch-depth must be 0 or more, got -1"),
        ({"read_threads": 0}, "--read-threads must be at least 1"),
        ({"cache_rows": 0}, "--cache-rows must be at least 1"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(UsageError, match=message) as caught:
        TierConfig.from_options(**options)
    assert "\n" not in str(caught.value)


def test_rows_per_layer_split_the_budgets_and_count_the_index():
    config = TierConfig(device_rows=1000, host_bytes=2 * 100 * (264 + HOST_INDEX_BYTES))
    assert config.device_rows_per_layer(10**6, 2) == 500
    assert config.device_rows_per_layer(300, 2) == 300  # capped at the layer's rows
    assert config.host_rows_per_layer(10**6, 2, 264) == 100
    assert config.host_rows_per_layer(40, 2, 264) == 40
    with pytest.raises(UsageError, match="no more than the device cache's 500"):
        config.check_host_rows(100, 500, layer=3, n_layers=2)
    with pytest.raises(UsageError, match="holds no row of layer 3"):
        config.check_host_rows(0, 500, layer=3, n_layers=2)
    config.check_host_rows(501, 500, layer=3, n_layers=2)


def host_reference(batches, capacity):
    """Plain LRU by (last batch, row id) over whole batches: hits per batch (the spec)."""
    stamp, hits = {}, []
    for k, rows in enumerate(batches):
        rows = sorted(set(int(r) for r in rows))
        hits.append(sum(r in stamp for r in rows))
        for r in rows:
            stamp[r] = k
        while len(stamp) > capacity:
            del stamp[min(stamp, key=lambda r: (stamp[r], r))]
    return hits


def test_host_tier_serves_stored_rows_and_follows_the_policy():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 255, size=(500, 12), dtype=np.uint8)
    batches = [np.unique(rng.zipf(1.3, size=60) % 500) for _ in range(40)]
    tier = HostTier(80, 12, np.uint8)
    reads, hits = [], []
    for k, rows in enumerate(batches):
        slots, miss = tier.serve(rows, k, lambda ids: (reads.append(len(ids)), table[ids])[1])
        np.testing.assert_array_equal(tier.values[slots], table[rows])
        hits.append(int((~miss).sum()))
    assert hits == host_reference(batches, 80)
    assert sum(reads) == sum(len(b) for b in batches) - sum(hits)  # only misses are read
    # the same hits as the pager curve of cache-plan at 80 rows
    ids = np.concatenate(batches)
    bounds = np.concatenate([[0], np.cumsum([len(b) for b in batches])])
    hist, _ = pager_histogram(ids, bounds, 500)
    assert sum(hits) == int(hist[:80].sum())


def test_host_tier_refuses_a_batch_larger_than_itself_and_forgets_failed_reads():
    tier = HostTier(4, 2, np.float32)
    with pytest.raises(UsageError, match="one batch needs 5 distinct rows"):
        tier.serve(np.arange(5), 0, lambda ids: np.zeros((len(ids), 2), np.float32))

    def broken(ids):
        raise OSError("disk gone")

    with pytest.raises(OSError):
        tier.serve(np.array([1, 2]), 1, broken)
    assert not tier.contains(np.array([1, 2])).any()  # never served as if read
    slots, miss = tier.serve(np.array([1, 2]), 2, lambda ids: np.ones((len(ids), 2), np.float32))
    assert miss.all() and (tier.values[slots] == 1).all()


def test_tier_counts_split_one_curve():
    cumulative = np.array([0, 5, 8, 9, 9])
    assert tier_counts(cumulative, 1, 0) == (5, 0)
    assert tier_counts(cumulative, 1, 3) == (5, 4)
    assert tier_counts(cumulative, 2, 99) == (8, 1)  # beyond every row: capped


# ------------------------------------------------------------------ static mode (--host-static)
def test_static_rows_file_round_trips_and_refuses_other_hashing(tmp_path):
    from engramctl.rowcache.static import StaticHostTier, load_static_rows, save_static_rows
    from tests.conftest import make_layout

    layout = make_layout((997, 1009), layers=(0, 2), pad_id=0, vocab_size=500)
    path = tmp_path / "rows.npz"
    save_static_rows(path, {0: [9, 3, 3, 1500], 2: []}, layout)
    rows = load_static_rows(path, layout)
    assert rows[0].tolist() == [3, 9, 1500] and rows[2].tolist() == []
    assert load_static_rows(path, layout, layers=(0,)).keys() == {0}
    other_seed = make_layout((997, 1009), layers=(0, 2), pad_id=0, vocab_size=500, seed=7)
    with pytest.raises(UsageError, match="written for another layout .layer 0 hashed"):
        load_static_rows(path, other_seed)
    wider = make_layout((997, 1009), layers=(0, 2, 4), pad_id=0, vocab_size=500)
    with pytest.raises(UsageError, match="has no rows of layer 4"):
        load_static_rows(path, wider)
    tier = StaticHostTier(4, rows[0], 2, np.float32)
    tier.load(lambda ids: np.stack([ids, -ids], axis=1).astype(np.float32), chunk_rows=2)
    assert tier.contains(np.array([1, 3, 1500])).tolist() == [False, True, True]
    unique = np.array([1, 3, 9, 1500])
    miss = np.array([True, True, False, True])
    out, hits, reads = tier.stored(unique, miss, 0, lambda ids: np.full((len(ids), 2), 7.0))
    assert (hits, reads) == (2, 1)
    assert out.tolist() == [[7.0, 7.0], [3.0, -3.0], [1500.0, -1500.0]]


def test_static_mode_needs_a_host_tier_and_is_not_inclusive(tmp_path):
    path = tmp_path / "rows.npz"
    with pytest.raises(UsageError, match="no such file; write one with cache-plan"):
        TierConfig.from_options(cache_rows=10, host_cache="1M", host_static=path)
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="--host-static loads rows into the host tier"):
        TierConfig.from_options(cache_rows=10, host_static=path)
    static = TierConfig.from_options(cache_rows=1000, host_cache="1M", host_static=path)
    assert static.host_mode == "static" and TierConfig(10, 1 << 20).host_mode == "lru"
    static.check_host_rows(100, 500, 0, 2)  # fewer rows than the device cache: still serves
    with pytest.raises(UsageError, match="no more than the device cache"):
        TierConfig(1000, 1 << 20).check_host_rows(100, 500, 0, 2)
