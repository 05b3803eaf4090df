"""Parallel reads of scattered byte ranges of local files: the cold path of a gather.

A row is 264 bytes and the device reads 4 KiB pages; what decides the speed of a gather from a
table that is not in the page cache is how many reads are in flight. Page faults on a memory map
are one read at a time per thread (and readahead turns each into 128 KiB), so the cold path
plans its reads instead:

1. every row becomes a *unit*: the 4 KiB pages holding it, or a whole checksum block (or chunk)
   when that has to be checked first (:mod:`engramctl.table.core.blocksums`);
2. :func:`plan_runs` sorts the units, drops repeats and merges neighbours that overlap or touch
   into *runs* (one ``preadv`` each);
3. :class:`ParallelReader` issues the runs from a pool of threads (``os.preadv`` releases the
   GIL), ``threads`` reads in flight, into one staging buffer;
4. the rows are copied out of the staging buffer by a parallel numba kernel
   (:func:`~engramctl.table.sources._gather.copy_spans`).

Files are opened with ``POSIX_FADV_RANDOM`` (no readahead). A short read (a file truncated under
the reader) is reported as :class:`ShortRead`, never a fault. :func:`plan_runs_reference` is the
plain-Python specification of the planning.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PAGE = 4096
READ_THREADS = 64  # reads in flight: virtio/NVMe devices give 4-10x more IOPS at QD32-128 than QD1
WINDOW_BYTES = 64 << 20  # staging buffer of one round of reads
# Units this close are read as one run (the gap read too): fewer, slightly larger reads. Measured
# on this project's virtio disk: +23-27% rows/s for +31% bytes at 2 pages; 8 pages no faster.
COALESCE_GAP = 2 * PAGE
# A file region this much in the page cache is served from its memory map (warm): its few
# missing pages fault in one at a time (readahead off), cheaper than reading every row cold.
WARM_FRACTION = 0.97
MADV_RANDOM = 1  # <sys/mman.h>


class ShortRead(OSError):
    """A file returned fewer bytes than a run asked for (truncated under the reader)."""

    def __init__(self, index: int, got: int, wanted: int):
        super().__init__(f"short read: {got} of {wanted} bytes")
        self.index, self.got, self.wanted = index, got, wanted


# ------------------------------------------------------------------------ planning
def page_units(offsets: np.ndarray, nbytes: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, stop)`` of the whole pages holding ``[offset, offset + nbytes)``, clipped to
    ``limit`` (the file's size)."""
    start = offsets // PAGE * PAGE
    stop = np.minimum(-(-(offsets + nbytes) // PAGE) * PAGE, limit)
    return start, stop


def plan_runs_reference(files, starts, stops, gap: int = 0) -> list[tuple[int, int, int]]:
    """Plain-Python specification of :func:`plan_runs`: sorted ``(file, start, stop)`` runs,
    units of one file that overlap, touch or lie within ``gap`` bytes merged."""
    runs: list[list[int]] = []
    for f, a, b in sorted(zip(files, starts, stops, strict=True)):
        if runs and runs[-1][0] == f and a <= runs[-1][2] + gap:
            runs[-1][2] = max(runs[-1][2], b)
        else:
            runs.append([f, a, b])
    return [tuple(r) for r in runs]


def plan_runs(
    files: np.ndarray, starts: np.ndarray, stops: np.ndarray, span: int, gap: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge byte ranges into the reads that cover them.

    Parameters
    ----------
    files, starts, stops : ndarray of int64, ``(n,)``
        Unit ``i`` is ``[starts[i], stops[i])`` of file ``files[i]``; ``stops <= span``.
    span : int
        An upper bound of every ``stop`` (files are laid end to end at multiples of it).
    gap : int
        Units of one file at most this many bytes apart are merged too (the gap is read).

    Returns
    -------
    run_file, run_start, run_stop : ndarray of int64
        The runs, sorted by file then offset; overlapping, touching or close units merged.
    unit_run : ndarray of int64, ``(n,)``
        The run holding each unit.
    """
    g_start = files * span + starts
    g_stop = files * span + stops
    order = np.lexsort((-g_stop, g_start))
    s, e, f = g_start[order], g_stop[order], files[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = (s[1:] > reach[:-1] + gap) | (f[1:] != f[:-1])
    run_of_sorted = np.cumsum(new) - 1
    heads = np.flatnonzero(new)
    run_file = f[heads]
    run_start = s[heads] - run_file * span
    tails = np.r_[heads[1:], s.size] - 1
    run_stop = reach[tails] - run_file * span
    unit_run = np.empty(files.size, dtype=np.int64)
    unit_run[order] = run_of_sorted
    return run_file, run_start, run_stop, unit_run


def window_positions(lengths: np.ndarray, lo: int, hi: int, staging: np.ndarray):
    """Where runs ``lo:hi`` (of ``lengths`` bytes) land in one staging buffer, read back to back:
    their offsets, and the buffer (``staging`` reused when it is large enough)."""
    pos = np.zeros(hi - lo, dtype=np.int64)
    pos[1:] = np.cumsum(lengths[lo : hi - 1])
    total = int(pos[-1] + lengths[hi - 1])
    if staging.size < total:
        staging = np.empty(total, dtype=np.uint8)
    return pos, staging


# ------------------------------------------------------------------------- reading
class ParallelReader:
    """A pool of threads that reads many runs at once with ``os.preadv``.

    ``threads`` is the queue depth the device sees. The pool starts on first use and ends at
    :meth:`close`.
    """

    def __init__(self, threads: int = READ_THREADS):
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                self._pool = None  # a forked child: the parent's threads are not here
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="engram-read")
                self._pid = os.getpid()
            return self._pool

    @staticmethod
    def _read_slice(fds, starts, lengths, positions, view, lo: int, hi: int) -> None:
        preadv = os.preadv
        for k in range(lo, hi):
            pos, n = positions[k], lengths[k]
            got = preadv(fds[k], [view[pos : pos + n]], starts[k])
            while got < n:  # a read may return early (signals); only EOF is short
                more = preadv(fds[k], [view[pos + got : pos + n]], starts[k] + got)
                if more == 0:
                    raise ShortRead(k, got, n)
                got += more

    def read(self, fds, starts, lengths, positions, staging: np.ndarray) -> None:
        """Read run ``k`` (``lengths[k]`` bytes at ``starts[k]`` of descriptor ``fds[k]``) into
        ``staging[positions[k]:]``, ``threads`` at a time; lists of ints. Raises
        :class:`ShortRead` (``index`` = the run) or the ``OSError`` of a failed read."""
        n = len(starts)
        if not n:
            return
        view = memoryview(staging).cast("B")
        parts = min(self.threads, n)
        if parts == 1:
            self._read_slice(fds, starts, lengths, positions, view, 0, n)
            return
        bounds = np.linspace(0, n, parts + 1).astype(int).tolist()
        pool = self._executor()
        futures = [
            pool.submit(self._read_slice, fds, starts, lengths, positions, view, lo, hi)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            if hi > lo
        ]
        first_error = None
        for future in futures:  # wait for every read before the buffer may be reused
            exc = future.exception()
            if exc is not None and first_error is None:
                first_error = exc
        if first_error is not None:
            raise first_error

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def read_spans(
    reader: ParallelReader,
    fds: list[int],
    files: np.ndarray,
    offsets: np.ndarray,
    nbytes,
    limits: list[int],
    span: int,
    window: int = WINDOW_BYTES,
):
    """Read ``nbytes`` (one int, or one per span) at ``offsets[i]`` of file ``files[i]`` (an
    index into ``fds`` and
    ``limits``, the files' sizes) for every ``i``, as whole pages, deduplicated and coalesced,
    ``reader.threads`` at a time, at most ``window`` bytes per round.

    Yields ``(staging, units, sources)`` per round: ``staging[sources[j]:][:nbytes]`` are the
    bytes of span ``units[j]``. Raises :class:`ShortRead` (``index``: a file index) when a file
    ends early.
    """
    limit = np.asarray(limits, dtype=np.int64)[files]
    start = offsets // PAGE * PAGE
    stop = np.minimum(-(-(offsets + nbytes) // PAGE) * PAGE, limit)
    run_file, run_start, run_stop, unit_run = plan_runs(files, start, stop, span, COALESCE_GAP)
    lengths = run_stop - run_start
    before = np.cumsum(lengths) - lengths
    bounds = np.flatnonzero(np.diff(before // window)) + 1
    edges = [0, *bounds.tolist(), run_file.size]
    order = np.argsort(unit_run, kind="stable")
    unit_edges = np.searchsorted(unit_run[order], edges)
    staging = np.empty(0, dtype=np.uint8)
    for w in range(len(edges) - 1):
        lo, hi = edges[w], edges[w + 1]
        pos, staging = window_positions(lengths, lo, hi, staging)
        window_fds = [fds[f] for f in run_file[lo:hi].tolist()]
        try:
            reader.read(
                window_fds,
                run_start[lo:hi].tolist(),
                lengths[lo:hi].tolist(),
                pos.tolist(),
                staging,
            )
        except ShortRead as exc:
            f = int(run_file[lo + exc.index])
            raise ShortRead(f, exc.got, exc.wanted) from None
        units = order[unit_edges[w] : unit_edges[w + 1]]
        k = unit_run[units] - lo
        yield staging, units, pos[k] + offsets[units] - run_start[lo:hi][k]


_LIBC: dict[str, object] = {}


def _libc(name: str):
    """``mincore`` / ``madvise`` from libc (``False`` where there is none)."""
    if name not in _LIBC:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = getattr(libc, name)
            third = ctypes.c_void_p if name == "mincore" else ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, third]
            fn.restype = ctypes.c_int
            _LIBC[name] = fn
        except (OSError, AttributeError):  # not Linux/BSD: unknown, no advice
            _LIBC[name] = False
    return _LIBC[name]


def _mincore():
    return _libc("mincore")


def advise_random(address: int, length: int) -> None:
    """``madvise(MADV_RANDOM)`` on a mapping (rounded out to pages): a fault reads one page, not
    a 128 KiB window. Advice only: failures are ignored."""
    fn = _libc("madvise")
    if fn and length > 0:
        start = address // PAGE * PAGE
        fn(start, length + address - start, MADV_RANDOM)


def resident(address: int, length: int) -> float | None:
    """The fraction of the pages of the mapping ``[address, address + length)`` that are in
    the page cache (``mincore``); ``None`` where the system cannot tell. ``address`` is page
    aligned."""
    fn = _mincore()
    if not fn or length <= 0:
        return None
    vec = np.empty(-(-length // PAGE), dtype=np.uint8)
    if fn(address, length, vec.ctypes.data) != 0:
        return None
    return float(np.count_nonzero(vec & 1)) / vec.size


def open_random(path) -> int:
    """A read-only descriptor of ``path`` with readahead off (``POSIX_FADV_RANDOM``)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:  # advice only
            pass
    return fd


__all__ = [
    "COALESCE_GAP",
    "PAGE",
    "READ_THREADS",
    "WARM_FRACTION",
    "advise_random",
    "WINDOW_BYTES",
    "ParallelReader",
    "ShortRead",
    "open_random",
    "page_units",
    "plan_runs",
    "plan_runs_reference",
    "read_spans",
    "resident",
]
