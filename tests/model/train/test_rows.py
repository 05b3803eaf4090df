"""The out-of-core write-back buffer against a plain dict, and the moment store's naming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from engramctl.model.train.out_of_core import WriteBuffer, default_moments_path  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 200), min_size=1, max_size=30), min_size=1, max_size=12))
def test_write_buffer_is_a_map_from_row_to_latest_values(steps):
    dim = 3
    buffer = WriteBuffer(capacity=10_000, dim=dim)
    model: dict[int, tuple] = {}
    for k, ids in enumerate(steps):
        ids = np.array(sorted(ids), dtype=np.int64)
        rows = (ids[:, None] * 10 + k + np.arange(dim)).astype(np.float32)
        t = np.full(len(ids), k, dtype=np.float32)
        buffer.put(ids, rows, rows + 1, rows + 2, t)
        for i, row_id in enumerate(ids.tolist()):
            model[row_id] = (rows[i], k)
        assert np.all(np.diff(buffer.ids) > 0) and len(buffer) == len(model)
    probe = np.arange(0, 205, dtype=np.int64)
    present, slots = buffer.find(probe)
    assert present.tolist() == [i in model for i in probe.tolist()]
    for row_id, slot in zip(probe[present].tolist(), slots.tolist(), strict=True):
        rows, k = model[row_id]
        np.testing.assert_array_equal(buffer.rows[slot], rows)
        np.testing.assert_array_equal(buffer.v[slot], rows + 2)
        assert buffer.t[slot] == k
    buffer.clear()
    assert len(buffer) == 0 and not buffer.find(probe)[0].any()


def test_default_moments_path_is_a_sibling():
    assert default_moments_path("/x/t.zarr") == Path("/x/t.adam.zarr")
    assert default_moments_path("/x/table") == Path("/x/table.adam.zarr")
