"""The pager's row -> slot hash map agrees with a dict under any sequence of operations."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.rowcache.slotmap import RowSlotMap, RowSlotMapReference


def test_tiny_case():
    m = RowSlotMap(4)
    m.insert(np.array([384_016_681, 0, 17]), np.array([2, 0, 1]))
    assert m.lookup(np.array([0, 17, 5, 384_016_681])).tolist() == [0, 1, -1, 2]
    m.remove(np.array([17, 99]))
    assert len(m) == 2 and m.lookup(np.array([17, 0])).tolist() == [-1, 0]
    assert m.nbytes <= 16 * 12  # O(capacity): 16 buckets of an int64 key and an int32 slot


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "remove", "lookup"]),
        st.lists(st.integers(0, 200), min_size=0, max_size=12, unique=True),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_agrees_with_a_dict(operations):
    capacity = 40
    fast, spec = RowSlotMap(capacity), RowSlotMapReference(capacity)
    rng = np.random.default_rng(0)
    for op, rows in operations:
        rows = np.array(rows, dtype=np.int64)
        if op == "insert":
            rows = rows[spec.lookup(rows) < 0][: capacity - len(spec)]
            slots = rng.integers(0, capacity, size=rows.size)
            fast.insert(rows, slots)
            spec.insert(rows, slots)
        elif op == "remove":
            fast.remove(rows)
            spec.remove(rows)
        probe = np.arange(0, 201, dtype=np.int64)
        assert fast.lookup(probe).tolist() == spec.lookup(probe).tolist()
        assert len(fast) == len(spec)


def test_heavy_churn_at_capacity():
    rng = np.random.default_rng(1)
    capacity = 1000
    fast, spec = RowSlotMap(capacity), RowSlotMapReference(capacity)
    for _ in range(200):
        present = np.array(list(spec.map), dtype=np.int64)
        victims = (
            rng.choice(present, size=min(len(present), 50), replace=False)
            if len(present)
            else present
        )
        fast.remove(victims)
        spec.remove(victims)
        new = np.unique(rng.integers(0, 2**40, size=60))
        new = new[spec.lookup(new) < 0][: capacity - len(spec)]
        slots = rng.integers(0, capacity, size=new.size)
        fast.insert(new, slots)
        spec.insert(new, slots)
    keys = np.array(list(spec.map), dtype=np.int64)
    assert fast.lookup(keys).tolist() == spec.lookup(keys).tolist()
    assert len(fast) == len(spec) == capacity
