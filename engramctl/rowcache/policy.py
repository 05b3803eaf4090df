"""The pager's cache policy, torch-free: which rows stay in a layer's row cache, which slots a
batch may take, and the configuration the pager and ``cache-plan`` share.

:data:`PAGER` (a frozen :class:`PagerConfig`) holds what paging decides without torch: the batches
in flight, the host staging buffers, the default and the smallest cache it accepts.
:class:`LruSlots` is the one eviction policy: a batch's cached rows are hits and are stamped with
the batch first; misses take never-used slots while there are enough, else evict the least
recently used rows, by (last batch, row id), among the slots no batch in flight reads
(``last_used < batch - in_flight``). :class:`engramctl.model.serve.paging.DeviceRowCache` adds the
device copy of the rows; ``cache-plan``'s ``pager`` curve (:mod:`engramctl.cacheplan.lru`) models
this policy exactly, from the same :data:`PAGER`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EngramError, UsageError

NEVER_USED = -(2**62)  # LRU stamp of an empty slot


class CacheTooSmall(EngramError):
    """A batch needs more distinct rows of a layer than its cache can give while the batches in
    flight keep theirs. ``remedy`` says what the command at hand can change: ``eval`` (the
    default) has ``--batch``, ``generate`` only ``--cache-rows`` (:meth:`with_remedy`)."""

    def __init__(self, needed: int, in_flight: int, capacity: int, remedy: str = ""):
        self.needed, self.in_flight, self.capacity = needed, in_flight, capacity
        self.remedy = remedy or "raise --cache-rows or lower --batch"
        super().__init__(
            f"--cache-rows too small: a batch needs {needed} distinct rows of one layer with "
            f"{in_flight} more batches in flight, but its cache holds {capacity}; {self.remedy}"
        )

    def with_remedy(self, remedy: str) -> CacheTooSmall:
        """The same refusal, naming another remedy."""
        return CacheTooSmall(self.needed, self.in_flight, self.capacity, remedy)


@dataclass(frozen=True)
class PagerConfig:
    """What the row pager decides without torch.

    Attributes
    ----------
    in_flight : batches the pager may still be reading while it prepares the next one (one
        queued, one being consumed): their slots are never evicted.
    default_cache_rows : the device row-cache budget over all layers when none is given
        (``--cache-rows``).
    min_cache_rows : the smallest ``--cache-rows`` accepted.
    """

    in_flight: int = 2
    default_cache_rows: int = 1 << 18
    min_cache_rows: int = 1

    @property
    def host_buffers(self) -> int:
        """Host staging buffers per layer: a ring of ``in_flight + 2``."""
        return self.in_flight + 2

    def check_cache_rows(self, cache_rows: int) -> None:
        """Refuse a cache budget below :attr:`min_cache_rows` (a usage error)."""
        if cache_rows < self.min_cache_rows:
            raise UsageError(
                f"--cache-rows must be at least {self.min_cache_rows}, got {cache_rows}"
            )


PAGER = PagerConfig()  # the pager's configuration, read by the pager and by cache-plan


class LruSlots:
    """One layer's cache slots: the row in each, LRU stamps, the row -> slot map.

    Parameters
    ----------
    capacity : slots of this layer's cache.
    config : the pager configuration (batches in flight).
    """

    def __init__(self, capacity: int, config: PagerConfig = PAGER):
        from .slotmap import RowSlotMap  # numba: not imported with the CLI's option enums

        self.capacity = capacity
        self.config = config
        self.slot_of_row = RowSlotMap(capacity)  # O(cache rows), not O(table rows)
        self.row_of_slot = np.full(capacity, -1, dtype=np.int64)
        self.last_used = np.full(capacity, NEVER_USED, dtype=np.int64)
        self.filled = 0  # slots 0..filled-1 have held a row; the rest were never used

    def assign(self, unique_rows: np.ndarray, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``unique_rows`` (distinct, one batch) and the mask of misses to fill."""
        slots = self.slot_of_row.lookup(unique_rows)
        miss = slots < 0
        n_miss = int(miss.sum())
        if n_miss and n_miss <= self.capacity - self.filled:  # never-used slots first
            free = np.arange(self.filled, self.filled + n_miss, dtype=np.int64)
            self.filled += n_miss
            self.row_of_slot[free] = unique_rows[miss]
            self.slot_of_row.insert(unique_rows[miss], free)
            slots[miss] = free
        elif n_miss:
            # Victims: least recently used slots not read by this batch or any batch in flight.
            self.last_used[slots[~miss]] = batch_index
            free = np.flatnonzero(self.last_used < batch_index - self.config.in_flight)
            if len(free) < n_miss:
                raise CacheTooSmall(len(unique_rows), self.config.in_flight, self.capacity)
            if len(free) > n_miss:
                free = self.victims(free, n_miss)
            self.filled = self.capacity  # the empty slots had the oldest stamps: all taken now
            evicted = self.row_of_slot[free]
            self.slot_of_row.remove(evicted[evicted >= 0])
            self.row_of_slot[free] = unique_rows[miss]
            self.slot_of_row.insert(unique_rows[miss], free)
            slots[miss] = free
        self.last_used[slots] = batch_index
        return slots, miss

    def victims(self, free: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` slots of ``free`` with the lowest (last batch, row id).

        Among rows a batch used last, the lower row id goes first: the order in which
        ``cache-plan``'s trace lists a batch's rows, so its ``pager`` curve is this policy exactly.
        O(len(free)): a partition by stamp, then one by row id among the stamp at the boundary.
        """
        stamps = self.last_used[free]
        boundary = np.partition(stamps, count - 1)[count - 1]
        below = free[stamps < boundary]
        tied = free[stamps == boundary]
        need = count - len(below)
        if need < len(tied):
            tied = tied[np.argpartition(self.row_of_slot[tied], need - 1)[:need]]
        return np.concatenate([below, tied])
