"""The cold path of :class:`~engramctl.table.sources.chunked.ChunkedSource`: rows of chunks that
are not in the page cache, read with many reads in flight and checked per block.

Every gather on a local table of uncompressed chunks asks :meth:`ColdGather.route` which of the
chunks it touches are *warm*. A chunk is warm when its file is in the page cache (``mincore``:
at least ``WARM_FRACTION`` of its pages; the map is advised ``MADV_RANDOM``, so a missing page
faults in alone): its rows are copied out of the memory map by the numba kernel, as before (the
chunk is checked whole the first time, from memory, which is cheap). Any other chunk is
*cold*. A verdict, warm or cold, holds for ``WARM_SECONDS`` before the chunk is measured again,
so a page-cached table pays nothing per gather and a cold one a ``mincore`` per chunk every
two seconds. Cold chunks: :meth:`ColdGather.read_rows` reads its rows with the parallel reader
(:mod:`engramctl.table.sources.coldread`), never through a page fault.

What a cold row costs depends on what is known about its bytes:

- its chunk was checked whole before, or the table is opened with ``check_chunks=False``: the
  4 KiB page(s) holding it;
- the layer has block checksums (:mod:`engramctl.table.core.blocksums`) and the row's block was
  not checked yet: the whole block (64 KiB), checked against its CRC-32C, then remembered as
  checked; later rows of the block read their pages only;
- no block checksums (a table made before them): the whole chunk, checked against the
  manifest's CRC-32, once (a note says so once; ``engramctl verify --add-block-checksums`` adds
  them).

Bytes are never returned before their check passed: a block or chunk that fails raises an
:class:`~engramctl.errors.EngramError` naming layer, chunk, block and what to run.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections import OrderedDict

import numpy as np

from ...errors import EngramError
from ..core.blocksums import BlockSums, crc32c_spans
from ..core.codec import crc32_of
from ._gather import CHUNK_LOADED, CHUNK_UNWRITTEN, copy_spans
from .coldread import (
    COALESCE_GAP,
    PAGE,
    READ_THREADS,
    WARM_FRACTION,
    WINDOW_BYTES,
    ParallelReader,
    ShortRead,
    open_random,
    plan_runs,
    resident,
    window_positions,
)

log = logging.getLogger(__name__)
WARM_SECONDS = 2.0  # a chunk seen in the page cache is trusted warm this long
MODE_PAGES, MODE_BLOCKS, MODE_CHUNK = 0, 1, 2


def _fd_budget() -> int:
    """Chunk files kept open: a quarter of the soft descriptor limit, 16 to 4,096."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
    except (ImportError, ValueError, OSError):
        soft = 1024
    return max(16, min(4096, soft // 4))


class _LayerState:
    """What the cold path knows of one layer: warm deadlines, whole-chunk and block checks.

    ``usable[c]``: chunk ``c`` has a block record whose tag is the manifest's CRC-32 of it;
    ``block_ok[c, b]``: block ``b`` of it was read and checked (one byte per block: 0.025% of
    the table at 4 KiB blocks, allocated only where block checksums exist)."""

    def __init__(self, n_chunks: int, sums: BlockSums | None, manifest: dict):
        self.warm_until = np.zeros(n_chunks, dtype=np.float64)
        self.cold_until = np.zeros(n_chunks, dtype=np.float64)  # measured cold: not re-probed
        self.checked = np.zeros(n_chunks, dtype=bool)  # chunk checked whole (or trusted)
        self.sums = sums
        self.usable = np.zeros(n_chunks, dtype=bool)
        self.block_ok = None
        if sums is not None:
            crc = np.full(n_chunks, -1, dtype=np.int64)
            for c, entry in manifest.items():
                crc[c] = int(entry[0])
            records = sums.records
            self.usable = (records[:, 0] == 1) & (records[:, 1].astype(np.int64) == crc)
            self.block_ok = np.zeros((n_chunks, sums.blocks_per_chunk), dtype=bool)


class ColdGather:
    """Routing and cold reads for one :class:`ChunkedSource` (which holds its mutex around
    every call)."""

    def __init__(self, source, *, threads: int = READ_THREADS):
        self.source = source
        self.meta = source.meta
        self.reader = ParallelReader(threads)
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._fd_budget = _fd_budget()
        self._layers: dict[int, _LayerState] = {}
        self._noted_whole = False
        self.counters = {"warm_chunks": 0, "cold_chunks": 0, "cold_rows": 0, "bytes_read": 0}

    # ------------------------------------------------------------------ state
    def layer(self, layer_id: int) -> _LayerState:
        state = self._layers.get(layer_id)
        if state is None:
            n_chunks = self.meta.layer(layer_id).n_chunks(self.meta.chunk_rows)
            sums = None
            if self.source.check_chunks:
                sums = BlockSums.open(self.source.store, self.meta, layer_id)
            manifest = self.source.manifest.get(layer_id, {})
            state = self._layers[layer_id] = _LayerState(n_chunks, sums, manifest)
        return state

    def forget(self, layer_id: int, chunk_index: int) -> None:
        """A chunk was rewritten: drop what is known of it."""
        self._layers.pop(layer_id, None)  # its block record changed too: start over
        fd = self._fds.pop((layer_id, chunk_index), None)
        if fd is not None:
            os.close(fd)

    def _fd(self, layer_id: int, chunk_index: int) -> int:
        key = (layer_id, chunk_index)
        fd = self._fds.get(key)
        if fd is None:
            fd = open_random(self.source.chunk_path(layer_id, chunk_index))
            self._fds[key] = fd
            while len(self._fds) > self._fd_budget:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(key)
        return fd

    # ---------------------------------------------------------------- routing
    def _probe(self, layer_id: int, chunk_index: int) -> bool | None:
        """Whether the chunk's file is in the page cache (``WARM_FRACTION`` of its pages);
        ``None`` when it cannot serve cold reads (missing, wrong size, not in the manifest): the
        caller's loader decides."""
        entry = self.source.manifest.get(layer_id, {}).get(chunk_index)
        if entry is None or entry[1] != self.meta.chunk_bytes:
            return None
        try:
            fd = self._fd(layer_id, chunk_index)
            if os.fstat(fd).st_size != entry[1]:
                self.forget(layer_id, chunk_index)
                return None
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                view = np.frombuffer(mapped, dtype=np.uint8)
                try:
                    whole = resident(view.ctypes.data, view.size)
                finally:
                    del view
        except (OSError, ValueError):
            return None
        return True if whole is None else whole >= WARM_FRACTION  # unknown: the map, as before

    def route(self, layer_id: int, cache, needed: np.ndarray) -> np.ndarray | None:
        """Load the warm chunks among ``needed`` (a bool mask) into ``cache`` (the source's
        loaded chunks) and return the mask of cold ones (``None``: none)."""
        state = self.layer(layer_id)
        now = time.monotonic()
        known_warm = (cache.state == CHUNK_LOADED) & (state.warm_until > now)
        known_cold = needed & (state.cold_until > now)  # probed lately: still cold
        candidates = np.flatnonzero(
            needed & ~known_warm & ~known_cold & (cache.state != CHUNK_UNWRITTEN)
        )
        if not candidates.size and not known_cold.any():
            return None
        cold = known_cold.copy()
        to_load = []
        for c in candidates.tolist():
            whole = self._probe(layer_id, c)
            if whole is False:
                cold[c] = True
                state.warm_until[c] = 0
                state.cold_until[c] = now + WARM_SECONDS
                self.counters["cold_chunks"] += 1
                continue
            if whole:
                state.warm_until[c] = now + WARM_SECONDS
                self.counters["warm_chunks"] += 1
            if cache.state[c] != CHUNK_LOADED:
                to_load.append(c)
        if to_load:  # warm (checked whole from memory) or for the loader to judge
            self.source.load_chunks(layer_id, np.asarray(to_load, dtype=np.int64))
            for c in to_load:
                if cache.state[c] == CHUNK_LOADED:
                    state.checked[c] = True
        return cold if cold.any() else None

    # ------------------------------------------------------------------ reads
    def _units(self, layer_id: int, ids: np.ndarray):
        """Per row: its chunk, the byte range to read for it and the mode of its chunk."""
        meta, state = self.meta, self.layer(layer_id)
        chunk_rows, row_bytes, limit = meta.chunk_rows, meta.row_bytes, meta.chunk_bytes
        chunk = ids // chunk_rows
        offset = (ids - chunk * chunk_rows) * row_bytes
        start = offset // PAGE * PAGE
        stop = np.minimum(-(-(offset + row_bytes) // PAGE) * PAGE, limit)
        if not self.source.check_chunks:
            return chunk, offset, start, stop
        mode = np.where(
            state.checked[chunk], MODE_PAGES, np.where(state.usable[chunk], MODE_BLOCKS, MODE_CHUNK)
        )
        whole = mode == MODE_CHUNK
        if whole.any():
            if not self._noted_whole:
                log.warning(
                    "%s has no block checksums for some chunks: a cold read checks each of them "
                    "whole (4 MiB) the first time; engramctl verify --add-block-checksums adds "
                    "them",
                    self.source.store.url,
                )
                self._noted_whole = True
            start = np.where(whole, 0, start)
            stop = np.where(whole, limit, stop)
        blocks = mode == MODE_BLOCKS
        if blocks.any():
            bb = state.sums.block_bytes
            b0, b1 = offset // bb, (offset + row_bytes - 1) // bb
            unchecked = blocks & ~(state.block_ok[chunk, b0] & state.block_ok[chunk, b1])
            start = np.where(unchecked, b0 * bb, start)
            stop = np.where(unchecked, np.minimum((b1 + 1) * bb, limit), stop)
        return chunk, offset, start, stop

    def _crc(self, layer_id: int, chunk_index: int) -> int:
        return int(self.source.manifest[layer_id][chunk_index][0])

    def read_rows(
        self, layer_id: int, ids: np.ndarray, out: np.ndarray, positions: np.ndarray
    ) -> None:
        """Read rows ``ids`` (all in cold chunks) into ``out[positions]`` (``out``: the
        gather's buffer), checked as the module says."""
        if not ids.size:
            return
        self.counters["cold_rows"] += int(ids.size)
        out_bytes = out.view(np.uint8).reshape(out.shape[0], -1)
        chunk, offset, start, stop = self._units(layer_id, ids)
        span = self.meta.chunk_bytes
        run_chunk, run_start, run_stop, unit_run = plan_runs(chunk, start, stop, span, COALESCE_GAP)
        lengths = run_stop - run_start
        window = max(WINDOW_BYTES, span)
        before = np.cumsum(lengths) - lengths
        by_bytes = before // window
        chunk_new = np.r_[True, run_chunk[1:] != run_chunk[:-1]]
        by_chunks = (np.cumsum(chunk_new) - 1) // max(1, self._fd_budget // 2)
        bounds = np.flatnonzero(np.diff(by_bytes) | np.diff(by_chunks)) + 1
        edges = [0, *bounds.tolist(), run_chunk.size]
        order = np.argsort(unit_run, kind="stable")  # rows grouped by run, runs in order
        row_edges = np.searchsorted(unit_run[order], edges)
        staging = np.empty(0, dtype=np.uint8)
        for w in range(len(edges) - 1):
            lo, hi = edges[w], edges[w + 1]
            pos, staging = window_positions(lengths, lo, hi, staging)
            window_runs = (run_chunk[lo:hi], run_start[lo:hi], lengths[lo:hi], pos, staging)
            self._read_window(layer_id, *window_runs)
            self._check_window(layer_id, *window_runs)
            rows = order[row_edges[w] : row_edges[w + 1]]
            k = unit_run[rows] - lo
            self._check_blocks(
                layer_id, chunk[rows], offset[rows], k, run_start[lo:hi], pos, staging
            )
            sources = pos[k] + offset[rows] - run_start[lo:hi][k]
            copy_spans(staging, sources, out_bytes, positions[rows])

    def _read_window(self, layer_id, chunks, starts, lengths, pos, staging) -> None:
        fds = [self._fd(layer_id, c) for c in chunks.tolist()]
        try:
            self.reader.read(fds, starts.tolist(), lengths.tolist(), pos.tolist(), staging)
        except ShortRead as exc:
            c = int(chunks[exc.index])
            raise EngramError(
                f"chunk {c} of layer {layer_id} ({self.source.chunk_path(layer_id, c)}) is "
                "shorter than the manifest says (truncated while the table was open?); run "
                "engramctl verify"
            ) from None
        except OSError as exc:
            raise EngramError(
                f"cannot read chunks of layer {layer_id} of {self.source.store.url}: "
                f"{exc.strerror or exc}; the table is damaged or unreadable (run engramctl verify)"
            ) from None
        self.counters["bytes_read"] += int(lengths.sum())

    def _check_window(self, layer_id, chunks, starts, lengths, pos, staging) -> None:
        """Check the chunks this window read whole (no block checksums) and had not checked."""
        if not self.source.check_chunks:
            return
        state, limit = self.layer(layer_id), self.meta.chunk_bytes
        for k in np.flatnonzero((starts == 0) & (lengths == limit)).tolist():
            c = int(chunks[k])
            if state.checked[c] or state.usable[c]:
                continue  # pages or blocks cover it
            if crc32_of(staging[pos[k] : pos[k] + limit]) != self._crc(layer_id, c):
                raise EngramError(
                    f"chunk {c} of layer {layer_id} ({self.source.chunk_path(layer_id, c)}) is "
                    "damaged: its checksum does not match the manifest; run engramctl verify"
                )
            state.checked[c] = True

    def _check_blocks(self, layer_id, chunk, offset, run, starts, pos, staging) -> None:
        """Check the blocks holding these rows (of chunk ``chunk``, at byte ``offset``, read in
        run ``run`` of this window) that were not checked yet; they were read whole."""
        state = self.layer(layer_id)
        if state.sums is None or not self.source.check_chunks:
            return
        bb, limit, row_bytes = state.sums.block_bytes, self.meta.chunk_bytes, self.meta.row_bytes
        b0, b1 = offset // bb, (offset + row_bytes - 1) // bb
        two = b1 != b0
        c = np.r_[chunk, chunk[two]]
        block = np.r_[b0, b1[two]]
        k = np.r_[run, run[two]]
        todo = state.usable[c] & ~state.block_ok[c, block] & ~state.checked[c]
        if not todo.any():
            return
        c, block, k = c[todo], block[todo], k[todo]
        _, first = np.unique(c * state.sums.blocks_per_chunk + block, return_index=True)
        c, block, k = c[first], block[first], k[first]
        b_start = block * bb
        b_stop = np.minimum(b_start + bb, limit)
        at = pos[k] + b_start - starts[k]
        got = crc32c_spans(staging, at, at + (b_stop - b_start))
        want = state.sums.records[c, 2 + block]
        bad = np.flatnonzero(got != want)
        if bad.size:
            ci, bi = int(c[bad[0]]), int(block[bad[0]])
            raise EngramError(
                f"block {bi} (bytes {bi * bb}..{min((bi + 1) * bb, limit) - 1}) of chunk {ci} of "
                f"layer {layer_id} ({self.source.chunk_path(layer_id, ci)}) is damaged: its "
                "CRC-32C does not match its block checksum; run engramctl verify --deep (if the "
                "chunk passes, verify --add-block-checksums rewrites the block checksums)"
            )
        state.block_ok[c, block] = True

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
        self._layers.clear()
        self.reader.close()


__all__ = ["ColdGather", "WARM_SECONDS"]
