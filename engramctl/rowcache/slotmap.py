"""The pager's row -> cache slot map: an open-addressing hash table, O(cache rows) memory.

A DeepSeek-V4.1 layer has 384M rows; a map with an entry per table row (4 bytes each) would hold
1.5 GB per layer for a cache of a million rows. :class:`RowSlotMap` keeps only the rows in the
cache: int64 keys and int32 values in power-of-two arrays at most half full (linear probing,
deletion by backward shift, so no tombstones and lookups never slow down with churn): about
24 bytes per cache row. Batched numba kernels look up, insert and remove whole arrays of rows
at a time. :class:`RowSlotMapReference` (a dict) is the specification the tests hold them to.
"""

from __future__ import annotations

import numpy as np

from .._numba import njit
from ..errors import EngramError

EMPTY = -1  # key of an empty bucket (table rows are >= 0)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _bucket(key, shift, mask):
    return np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)) & mask


@njit(cache=True, inline="always")
def _probe(keys, key, shift, mask):
    """The bucket holding ``key``, or the empty bucket that ends its probe run (linear probing
    from its home bucket): the one probe loop of the three kernels."""
    b = _bucket(key, shift, mask)
    while keys[b] != EMPTY and keys[b] != key:
        b = (b + 1) & mask
    return b


@njit(cache=True)
def _lookup_kernel(keys, values, shift, queries, out):
    """keys (m,) int64, values (m,) int32, queries (n,) int64 -> out (n,) int64 slot or -1."""
    mask = keys.shape[0] - 1
    for i in range(queries.shape[0]):
        b = _probe(keys, queries[i], shift, mask)
        out[i] = values[b] if keys[b] != EMPTY else -1


@njit(cache=True)
def _insert_kernel(keys, values, shift, new_keys, new_values):
    """Insert (or overwrite) each key; returns how many keys were new."""
    mask = keys.shape[0] - 1
    added = 0
    for i in range(new_keys.shape[0]):
        b = _probe(keys, new_keys[i], shift, mask)
        if keys[b] == EMPTY:
            added += 1
        keys[b] = new_keys[i]
        values[b] = new_values[i]
    return added


@njit(cache=True)
def _remove_kernel(keys, values, shift, old_keys):
    """Remove each key present (backward-shift deletion); returns how many were removed."""
    mask = keys.shape[0] - 1
    removed = 0
    for i in range(old_keys.shape[0]):
        b = _probe(keys, old_keys[i], shift, mask)
        if keys[b] == EMPTY:
            continue
        removed += 1
        hole = b
        j = (b + 1) & mask
        while keys[j] != EMPTY:  # move back entries whose home bucket is not in (hole, j]
            home = _bucket(keys[j], shift, mask)
            if ((j - home) & mask) >= ((j - hole) & mask):
                keys[hole] = keys[j]
                values[hole] = values[j]
                hole = j
            j = (j + 1) & mask
        keys[hole] = EMPTY
    return removed


class RowSlotMap:
    """Map of table rows (int64 >= 0) to cache slots, for at most ``capacity`` rows at once."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise EngramError(f"a row slot map needs a capacity of at least 1, got {capacity}")
        buckets = 16
        while buckets < 2 * capacity:  # at most half full: short probe runs
            buckets *= 2
        self.capacity = capacity
        self.shift = 64 - buckets.bit_length() + 1
        self.keys = np.full(buckets, EMPTY, dtype=np.int64)
        self.values = np.zeros(buckets, dtype=np.int32)
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def __len__(self) -> int:
        return self.size

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """Slot of each row (int64), ``-1`` where the row is not in the cache."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(rows.shape[0], dtype=np.int64)
        _lookup_kernel(self.keys, self.values, self.shift, rows, out)
        return out

    def insert(self, rows: np.ndarray, slots: np.ndarray) -> None:
        """Map each of ``rows`` (>= 0) to its slot; a row already present is remapped."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        slots = np.ascontiguousarray(slots, dtype=np.int32)
        if rows.shape != slots.shape or (rows.size and rows.min() < 0):
            raise EngramError("row slot map: rows must be >= 0, one slot per row")
        if self.size + rows.shape[0] > self.capacity and (
            self.size + int((self.lookup(rows) < 0).sum()) > self.capacity
        ):
            raise EngramError(f"row slot map: more than {self.capacity} rows")
        self.size += int(_insert_kernel(self.keys, self.values, self.shift, rows, slots))

    def remove(self, rows: np.ndarray) -> None:
        """Forget each of ``rows`` (rows not present are ignored)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.size -= int(_remove_kernel(self.keys, self.values, self.shift, rows))


class RowSlotMapReference:
    """The specification: a dict with the same three batched operations."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.map: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.map)

    def lookup(self, rows) -> np.ndarray:
        return np.array([self.map.get(int(r), -1) for r in rows], dtype=np.int64)

    def insert(self, rows, slots) -> None:
        self.map.update(zip((int(r) for r in rows), (int(s) for s in slots), strict=True))

    def remove(self, rows) -> None:
        for r in rows:
            self.map.pop(int(r), None)
