"""The read-through kernels against their numpy specification."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.table.edits._kernels import copy_rows, directory, find, lookup_reference


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
