"""The read-through kernels against their numpy specification."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.table.edits._kernels import (
    copy_rows,
    directory,
    find,
    lookup_reference,
    merge_rows,
    merge_rows_reference,
)


@settings(max_examples=60, deadline=None)
@given(
    written=st.sets(st.integers(0, 10_000), max_size=300),
    ids=st.lists(st.integers(0, 10_500), max_size=300),
)
def test_find_equals_searchsorted(written, ids):
    written = np.array(sorted(written), dtype=np.int64)
    ids = np.array(ids, dtype=np.int64)
    want = lookup_reference(written, ids)
    found, hits = find(written, ids, directory(written))
    np.testing.assert_array_equal(found, want)
    assert hits == int((want >= 0).sum())


def test_copy_rows_by_segment_and_width():
    rng = np.random.default_rng(0)
    for width, dtype in ((264, np.uint8), (64, np.float32), (65, np.uint16)):
        rows = rng.integers(0, 200, (50, width)).astype(dtype)
        out = np.zeros((20, width), dtype)
        slot = rng.integers(-1, 50, 20)
        segment = rng.integers(0, 2, 20).astype(np.int32)
        copy_rows(slot, segment, 1, rows, out)
        want = np.zeros_like(out)
        mine = (slot >= 0) & (segment == 1)
        want[mine] = rows[slot[mine]]
        np.testing.assert_array_equal(out, want)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 400),
    segments=st.integers(1, 4),
    written_share=st.sampled_from([0.0, 0.01, 0.5, 0.99, 1.0]),
    width_dtype=st.sampled_from(
        [(264, np.uint8), (64, np.float32), (65, np.uint16), (3, np.uint8)]
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_merge_rows_equals_reference(n, segments, written_share, width_dtype, seed):
    """The parallel merge equals its numpy specification for any mix of base and
    written ids, one segment (no segment/slot columns) or several."""
    width, dtype = width_dtype
    rng = np.random.default_rng(seed)
    arrays = [
        rng.integers(0, 200, (int(rng.integers(1, 60)), width)).astype(dtype)
        for _ in range(segments)
    ]
    index_size = 80
    if len(arrays) == 1:
        segment = slot = None
        limit = arrays[0].shape[0]
    else:
        segment = rng.integers(0, len(arrays), index_size).astype(np.int32)
        slot = np.array([rng.integers(0, arrays[s].shape[0]) for s in segment], dtype=np.int64)
        limit = index_size
    written = rng.random(n) < written_share
    found = np.where(written, rng.integers(0, limit, n), -1).astype(np.int64)
    base_rows = rng.integers(0, 200, (int((found < 0).sum()), width)).astype(dtype)
    want = merge_rows_reference(
        found, segment, slot, arrays, base_rows, np.zeros((n, width), dtype)
    )
    got = merge_rows(found, segment, slot, arrays, base_rows, np.zeros((n, width), dtype))
    np.testing.assert_array_equal(got, want)
