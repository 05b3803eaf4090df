"""The row directory under its RAM cap (:mod:`engramctl.counts.locate`), held to
``np.searchsorted`` (:func:`~engramctl.counts.locate.locate_reference`).

hypothesis draws the shape of a store (empty, one row, dense stretches, uniform hashed columns,
huge gaps, ids near 2**62), the directory's cap (down to its 16-byte floor, so a small store is
forced to coarse buckets) and the build's block size; a seeded generator draws the ids and the
queries (hits, their neighbours, absent, negative, past the end, near 2**63).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.counts.accumulate import SENTINEL
from engramctl.counts.locate import (
    DEFAULT_MAX_BYTES,
    IDS_PER_BUCKET,
    RowLocator,
    directory_shift,
    locate_reference,
)


def _segment(rng, kind: str, start: int, size: int) -> np.ndarray:
    if kind == "dense":  # level 1's canonical ids: every id of a stretch, a few missing
        ids = start + np.flatnonzero(rng.random(size) < 0.97)
    elif kind == "full":  # every id of a stretch
        ids = start + np.arange(size)
    elif kind == "hashed":  # a column's hashed rows: near-uniform over its range
        ids = start + rng.choice(size * 4, size=size, replace=False)
    else:  # "clumped": a few tight clusters far apart
        centres = rng.integers(0, 1 << 40, size=max(1, size // 50))
        ids = start + (centres[:, None] + np.arange(50)).reshape(-1)[:size]
    return ids.astype(np.int64)


@st.composite
def stores(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kinds = draw(
        st.lists(st.sampled_from(["dense", "full", "hashed", "clumped"]), min_size=0, max_size=4)
    )
    parts, start = [], 0
    for kind in kinds:
        size = draw(st.sampled_from([1, 2, 7, 300, 2500]))
        gap = draw(st.sampled_from([0, 1, 1000, 1 << 33, 1 << 50]))
        start += gap
        part = _segment(rng, kind, start, size)
        parts.append(part)
        start = int(part.max()) + 1 if part.size else start
    if draw(st.booleans()):  # ids near 2**62
        parts.append(2**62 - 1 - rng.choice(5000, size=draw(st.integers(1, 40)), replace=False))
    ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    row_ids = np.append(ids.astype(np.int64), SENTINEL)
    max_bytes = draw(st.sampled_from([16, 24, 64, 200, 4096, DEFAULT_MAX_BYTES]))
    block = draw(st.sampled_from([1, 5, 64, 1 << 20]))
    return seed, row_ids, max_bytes, block


def _queries(rng, row_ids: np.ndarray) -> np.ndarray:
    stored = row_ids[:-1]
    top = int(stored[-1]) + 2 if stored.size else 100
    ends = [-1, -(2**40), -(2**63), 0, top, top + 1, 2**62, 2**62 - 1, SENTINEL - 1, SENTINEL]
    queries = [rng.integers(0, top, size=500), np.array(ends, dtype=np.int64)]
    if stored.size:  # hits, their neighbours, and the store's ends
        pick = rng.choice(stored, size=500)
        queries += [pick, pick - 1, pick + 1, stored[:1], stored[-1:], stored[-1:] + 1]
    return np.concatenate(queries).astype(np.int64)


@settings(max_examples=120, deadline=None)
@given(stores())
def test_the_capped_directory_equals_the_reference(store):
    seed, row_ids, max_bytes, block = store
    rows = _queries(np.random.default_rng(seed), row_ids)
    locator = RowLocator.build(row_ids, max_bytes=max_bytes, block=block)
    assert locator.nbytes <= max_bytes
    got = locator(rows.reshape(-1, 2) if rows.size % 2 == 0 else rows)
    np.testing.assert_array_equal(got.reshape(-1), locate_reference(row_ids, rows))


@pytest.mark.parametrize("max_bytes", [16, 64, 1024, DEFAULT_MAX_BYTES])
def test_a_memory_map_gives_the_same_directory(tmp_path, max_bytes):
    rng = np.random.default_rng(3)
    ids = np.concatenate([np.arange(3000), 10**9 + rng.choice(10**8, 4000, replace=False)])
    row_ids = np.append(np.unique(ids).astype(np.int64), SENTINEL)
    np.save(tmp_path / "row_ids.npy", row_ids)
    mapped = np.load(tmp_path / "row_ids.npy", mmap_mode="r")
    in_ram = RowLocator.build(row_ids, max_bytes=max_bytes)
    from_file = RowLocator.build(mapped, max_bytes=max_bytes, block=333)
    assert from_file.shift == in_ram.shift
    np.testing.assert_array_equal(from_file.starts, in_ram.starts)
    rows = _queries(rng, row_ids)
    np.testing.assert_array_equal(from_file(rows), locate_reference(row_ids, rows))
    # a slice of a mapping (its offset inside the mapping is not the file's header)
    np.save(tmp_path / "long.npy", np.concatenate([[7, 1], row_ids]))
    sliced = np.load(tmp_path / "long.npy", mmap_mode="r")[2:]
    np.testing.assert_array_equal(
        RowLocator.build(sliced, max_bytes=max_bytes, block=50)(rows),
        locate_reference(row_ids, rows),
    )


def test_a_copy_on_write_map_keeps_its_changes(tmp_path):
    """The build lets a read-only map's pages go; a copy-on-write map's changed pages must stay
    (a read-only view of one included)."""
    row_ids = np.append(np.arange(0, 3_000_000, 7, dtype=np.int64), SENTINEL)
    np.save(tmp_path / "row_ids.npy", row_ids)
    changed = np.load(tmp_path / "row_ids.npy", mmap_mode="c")
    changed[: row_ids.size - 1] += 1  # still ascending, in every page
    view = changed.view()
    view.flags.writeable = False
    rows = np.concatenate([row_ids[:-1], row_ids[:-1] + 1])
    for ids in (changed, view):
        got = RowLocator.build(ids, max_bytes=4096, block=1000)(rows)
        np.testing.assert_array_equal(got, locate_reference(np.asarray(changed), rows))


def test_a_small_store_keeps_the_fine_directory():
    row_ids = np.append(np.arange(0, 40_000, 3, dtype=np.int64), SENTINEL)
    locator = RowLocator.build(row_ids)
    assert locator.ids_per_bucket <= IDS_PER_BUCKET
    assert locator.starts.dtype == np.uint32
    coarse = RowLocator.build(row_ids, max_bytes=1024)
    assert coarse.nbytes <= 1024 and coarse.ids_per_bucket > 40


@pytest.mark.parametrize("stored", [5_200_000, 200_000_000, 768_000_000, 6_000_000_000])
def test_the_directory_stays_under_its_cap_at_any_size(stored):
    top = stored + stored // 3  # the ids a layout spans, most occupied
    itemsize = 4 if stored < 2**32 else 8
    shift = directory_shift(stored, top, itemsize, DEFAULT_MAX_BYTES)
    assert ((top >> shift) + 2) * itemsize <= DEFAULT_MAX_BYTES
    fine = directory_shift(stored, top, itemsize, 2**62)  # about two ids a bucket
    if shift > fine:  # coarser only as far as the cap needs
        assert ((top >> (shift - 1)) + 2) * itemsize > DEFAULT_MAX_BYTES
    assert (shift == fine) == (((top >> fine) + 2) * itemsize <= DEFAULT_MAX_BYTES)


@pytest.mark.parametrize(
    ("row_ids", "max_bytes", "match"),
    [
        (np.zeros(0, np.int64), DEFAULT_MAX_BYTES, "sentinel"),
        (np.zeros((2, 2), np.int64), DEFAULT_MAX_BYTES, "sentinel"),
        (np.array([5, 3, 9, SENTINEL]), DEFAULT_MAX_BYTES, "ascending"),
        (np.array([5, 3, 9, SENTINEL]), 16, "ascending"),
        (np.array([9, 3, 5, SENTINEL]), DEFAULT_MAX_BYTES, "ascending"),
        (np.array([-4, 3, 9, SENTINEL]), DEFAULT_MAX_BYTES, "non-negative"),
        (np.array([-(2**62), -5, SENTINEL]), DEFAULT_MAX_BYTES, "non-negative"),
        (np.array([3, -(2**62), SENTINEL]), DEFAULT_MAX_BYTES, "non-negative"),
        (np.array([1, 3, SENTINEL]), 15, "at least 16"),
    ],
)
def test_a_bad_store_or_cap_is_refused(row_ids, max_bytes, match):
    with pytest.raises(ValueError, match=match):
        RowLocator.build(row_ids, max_bytes=max_bytes, block=2)
