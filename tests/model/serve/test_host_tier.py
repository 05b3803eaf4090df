"""The pager's host tier: rows equal the table's, and the hits it counts per tier equal
cache-plan's prediction on the same workload (one policy module). Its static mode: cache-plan
writes the warm-up's top rows, the pager loads them once, never evicts them, and counts per tier
what cache-plan predicts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engramctl.cacheplan.plan import plan_cache  # noqa: E402
from engramctl.cacheplan.trace import Workload  # noqa: E402
from engramctl.errors import UsageError  # noqa: E402
from engramctl.hashing import NgramHasher  # noqa: E402
from engramctl.model.serve.paging import RowPager  # noqa: E402
from engramctl.rowcache.static import load_static_rows, save_static_rows  # noqa: E402
from engramctl.rowcache.tiers import HOST_INDEX_BYTES, TierConfig  # noqa: E402
from tests.conftest import make_layout  # noqa: E402
from tests.model.table_double import InMemoryTable  # noqa: E402

CPU = torch.device("cpu")
DIM = 4
ROW = DIM * 4 + HOST_INDEX_BYTES  # host bytes per float32 row of the double, index included


@pytest.fixture(scope="module")
def layout(tiny_vocab):
    return make_layout(
        (997, 1009), layers=(0, 2), pad_id=0, vocab_size=tiny_vocab.canonical_vocab_size
    )


@pytest.fixture(scope="module")
def hasher(layout, tiny_vocab):
    return NgramHasher(layout, tiny_vocab)


@pytest.fixture(scope="module")
def sequences(tiny_vocab):
    """Chat-like traffic: 48 sequences drawn from 10 templates with a few tokens changed."""
    rng = np.random.default_rng(4)
    templates = rng.integers(1, tiny_vocab.source_vocab_size, size=(10, 12))
    seqs = templates[rng.integers(0, 10, size=48)]
    noise = rng.random(seqs.shape) < 0.2
    return np.where(noise, rng.integers(1, tiny_vocab.source_vocab_size, size=seqs.shape), seqs)


def run(layout, tiny_vocab, hasher, sequences, tiers, *, batch=4, prefetch=True):
    table = InMemoryTable(layout, DIM, tiny_vocab.fingerprint, std=1.0, seed=3)
    pager = RowPager(
        table, hasher, device=CPU, cache_rows=tiers.device_rows, prefetch=prefetch, tiers=tiers
    )
    data = [sequences[i : i + batch] for i in range(0, len(sequences), batch)]
    for batch_ids, rows in pager.iterate(data):
        for layer, ids in hasher.hash_reference(batch_ids, table_rows=True).items():
            expected = table.values[layer][ids].reshape(*ids.shape[:2], -1)
            np.testing.assert_array_equal(rows[layer].numpy(), expected)
    return pager.stats, table


def plan(hasher, layout, sequences, tiers=None, size=1):
    workload = Workload(sequences=sequences, tokens=sequences.size, documents=48, cut="test")
    return plan_cache(
        workload=workload, workload_paths=[], hasher=hasher, layer_ids=layout.layers, dim=DIM,
        dtype="float32", batch=4, seq_len=None, sizes=(size,), warmup_fraction=0.0,
        policies=("pager",), tiers=tiers,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sizes(hasher, layout, sequences):
    """Per-layer device rows (the pager's minimum) and the rows the workload touches."""
    layers = plan(hasher, layout, sequences).layers.values()
    return max(lp.pager_min_rows for lp in layers), min(lp.distinct_rows for lp in layers)


@pytest.mark.parametrize("host_share", [0.3, 0.7])
def test_counted_hits_per_tier_equal_cache_plan(
    layout, tiny_vocab, hasher, sequences, sizes, host_share
):
    device, distinct = sizes
    host = device + int(host_share * (distinct - device))
    tiers = TierConfig(device_rows=2 * device, host_bytes=2 * host * ROW, prefetch_depth=2)
    stats, _ = run(layout, tiny_vocab, hasher, sequences, tiers)
    predicted = plan(hasher, layout, sequences, tiers, size=device)
    view = predicted.tiers["all_layers"]
    assert view["refused"] is None
    assert view["host_rows"] == stats.host_rows == 2 * host
    assert view["accesses"] == stats.unique_rows
    assert view["device_hits"] == stats.cache_hits
    assert view["host_hits"] == stats.host_hits
    assert view["storage_reads"] == stats.storage_reads
    assert 0 < stats.host_hits < stats.cache_misses  # the host tier served some, not all
    assert view["storage_to_host_bytes_per_token"] * sequences.size == stats.bytes_read
    assert view["host_to_device_bytes_per_token"] * sequences.size == stats.bytes_copied
    assert predicted.tiers["config"] == tiers.to_dict()


def test_read_ahead_reads_early_and_changes_no_count(layout, tiny_vocab, hasher, sequences, sizes):
    device, distinct = sizes
    base = TierConfig(2 * device, 2 * (device + distinct) // 2 * ROW, prefetch_depth=0)
    without, _ = run(layout, tiny_vocab, hasher, sequences, base)
    ahead = TierConfig(2 * device, base.host_bytes, prefetch_depth=3)
    with_ahead, _ = run(layout, tiny_vocab, hasher, sequences, ahead)
    for key in ("cache_hits", "host_hits", "storage_reads", "bytes_read", "bytes_copied"):
        assert getattr(with_ahead, key) == getattr(without, key), key
    assert without.prefetch_rows == 0 and with_ahead.prefetch_rows > 0
    inline, _ = run(layout, tiny_vocab, hasher, sequences, ahead, prefetch=False)
    assert inline.host_hits == without.host_hits and inline.prefetch_rows == 0


def test_without_host_tier_every_device_miss_is_a_storage_read(
    layout, tiny_vocab, hasher, sequences, sizes
):
    tiers = TierConfig(2 * sizes[0], prefetch_depth=0)
    stats, table = run(layout, tiny_vocab, hasher, sequences, tiers)
    assert stats.host_rows == 0 and stats.host_hits == 0 and stats.host_hit_rate is None
    assert stats.storage_reads == stats.cache_misses == table.rows_gathered


def test_host_tier_too_small_is_one_line(layout, tiny_vocab, hasher, sequences):
    table = InMemoryTable(layout, DIM, tiny_vocab.fingerprint)
    no_bigger = TierConfig(device_rows=400, host_bytes=2 * 150 * ROW)
    with pytest.raises(UsageError, match="no more than the device cache's 200"):
        RowPager(table, hasher, device=CPU, cache_rows=400, tiers=no_bigger)
    small = TierConfig(device_rows=2, host_bytes=2 * 20 * ROW)  # one batch has more rows
    pager = RowPager(table, hasher, device=CPU, cache_rows=2, prefetch=False, tiers=small)
    with pytest.raises(UsageError, match="one batch needs .* raise --host-cache or lower --batch"):
        list(pager.iterate([sequences[:4]]))


# ------------------------------------------------------------ static mode (--host-static)
def plan_static(hasher, layout, sequences, tiers, *, warmup=0.0, out=None):
    workload = Workload(sequences=sequences, tokens=sequences.size, documents=48, cut="test")
    return plan_cache(
        workload=workload, workload_paths=[], hasher=hasher, layer_ids=layout.layers, dim=DIM,
        dtype="float32", batch=4, seq_len=None, sizes=(1,), warmup_fraction=warmup,
        policies=("pager", "static"), tiers=tiers, host_static_out=out,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, hasher, layout, sequences, sizes):
    """cache-plan --host-static-out: the top rows of a warm-up (a quarter of the batches)."""
    device, distinct = sizes
    host = device // 2  # a static tier may be smaller than the device cache
    path = tmp_path_factory.mktemp("static") / "rows.npz"
    tiers = TierConfig(device_rows=2 * device, host_bytes=2 * host * ROW, prefetch_depth=0)
    planned = plan_static(hasher, layout, sequences, tiers, warmup=0.25, out=path)
    assert planned.tiers["all_layers"]["host_mode"] == "static"
    assert planned.tiers["all_layers"]["refused"] is None
    return path, tiers, host


def test_written_rows_are_the_warmup_top_rows(rows_file, layout, hasher, sequences):
    path, _, host = rows_file
    rows = load_static_rows(path, layout)
    warm = sequences[: 3 * 4]  # 12 batches of 4: 3 warm up
    hashed = hasher.hash(warm, table_rows=True)
    for layer in layout.layers:
        ids, counts = np.unique(hashed[layer], return_counts=True)
        order = np.lexsort((ids, -counts))
        assert rows[layer].tolist() == sorted(ids[order][:host].tolist())


@pytest.mark.parametrize("prefetch_depth", [0, 2])
def test_static_counted_hits_per_tier_equal_cache_plan(
    rows_file, layout, tiny_vocab, hasher, sequences, prefetch_depth
):
    path, tiers, host = rows_file
    tiers = replace(tiers, host_static=str(path), prefetch_depth=prefetch_depth)
    stats, table = run(layout, tiny_vocab, hasher, sequences, tiers)
    view = plan_static(hasher, layout, sequences, tiers).tiers["all_layers"]
    assert view["refused"] is None and view["host_mode"] == "static"
    assert stats.host_loaded_rows == sum(len(r) for r in load_static_rows(path, layout).values())
    assert view["accesses"] == stats.unique_rows
    assert view["device_hits"] == stats.cache_hits
    assert view["host_hits"] == stats.host_hits
    assert view["storage_reads"] == stats.storage_reads
    assert 0 < stats.host_hits < stats.cache_misses  # the static set served some, not all
    assert view["storage_to_host_bytes_per_token"] * sequences.size == stats.bytes_read
    # the set is loaded once; after that only storage reads reach the table (and read-ahead)
    assert table.rows_gathered == stats.host_loaded_rows + stats.storage_reads + (
        stats.prefetch_rows
    )


def test_static_set_is_never_evicted(rows_file, layout, tiny_vocab, hasher, sequences):
    path, tiers, _ = rows_file
    table = InMemoryTable(layout, DIM, tiny_vocab.fingerprint, std=1.0, seed=3)
    static = replace(tiers, host_static=str(path))
    pager = RowPager(table, hasher, device=CPU, cache_rows=static.device_rows, prefetch=False,
                     tiers=static)  # fmt: skip
    before = {layer: tier.rows.copy() for layer, tier in pager.hosts.items()}
    for _ in pager.iterate([sequences[i : i + 4] for i in range(0, 48, 4)]):
        pass
    for layer, tier in pager.hosts.items():
        np.testing.assert_array_equal(tier.rows, before[layer])
        np.testing.assert_array_equal(tier.values, table.values[layer][tier.rows])


def test_bad_rows_files_are_one_line(rows_file, tmp_path, layout, tiny_vocab, hasher):
    path, tiers, host = rows_file
    table = InMemoryTable(layout, DIM, tiny_vocab.fingerprint)

    def pager(**changes):
        config = replace(tiers, **changes)
        return RowPager(table, hasher, device=CPU, cache_rows=config.device_rows, tiers=config)

    with pytest.raises(UsageError, match="no such file; write one with cache-plan"):
        pager(host_static=str(tmp_path / "missing.npz"))
    other = make_layout((499, 503), layers=(0, 2), pad_id=0, vocab_size=layout.vocab_size)
    foreign = tmp_path / "other.npz"
    save_static_rows(foreign, {0: [1, 2], 2: [3]}, other)
    with pytest.raises(UsageError, match="written for another layout"):
        pager(host_static=str(foreign))
    with pytest.raises(UsageError, match=r"more than --host-cache holds \(1 rows per layer\)"):
        pager(host_static=str(path), host_bytes=2 * ROW)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not a host-static rows file"):
        pager(host_static=str(junk))
    with pytest.raises(UsageError, match="give --host-cache SIZE"):
        TierConfig(device_rows=100, host_static=str(path)).check()
