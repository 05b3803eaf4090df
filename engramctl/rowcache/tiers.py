"""The serving tiers, torch-free: one configuration object and the host-RAM row cache.

Rows reach the model through up to three tiers: the device row cache (``--cache-rows``), a
host-RAM row cache (``--host-cache``, in bytes) and the table (page cache or storage).
:class:`TierConfig` is the one configuration of them, shared by ``eval``/``generate`` (the pager,
:class:`engramctl.model.serve.paging.RowPager`) and ``cache-plan`` (which prints it and predicts
what each tier serves, :mod:`engramctl.cacheplan.tiers`): how a byte budget becomes rows per layer
is decided here, once.

:class:`HostTier` is one layer's host cache. Its admission and eviction are the pager's policy
(:class:`~engramctl.rowcache.policy.LruSlots`, the module ``cache-plan`` models), fed with *every*
distinct row of every batch, as the device cache is. Both then hold the rows of highest (last
batch, row id), so a host tier larger than the device cache holds every row the device cache
holds (inclusive): a row is a device hit, else a host hit, else a storage read, decided by the one
rank ``cache-plan``'s ``pager`` curve computes. The host tier keeps rows in the table's storage
encoding (fp8 rows are 264 B, not the 1 KiB of their float32 decoding), so a byte of RAM holds as
many rows as it can; rows are decoded into the pager's (pinned, on CUDA) staging buffers on their
way to the device. Rows are copied out of the host tier while the batch is prepared, so the host
tier keeps no batch in flight: it must hold one batch's distinct rows, no more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._system import format_bytes, parse_memory, physical_memory
from ..errors import UsageError
from .policy import PAGER, LruSlots, PagerConfig

DEFAULT_READ_THREADS = 64  # reads in flight on a cold table (table.sources.coldread.READ_THREADS)
DEFAULT_PREFETCH_DEPTH = 2  # batches whose rows are read ahead of the one being prepared
# Bookkeeping per host-tier row besides the row itself: the slot map's buckets (int64 key + int32
# value, at most half full: up to 48 B), the row id and the LRU stamp of its slot (16 B).
HOST_INDEX_BYTES = 64
HOST_POLICY = PagerConfig(in_flight=0)  # rows leave the host tier before the next batch


@dataclass(frozen=True)
class TierConfig:
    """How rows are served: device rows, host bytes, reads in flight, batches read ahead.

    Attributes
    ----------
    device_rows : device row-cache budget over all layers (``--cache-rows``; split evenly).
    host_bytes : host-RAM row cache over all layers (``--host-cache``; 0: no host tier).
    read_threads : reads in flight on a cold table (``--read-threads``).
    prefetch_depth : batches whose missing rows are read from the table ahead of the batch being
        prepared, on a background thread (``--prefetch-depth``; 0: none).
    host_static : the host tier's mode: None, LRU (admits every batch's rows); a rows file
        (``--host-static ROWS.npz``, :mod:`engramctl.rowcache.static`), static: those rows,
        loaded at start and never evicted.
    """

    device_rows: int = PAGER.default_cache_rows
    host_bytes: int = 0
    read_threads: int = DEFAULT_READ_THREADS
    prefetch_depth: int = DEFAULT_PREFETCH_DEPTH
    host_static: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        cache_rows: int = PAGER.default_cache_rows,
        host_cache: str | None = None,
        read_threads: int = DEFAULT_READ_THREADS,
        prefetch_depth: int = DEFAULT_PREFETCH_DEPTH,
        host_static=None,
    ) -> TierConfig:
        """The configuration of the command-line options, checked (:meth:`check`).

        >>> TierConfig.from_options(cache_rows=4096, host_cache="1M").host_bytes
        1048576
        """
        host = (
            0 if host_cache in (None, "", "0") else parse_memory(host_cache, option="--host-cache")
        )
        static = None if host_static is None else str(host_static)
        config = cls(int(cache_rows), host, int(read_threads), int(prefetch_depth), static)
        config.check()
        return config

    @property
    def host_tier(self) -> bool:
        return self.host_bytes > 0

    @property
    def host_mode(self) -> str:
        """``"none"``, ``"lru"`` or ``"static"`` (``--host-static``)."""
        if not self.host_tier:
            return "none"
        return "static" if self.host_static is not None else "lru"

    def check(self) -> None:
        """Refuse what cannot run, one line each (before any file is read)."""
        PAGER.check_cache_rows(self.device_rows)
        if self.prefetch_depth < 0:
            raise UsageError(f"--prefetch-depth must be 0 or more, got {self.prefetch_depth}")
        if self.read_threads < 1:
            raise UsageError(f"--read-threads must be at least 1, got {self.read_threads}")
        if self.host_bytes < 0:
            raise UsageError(f"--host-cache must be positive, got {self.host_bytes}")
        if self.host_static is not None and not self.host_tier:
            raise UsageError("--host-static loads rows into the host tier: give --host-cache SIZE")
        if self.host_static is not None and not Path(self.host_static).is_file():
            raise UsageError(
                f"--host-static {self.host_static}: no such file; write one with cache-plan "
                "--host-cache SIZE --host-static-out ROWS.npz"
            )
        ram = physical_memory()
        if ram and self.host_bytes > ram:
            raise UsageError(
                f"--host-cache {format_bytes(self.host_bytes)} is more than this machine's RAM "
                f"({format_bytes(ram)}); give less (cache-plan shows what each size serves)"
            )

    def device_rows_per_layer(self, layer_rows: int, n_layers: int) -> int:
        """Device cache rows of one layer: the budget split evenly, capped at the layer's rows."""
        return min(max(1, self.device_rows // n_layers), int(layer_rows))

    def host_rows_per_layer(self, layer_rows: int, n_layers: int, row_nbytes: int) -> int:
        """Host-tier rows of one layer: the byte budget split evenly over the layers, each row
        with its bookkeeping (:data:`HOST_INDEX_BYTES`), capped at the layer's rows."""
        per_layer = self.host_bytes // n_layers // (row_nbytes + HOST_INDEX_BYTES)
        return min(int(per_layer), int(layer_rows))

    def check_host_rows(
        self, host_rows: int, device_rows: int, layer: int, n_layers: int, *, static=None
    ) -> None:
        """A host tier that holds no row, or (LRU mode) no more rows than the device cache, serves
        nothing (it is inclusive): refuse it. A static tier holds rows of its own choosing."""
        if not self.host_tier:
            return
        size = format_bytes(self.host_bytes)
        if host_rows < 1:
            raise UsageError(
                f"--host-cache {size} holds no row of layer {layer} once split over {n_layers} "
                "layers; raise --host-cache or drop it"
            )
        static = self.host_static is not None if static is None else static
        if host_rows <= device_rows and not static:
            raise UsageError(
                f"--host-cache {size} holds {host_rows:,} rows of layer {layer}, no more than the "
                f"device cache's {device_rows:,}: it would serve nothing (it keeps every row the "
                "device cache keeps); raise --host-cache or lower --cache-rows"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class HostTier(LruSlots):  # the LRU mode (the static one: rowcache.static.StaticHostTier)
    """One layer's host-RAM row cache: :class:`LruSlots` (the pager's policy, no batch in flight)
    and the rows, in the table's storage encoding.

    Parameters
    ----------
    capacity : rows this layer's host tier holds.
    row_width, dtype : a stored row's elements and their numpy dtype (``Table.gather``'s shape).
    """

    def __init__(self, capacity: int, row_width: int, dtype):
        super().__init__(capacity, HOST_POLICY)
        self.static = False
        # empty: a slot is filled before it is read, and its pages are touched only then
        self.values = np.empty((capacity, row_width), dtype=dtype)

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` the tier holds now (a hint for prefetch; changes nothing)."""
        return self.slot_of_row.lookup(rows) >= 0

    def check_batch(self, distinct_rows: int) -> None:
        """Refuse a batch with more distinct rows than the tier holds (:class:`UsageError`)."""
        if distinct_rows > self.capacity:
            raise UsageError(
                f"--host-cache holds {self.capacity:,} rows per layer, but one batch needs "
                f"{distinct_rows:,} distinct rows of a layer; raise --host-cache or lower --batch"
            )

    def serve(self, unique_rows: np.ndarray, batch_index: int, gather) -> tuple:
        """Admit a batch's distinct rows and return ``(slots, miss)``.

        The rows the tier lacked (``miss``) are read with ``gather(rows) -> stored rows`` into
        their slots; every row of the batch is then at ``values[slots]``. A batch needing more
        distinct rows than the tier holds is refused (:class:`UsageError`).
        """
        self.check_batch(len(unique_rows))
        slots, miss = self.assign(unique_rows, batch_index)
        if miss.any():
            try:
                self.values[slots[miss]] = gather(unique_rows[miss])
            except BaseException:  # a failed read leaves no row mapped to a slot it never filled
                self.slot_of_row.remove(unique_rows[miss])
                self.row_of_slot[slots[miss]] = -1
                raise
        return slots, miss

    def stored(self, unique: np.ndarray, miss: np.ndarray, index: int, gather) -> tuple:
        """``(stored rows of unique[miss], host hits, storage reads)``: the tier admits every row
        of the batch (:meth:`serve`); ``miss`` marks the rows the device cache lacked."""
        slots, host_miss = self.serve(unique, index, gather)
        return self.values[slots[miss]], int((miss & ~host_miss).sum()), int(host_miss.sum())
