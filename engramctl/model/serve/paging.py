"""Row paging: serve Engram table rows to the model from a device LRU cache, prefetched.

Engram lookups are known from token ids alone, so a batch's rows can be fetched before its forward
pass. :class:`RowPager` runs, on a background thread one batch ahead of the model: hash the batch on
the CPU (every Engram layer), deduplicate the row ids, find which rows the device cache lacks,
choose their slots (the torch-free policy of :mod:`engramctl.rowcache.policy`: least recently
used first, by batch and then row id, never a slot an in-flight batch reads), gather the missing
rows from the table into reusable (pinned, on CUDA) host buffers and decode them to float32.
``engramctl cache-plan`` models this policy exactly (its ``pager`` curve).
The consumer copies them into the cache asynchronously (``non_blocking`` on a side CUDA stream) and
indexes the cache. :class:`ResidentRows` keeps whole layers on the device instead (``--resident``);
both produce bit-identical rows, so the model's logits are identical.

Memory: the pager's row -> slot map per layer is a hash table of the cached rows only
(:class:`engramctl.rowcache.slotmap.RowSlotMap`, ~24 bytes per cache row), whatever the table size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..._background import background_iter
from ...errors import EngramError
from ...rowcache.policy import PAGER, LruSlots
from ...rowcache.static import StaticHostTier, check_static_fits, load_static_rows
from ...rowcache.tiers import HostTier, TierConfig
from ...table.core.dtypes import decode_rows, row_bytes, row_width, storage_dtype

log = logging.getLogger(__name__)


@dataclass
class PagingStats:
    """Counters of one paged (or resident) run; ``to_dict`` is the ``--json`` shape.

    Every distinct row of a batch is served by one tier: the device cache (``cache_hits``), else
    the host tier (``host_hits``), else the table (``storage_reads``; without a host tier these
    are the ``cache_misses``).
    """

    mode: str = "paged"  # "paged" or "resident"
    batches: int = 0
    rows_requested: int = 0  # row lookups (positions x heads), all layers
    unique_rows: int = 0  # distinct rows per batch, summed
    cache_hits: int = 0  # unique rows already on the device
    cache_misses: int = 0  # unique rows the device cache lacked
    host_hits: int = 0  # device misses served by the host tier
    storage_reads: int = 0  # unique rows gathered from the table
    bytes_read: int = 0  # bytes gathered from the table (storage dtype)
    bytes_copied: int = 0  # row bytes copied host -> device (float32)
    wait_seconds: float = 0.0  # time the forward pass waited for rows
    hash_seconds: float = 0.0  # background time hashing batches
    prepare_seconds: float = 0.0  # background time: dedupe, gather, decode
    prefetch_rows: int = 0  # rows read ahead from the table (--prefetch-depth)
    prefetch_seconds: float = 0.0  # time the prefetch thread spent reading them
    cache_rows: int = 0  # device cache capacity, all layers
    host_rows: int = 0  # host tier capacity, all layers (0: no host tier)
    host_loaded_rows: int = 0  # rows loaded into a static host tier at start (--host-static)
    tiers: dict | None = None  # the TierConfig served with (None: resident)

    @property
    def hit_rate(self) -> float | None:
        """Cached rows over rows looked up; ``None`` when resident (no cache: every row is on
        the device)."""
        if self.mode == "resident":
            return None
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0

    @property
    def host_hit_rate(self) -> float | None:
        """Host-tier hits over the rows the device cache lacked; ``None`` without a host tier."""
        if not self.host_rows:
            return None
        return self.host_hits / self.cache_misses if self.cache_misses else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "hit_rate": self.hit_rate, "host_hit_rate": self.host_hit_rate}


def free_device_bytes(device) -> int:
    """Free memory of a device (CUDA: driver figure; CPU: available physical memory)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # MemAvailable counts reclaimable page cache, unlike the free-pages figure
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


@dataclass
class _Prepared:
    """One batch made ready by the producer thread."""

    index: int
    batch: np.ndarray  # raw ids (B, T)
    positions: dict  # layer -> int64 (B, T, H) slot (paged) or table row (resident)
    fills: dict  # layer -> (slots int64 [M], host buffer index, M)


def hashed_batches(hasher, batches: Iterable[np.ndarray], stats=None) -> Iterator[tuple]:
    """``(index, batch, {layer: table row ids (B, T, H)})`` for each batch, in order (the time
    spent hashing is added to ``stats.hash_seconds``)."""
    for index, batch in enumerate(batches):
        t0 = time.perf_counter()
        batch = np.asarray(batch)
        row_ids = hasher.hash(batch, table_rows=True)
        if stats is not None:
            stats.hash_seconds += time.perf_counter() - t0
        yield index, batch, row_ids


def set_read_threads(table, threads: int) -> bool:
    """Give a local table's cold reader ``threads`` reads in flight (its pool restarts at that
    size on its next read); False when the table has no cold reader (remote, compressed)."""
    reader = getattr(getattr(getattr(table, "source", None), "cold", None), "reader", None)
    if reader is None or not hasattr(reader, "threads"):
        return False
    reader.close()
    reader.threads = max(1, int(threads))
    return True


class DeviceRowCache(LruSlots):
    """One layer's rows cached on the device: :class:`~engramctl.rowcache.policy.LruSlots` (the
    slots, the row in each, LRU stamps; producer side) and the device copy of the rows."""

    def __init__(self, layer_rows: int, capacity: int, dim: int, device, config=PAGER):
        import torch

        super().__init__(capacity, config)
        # empty, not zeros: a slot is always filled before it is read, and on the CPU the pages
        # of a large cache then become resident only as slots fill (a 1M-row cache of 256-value
        # rows would otherwise take 1 GiB of RSS at start).
        self.values = torch.empty((capacity, dim), dtype=torch.float32, device=device)


class _RowSource:
    """Shared pipeline: a producer thread prepares batches one ahead of the consumer."""

    mode = "paged"

    def __init__(self, table, hasher, *, device, prefetch: bool = True):
        self.table = table
        self.hasher = hasher
        self.device = device
        self.prefetch = prefetch
        self.layers = tuple(hasher.layout.layers)
        self.dim = int(table.dim)
        self.row_nbytes = row_bytes(self.dim, table.dtype)
        self.stats = PagingStats(mode=self.mode)

    # --- producer side (background thread)
    def _prepare(self, index: int, batch: np.ndarray, row_ids: dict) -> _Prepared:
        raise NotImplementedError

    def _ahead(self, hashed: Iterator[tuple]) -> Iterator[tuple]:
        """The hashed batches, possibly read ahead (the pager's prefetch); as given here."""
        return hashed

    # --- consumer side (the thread running the model)
    def _rows(self, prepared: _Prepared) -> dict:
        raise NotImplementedError

    def iterate(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, dict]]:
        """Yield ``(raw_ids_batch, {layer: rows (B, T, H*d) float32 on the device})``."""
        hashed = hashed_batches(self.hasher, batches, self.stats)
        if not self.prefetch:
            for item in hashed:
                t0 = time.perf_counter()
                prepared = self._prepare_timed(*item)
                rows = self._rows(prepared)
                self.stats.wait_seconds += time.perf_counter() - t0
                yield prepared.batch, rows
            return
        read_ahead = self._ahead(hashed)
        prepared = (self._prepare_timed(*item) for item in read_ahead)
        ahead = background_iter(prepared, ahead=1, name="engram-row-pager")
        try:
            while True:
                t0 = time.perf_counter()
                item = next(ahead, None)
                if item is None:
                    break
                rows = self._rows(item)
                self.stats.wait_seconds += time.perf_counter() - t0
                yield item.batch, rows
        finally:
            ahead.close()
            close = getattr(read_ahead, "close", None)
            if close is not None:
                close()

    def _prepare_timed(self, index: int, batch: np.ndarray, row_ids: dict) -> _Prepared:
        t0 = time.perf_counter()
        prepared = self._prepare(index, batch, row_ids)
        self.stats.prepare_seconds += time.perf_counter() - t0
        return prepared


class ResidentRows(_RowSource):
    """Every row of every Engram layer decoded to float32 on the device (``--resident``)."""

    mode = "resident"

    def __init__(self, table, hasher, *, device, prefetch: bool = True, chunk_rows: int = 1 << 16):
        import torch

        super().__init__(table, hasher, device=device, prefetch=prefetch)
        self.weights = {}
        for layer in self.layers:
            rows = table.layout.layer_rows(layer)
            need = rows * self.dim * 4
            if need > free_device_bytes(device):
                raise EngramError(
                    f"--resident: layer {layer} needs {need / 2**30:.1f} GiB on {device}, more "
                    "than is free; drop --resident to page rows instead"
                )
            weight = torch.empty((rows, self.dim), dtype=torch.float32, device=device)
            for start in range(0, rows, chunk_rows):
                ids = np.arange(start, min(rows, start + chunk_rows), dtype=np.int64)
                values = decode_rows(table.gather(layer, ids), table.dtype, self.dim)
                weight[start : start + len(ids)] = torch.from_numpy(values).to(device)
            self.weights[layer] = weight
            self.stats.bytes_read += rows * self.row_nbytes
            self.stats.bytes_copied += need
            self.stats.cache_rows += rows

    def _prepare(self, index, batch, row_ids):
        for ids in row_ids.values():
            self.stats.rows_requested += ids.size
        return _Prepared(index, batch, row_ids, {})

    def _rows(self, prepared):
        import torch

        self.stats.batches += 1
        return {
            layer: self.weights[layer][torch.from_numpy(ids).to(self.device)].flatten(2)
            for layer, ids in prepared.positions.items()
        }


class RowPager(_RowSource):
    """Page rows from the table into a device LRU cache of ``cache_rows`` rows (all layers),
    through an optional host-RAM tier, reading ahead of the batches.

    Parameters
    ----------
    table : an open table (``gather(layer, rows)``, ``layout``, ``dim``, ``dtype``).
    hasher : :class:`engramctl.hashing.NgramHasher` of the table's layout and vocab.
    device : torch device of the cache and the model.
    cache_rows : device cache capacity over all layers (split evenly; capped at table rows).
    prefetch : prepare batches on a background thread one ahead (False: inline, for tests).
    tiers : the host tier, reads in flight and read-ahead depth
        (:class:`~engramctl.rowcache.tiers.TierConfig`; its ``device_rows`` is ``cache_rows``).
        None: no host tier, no read-ahead.
    """

    def __init__(
        self, table, hasher, *, device, cache_rows: int, prefetch: bool = True, tiers=None
    ):
        import torch

        super().__init__(table, hasher, device=device, prefetch=prefetch)
        tiers = TierConfig(device_rows=cache_rows, prefetch_depth=0) if tiers is None else tiers
        tiers = replace(tiers, device_rows=cache_rows)
        tiers.check()
        self.tiers = tiers
        n_layers = len(self.layers)
        self.caches, self.hosts = {}, {}
        total = 0
        for layer in self.layers:
            layer_rows = table.layout.layer_rows(layer)
            capacity = tiers.device_rows_per_layer(layer_rows, n_layers)
            total += capacity
            self.caches[layer] = capacity
            if tiers.host_tier:
                host_rows = tiers.host_rows_per_layer(layer_rows, n_layers, self.row_nbytes)
                tiers.check_host_rows(host_rows, capacity, layer, n_layers)
                self.hosts[layer] = host_rows
        need = total * self.dim * 4
        if need > free_device_bytes(device):
            raise EngramError(
                f"--cache-rows {cache_rows}: the cache needs {need / 2**30:.1f} GiB on {device}, "
                f"more than is free; lower --cache-rows"
            )
        self.caches = {
            layer: DeviceRowCache(table.layout.layer_rows(layer), cap, self.dim, device)
            for layer, cap in self.caches.items()
        }
        self.hosts = self._host_tiers(table, self.hosts)
        self.stats.cache_rows = total
        self.stats.host_rows = sum(h.capacity for h in self.hosts.values())
        self.stats.tiers = tiers.to_dict()
        set_read_threads(table, tiers.read_threads)
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        # On CUDA, an event per consumed batch marks "the forward passes issued so far": a copy
        # may overwrite slots only once the passes that could still read them have run.
        self.forward_events: list = []
        self.buffers = {layer: [None] * PAGER.host_buffers for layer in self.layers}
        self.buffer_events = {layer: [None] * PAGER.host_buffers for layer in self.layers}

    def _host_tiers(self, table, capacities: dict) -> dict:
        """The host tier of each layer: LRU, or the static rows of ``--host-static``, checked
        against the table's layout and the tier's rows, and read from the table now."""
        width, stored = row_width(self.dim, table.dtype), storage_dtype(table.dtype)
        path = self.tiers.host_static
        if path is None:
            return {layer: HostTier(cap, width, stored) for layer, cap in capacities.items()}
        rows = load_static_rows(path, table.layout, layers=tuple(capacities))
        tiers = {}
        for layer, cap in capacities.items():
            check_static_fits(rows[layer], cap, layer, path)
        for layer, cap in capacities.items():
            tiers[layer] = StaticHostTier(cap, rows.pop(layer), width, stored)
            tiers[layer].load(lambda ids, layer=layer: table.gather(layer, ids))
            self.stats.host_loaded_rows += len(tiers[layer].rows)
        return tiers

    # --- read-ahead (a thread of its own, ``prefetch_depth`` batches ahead of the producer)
    def _ahead(self, hashed):
        if self.tiers.prefetch_depth < 1:
            return hashed
        items = (self._read_ahead(item) for item in hashed)
        return background_iter(items, ahead=self.tiers.prefetch_depth, name="engram-read-ahead")

    def _read_ahead(self, item: tuple) -> tuple:
        """Read from the table the rows of a coming batch that no tier holds now, and drop them:
        the reads (and their block checks) are done when the producer gathers them, from the page
        cache. A hint only: the caches' state is read, never changed, so what each tier serves is
        the same with or without it."""
        t0 = time.perf_counter()
        for layer, row_ids in item[2].items():
            unique = np.unique(row_ids)
            tier = self.hosts.get(layer)
            held = tier.contains(unique) if tier is not None else None
            if held is None:
                held = self.caches[layer].slot_of_row.lookup(unique) >= 0
            coming = unique[~held]
            if len(coming):
                self.table.gather(layer, coming)
                self.stats.prefetch_rows += len(coming)
        self.stats.prefetch_seconds += time.perf_counter() - t0
        return item

    def _host_buffer(self, layer: int, slot: int, rows: int):
        """A reusable (pinned on CUDA) float32 host buffer with room for ``rows`` rows."""
        import torch

        event = self.buffer_events[layer][slot]
        if event is not None:
            event.synchronize()  # its previous copy to the device has finished
        buffer = self.buffers[layer][slot]
        if buffer is None or buffer.shape[0] < rows:
            size = max(rows, 1024, 0 if buffer is None else 2 * buffer.shape[0])
            buffer = torch.empty((size, self.dim), dtype=torch.float32, pin_memory=self.cuda)
            self.buffers[layer][slot] = buffer
        return buffer

    def _stored_rows(self, layer: int, unique: np.ndarray, miss: np.ndarray, index: int):
        """The stored rows of ``unique[miss]`` (the device's misses): from the host tier (LRU: it
        admits every row of the batch and reads what it lacks from the table; static: its rows,
        the others read from the table); or, without one, from the table. Counts which tier
        served them."""
        stats = self.stats
        host = self.hosts.get(layer)
        if host is None:
            stats.storage_reads += int(miss.sum())
            return self.table.gather(layer, unique[miss])
        rows, hits, reads = host.stored(
            unique, miss, index, lambda rows: self.table.gather(layer, rows)
        )
        stats.host_hits += hits
        stats.storage_reads += reads
        return rows

    def _prepare(self, index, batch, row_ids_by_layer):
        fills, positions = {}, {}
        stats = self.stats
        for layer, row_ids in row_ids_by_layer.items():
            unique, inverse = np.unique(row_ids, return_inverse=True)
            if self.hosts:  # the host tier's limit first: the device cache's is higher still
                self.hosts[layer].check_batch(len(unique))
            slots, miss = self.caches[layer].assign(unique, index)
            n_miss = int(miss.sum())
            buffer_index = index % PAGER.host_buffers
            reads_before = stats.storage_reads
            if n_miss:
                buffer = self._host_buffer(layer, buffer_index, n_miss)
                staged = buffer.numpy()[:n_miss]
                if not self.hosts and self.table.dtype == "float32":  # straight into staging
                    self.table.gather(layer, unique[miss], out=staged)
                    stats.storage_reads += n_miss
                else:
                    raw = self._stored_rows(layer, unique, miss, index)
                    staged[...] = decode_rows(raw, self.table.dtype, self.dim)
            elif self.hosts and not self.tiers.host_static:  # LRU: the host tier sees every row
                self._stored_rows(layer, unique, miss, index)
            positions[layer] = slots[inverse.reshape(row_ids.shape)]  # (B, T, H) cache slots
            fills[layer] = (slots[miss], buffer_index, n_miss)
            stats.rows_requested += row_ids.size
            stats.unique_rows += len(unique)
            stats.cache_misses += n_miss
            stats.cache_hits += len(unique) - n_miss
            stats.bytes_read += (stats.storage_reads - reads_before) * self.row_nbytes
            stats.bytes_copied += n_miss * self.dim * 4
        return _Prepared(index, batch, positions, fills)

    def _rows(self, prepared):
        import torch

        self.stats.batches += 1
        if self.cuda:
            issued = torch.cuda.Event()
            issued.record(torch.cuda.current_stream(self.device))  # forward passes up to k-1
            self.forward_events = [*self.forward_events[-1:], issued]
        out = {}
        for layer, (fill_slots, buffer_index, n_miss) in prepared.fills.items():
            cache = self.caches[layer].values
            if n_miss:
                host = self.buffers[layer][buffer_index][:n_miss]
                slots = torch.from_numpy(fill_slots)
                if self.cuda:
                    # Copy on a side stream; the model's stream waits only for this copy.
                    with torch.cuda.stream(self.copy_stream):
                        if len(self.forward_events) == 2:  # passes up to k-2 read evicted slots
                            self.copy_stream.wait_event(self.forward_events[0])
                        device_rows = host.to(self.device, non_blocking=True)
                        device_slots = slots.to(self.device, non_blocking=True)
                        cache.index_copy_(0, device_slots, device_rows)
                        event = torch.cuda.Event()
                        event.record(self.copy_stream)
                    torch.cuda.current_stream(self.device).wait_event(event)
                    self.buffer_events[layer][buffer_index] = event
                else:
                    cache.index_copy_(0, slots, host)
            index = torch.from_numpy(prepared.positions[layer]).to(self.device, non_blocking=True)
            out[layer] = cache[index].flatten(2)  # (B, T, H*d)
        return out


def make_row_source(
    table, hasher, *, device, resident: bool, cache_rows: int, prefetch=True, tiers=None
):
    """:class:`ResidentRows` or :class:`RowPager` for ``--resident`` / ``--cache-rows`` (and the
    host tier and read-ahead of ``tiers``, a :class:`~engramctl.rowcache.tiers.TierConfig`)."""
    if resident:
        return ResidentRows(table, hasher, device=device, prefetch=prefetch)
    return RowPager(
        table, hasher, device=device, cache_rows=cache_rows, prefetch=prefetch, tiers=tiers
    )
