"""The cold path of a linked table: rows of a checkpoint's shards that are not in the page cache,
read with many reads in flight instead of page faults.

A linked layer is split into regions of ``chunk_rows`` rows (the chunks a copy would have). A
region whose weight and scale pages are all in the page cache (``mincore``) is *warm*: its rows
are copied out of the memory maps by the numba kernel, as before, and trusted warm for
``WARM_SECONDS``. Rows of other regions are read with the parallel reader
(:func:`~engramctl.table.sources.coldread.read_spans`): the 4 KiB pages holding each row's
codes and scale bytes, deduplicated and coalesced, on descriptors without readahead. A shard
that ends early (truncated under the reader) is an error naming it, never a ``SIGBUS``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ...errors import EngramError
from ._gather import copy_spans
from .coldread import (
    WARM_FRACTION,
    ParallelReader,
    ShortRead,
    advise_random,
    open_random,
    read_spans,
    resident,
)

WARM_SECONDS = 2.0
_PAGE_MASK = ~4095


def _region_resident(array: np.ndarray, start: int, stop: int) -> bool:
    """Whether rows ``[start, stop)`` of a memory-mapped ``[rows, width]`` array are in the page
    cache (``WARM_FRACTION`` of their pages; ``True`` where the system cannot tell: the map
    serves them, as before)."""
    width = array.shape[1]
    address = array.ctypes.data + start * width
    aligned = address & _PAGE_MASK
    whole = resident(aligned, (stop - start) * width + address - aligned)
    return True if whole is None else whole >= WARM_FRACTION


class LinkedCold:
    """Which regions of one linked layer are warm, and the cold reads of the others."""

    def __init__(self, layer, region_rows: int, reader: ParallelReader):
        self.layer, self.region_rows, self.reader = layer, region_rows, reader
        rows = layer.weight.shape[0]
        self.warm_until = np.zeros(max(1, -(-rows // region_rows)), dtype=np.float64)
        self.paths = sorted({str(f[0]) for f in layer.files})
        self._fds: list[int] | None = None
        for array in (layer.weight, layer.scale):  # a fault on a missing page reads that page
            advise_random(array.ctypes.data, array.nbytes)
        self.counters = {"warm_regions": 0, "cold_regions": 0, "cold_rows": 0}

    def _cold_regions(self, needed: np.ndarray) -> np.ndarray | None:
        now = time.monotonic()
        candidates = np.flatnonzero(needed & (self.warm_until <= now))
        if not candidates.size:
            return None
        rows, step = self.layer.weight.shape[0], self.region_rows
        cold = np.zeros(needed.shape[0], dtype=bool)
        for c in candidates.tolist():
            start, stop = c * step, min((c + 1) * step, rows)
            if _region_resident(self.layer.weight, start, stop) and _region_resident(
                self.layer.scale, start, stop
            ):
                self.warm_until[c] = now + WARM_SECONDS
                self.counters["warm_regions"] += 1
            else:
                cold[c] = True
                self.counters["cold_regions"] += 1
        return cold if cold.any() else None

    def gather(self, ids: np.ndarray, out: np.ndarray, kernel) -> np.ndarray:
        """Rows ``ids`` into ``out``: warm regions by ``kernel(weight, scale, ids, out)``, the
        others read cold."""
        layer = self.layer
        regions = ids // self.region_rows
        needed = np.zeros(self.warm_until.shape[0], dtype=bool)
        needed[regions] = True
        cold = self._cold_regions(needed)
        if cold is None:
            return kernel(layer.weight, layer.scale, ids, out)
        is_cold = cold[regions]
        warm = np.flatnonzero(~is_cold)
        if warm.size:
            rows = np.empty((warm.size, out.shape[1]), dtype=np.uint8)
            out[warm] = kernel(layer.weight, layer.scale, ids[warm], rows)
        positions = np.flatnonzero(is_cold)
        self.read(ids[positions], out, positions)
        return out

    def _descriptors(self) -> list[int]:
        if self._fds is None:
            fds = []
            try:
                for path in self.paths:
                    fds.append(open_random(path))
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                raise EngramError(
                    f"cannot read linked source {exc.filename}: {exc.strerror or exc}"
                ) from None
            self._fds = fds
        return self._fds

    def read(self, ids: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        """Codes and scale bytes of rows ``ids`` into ``out[positions]``, read cold."""
        layer = self.layer
        dim, scales = layer.weight.shape[1], layer.scale.shape[1]
        (w_path, w_size, *_), (s_path, s_size, *_) = layer.files[0], layer.files[1]
        w_file, s_file = self.paths.index(str(w_path)), self.paths.index(str(s_path))
        sizes = [0] * len(self.paths)
        sizes[w_file], sizes[s_file] = w_size, s_size
        n = ids.size
        files = np.r_[np.full(n, w_file), np.full(n, s_file)].astype(np.int64)
        offsets = np.r_[layer.offsets[0] + ids * dim, layer.offsets[1] + ids * scales]
        nbytes = np.r_[np.full(n, dim), np.full(n, scales)].astype(np.int64)
        self.counters["cold_rows"] += int(n)
        try:
            for staging, units, sources in read_spans(
                self.reader, self._descriptors(), files, offsets, nbytes, sizes, max(sizes) + 1
            ):
                weight = units < n
                copy_spans(staging, sources[weight], out[:, :dim], positions[units[weight]])
                copy_spans(staging, sources[~weight], out[:, dim:], positions[units[~weight] - n])
        except ShortRead as exc:
            raise EngramError(
                f"linked source {self.paths[exc.index]} ended early while reading layer "
                f"{layer.layer_id} (truncated since linking?); import the checkpoint again"
            ) from None
        except OSError as exc:
            raise EngramError(
                f"cannot read the linked sources of layer {layer.layer_id}: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        for fd in self._fds or ():
            os.close(fd)
        self._fds = None


__all__ = ["LinkedCold", "WARM_SECONDS"]
