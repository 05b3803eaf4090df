"""Exact, mergeable n-gram counting and the collision statistics of DESIGN.md.

Counting (one pass over the corpus): per n-gram order, :class:`NgramCounter` keeps an
open-addressing hash map ``{n-gram -> occurrences}`` (numba, linear probing, grown by rehash). The
key is the n-gram's canonical ids packed into 64 bits when they fit (``n * ceil(log2 C) <= 64``:
exact), otherwise a 64-bit fingerprint of the tuple; each slot also keeps the tuple itself. The map
is independent of layers, heads and table sizes, so one pass serves every layer and every
``--sweep`` size, and two counters merge by adding counts (identical results whatever the batch
size, chunking, thread count or order of input files).

Finalization (:func:`order_stats`): per layer the tuple gives ``mix_n`` exactly as
:func:`engramctl.hashing.hash_layer_reference` computes it, per head ``row = mix_n mod p``; per-row
distinct and occurrence counts (``O(p)``, reused head by head) give every figure of a head, and a
per-n-gram flag gives the all-heads colliding occurrence fraction. :func:`head_counts_reference`
is the plain-numpy specification of the numba finalization kernel.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._numba import njit
from .errors import EngramError
from .stats_report import HeadStats, OrderStats

MAX_LOAD = 0.6  # grow a count map when it is this full
MIN_CAPACITY = 1 << 10
SLOT_BYTES = 16  # key (uint64) + count (int64); the tuple adds 4 bytes per token
FINGERPRINT_SEED = np.uint64(0x9E3779B97F4A7C15)
FINGERPRINT_MULT = np.uint64(0xBF58476D1CE4E5B9)


def key_bits(canonical_vocab_size: int) -> int:
    """Bits per canonical id in a packed key.

    >>> key_bits(99092), key_bits(2)
    (17, 1)
    """
    return max(1, (int(canonical_vocab_size) - 1).bit_length())


def exact_keys(order: int, canonical_vocab_size: int) -> bool:
    """Whether n-grams of ``order`` pack losslessly into a 64-bit key.

    >>> exact_keys(3, 99092), exact_keys(4, 99092)
    (True, False)
    """
    return order * key_bits(canonical_vocab_size) <= 64


# ------------------------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _fmix64(x):
    """MurmurHash3's 64-bit finalizer: a bijection of uint64 with full avalanche."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(cache=True, inline="always")
def _ngram_key(ext, i, n, exact, bits):
    """Key of the n-gram ending at ``ext[i]`` (``tok_k = ext[i - k]``)."""
    if exact:
        packed = np.uint64(0)
        for k in range(n):
            packed = (packed << np.uint64(bits)) | np.uint64(ext[i - k])
        return _fmix64(packed)
    h = FINGERPRINT_SEED
    for k in range(n):
        h = _fmix64(h ^ (np.uint64(ext[i - k]) * FINGERPRINT_MULT))
    return h


@njit(cache=True, nogil=True)
def _extend_kernel(raw, offsets, doc_start, lut, pad, carry, ext, real):
    """Canonical ids with each piece's context in front; returns the first bad raw index or -1.

    raw (N,) ids; offsets (S+1,); doc_start (S,) uint8; carry (K,) int32 in/out context;
    ext (N + S*K,) int32 out; real (N + S*K,) uint8 out (1 where ext holds a token of the corpus).
    """
    K = carry.shape[0]
    V = lut.shape[0]
    j = 0
    for s in range(offsets.shape[0] - 1):
        if doc_start[s]:
            for k in range(K):
                carry[k] = pad
        for k in range(K):
            ext[j] = carry[k]
            real[j] = 0
            j += 1
        for t in range(offsets[s], offsets[s + 1]):
            tok = np.int64(raw[t])
            if tok < 0 or tok >= V:
                return t
            ext[j] = lut[tok]
            real[j] = 1
            j += 1
        for k in range(K):
            carry[k] = ext[j - K + k]
    return -1


@njit(cache=True, nogil=True)
def _count_kernel(ext, real, start, n, exact, bits, keys, counts, grams, size, limit):
    """Add the n-grams ending at real positions ``start..`` of ``ext`` to one count map.

    Stops before inserting a new key once ``size == limit``; returns ``(next_index, size)``.
    """
    mask = keys.shape[0] - 1
    shift = np.uint64(64 - int(np.log2(keys.shape[0])))
    for i in range(start, ext.shape[0]):
        if real[i] == 0:
            continue
        key = _ngram_key(ext, i, n, exact, bits)
        pos = np.int64(key >> shift)
        while True:
            c = counts[pos]
            if c == 0:
                if size >= limit:
                    return i, size
                keys[pos] = key
                counts[pos] = 1
                for k in range(n):
                    grams[pos, k] = ext[i - k]
                size += 1
                break
            if keys[pos] == key:
                counts[pos] = c + 1
                break
            pos = (pos + 1) & mask
    return ext.shape[0], size


@njit(cache=True, nogil=True)
def _merge_kernel(src_keys, src_counts, src_grams, start, keys, counts, grams, size, limit):
    """Add the slots ``start..`` of another count map; returns ``(next_slot, size)``."""
    mask = keys.shape[0] - 1
    shift = np.uint64(64 - int(np.log2(keys.shape[0])))
    n = grams.shape[1]
    for s in range(start, src_keys.shape[0]):
        add = src_counts[s]
        if add == 0:
            continue
        key = src_keys[s]
        pos = np.int64(key >> shift)
        while True:
            c = counts[pos]
            if c == 0:
                if size >= limit:
                    return s, size
                keys[pos] = key
                counts[pos] = add
                for k in range(n):
                    grams[pos, k] = src_grams[s, k]
                size += 1
                break
            if keys[pos] == key:
                counts[pos] = c + add
                break
            pos = (pos + 1) & mask
    return src_keys.shape[0], size


@njit(cache=True, nogil=True)
def _head_kernel(mix, counts, p, row_counts, all_collided):
    """Per-row (distinct, occurrences) of one head into ``row_counts`` (p, 2), zeroed by caller.

    Clears ``all_collided[e]`` for n-grams alone in their row. Returns (occupied rows, collided
    rows, colliding distinct, colliding occurrences, max row load, max row occurrences).
    """
    D = mix.shape[0]
    for e in range(D):
        r = mix[e] % p
        row_counts[r, 0] += 1
        row_counts[r, 1] += counts[e]
    for e in range(D):
        if row_counts[mix[e] % p, 0] < 2:
            all_collided[e] = False
    occupied = collided = colliding_distinct = colliding_occurrences = 0
    max_load = max_occurrences = 0
    for r in range(p):
        d = row_counts[r, 0]
        if d == 0:
            continue
        occupied += 1
        if d >= 2:
            collided += 1
            colliding_distinct += d
            colliding_occurrences += row_counts[r, 1]
        max_load = max(max_load, d)
        max_occurrences = max(max_occurrences, row_counts[r, 1])
    return occupied, collided, colliding_distinct, colliding_occurrences, max_load, max_occurrences


def head_counts_reference(mix: np.ndarray, counts: np.ndarray, p: int):
    """Plain-numpy specification of :func:`_head_kernel`.

    Returns ``(figures, row_loads, collided)``: the same 6-tuple, distinct n-grams per row
    ``(p,)``, and whether each n-gram shares its row ``(D,)``.
    """
    rows = np.asarray(mix, dtype=np.int64) % p
    loads = np.bincount(rows, minlength=p)
    occ = np.bincount(rows, weights=counts, minlength=p).astype(np.int64)
    shared = loads >= 2
    figures = (
        int((loads > 0).sum()),
        int(shared.sum()),
        int(loads[shared].sum()),
        int(occ[shared].sum()),
        int(loads.max(initial=0)),
        int(occ.max(initial=0)),
    )
    return figures, loads, shared[rows]


# -------------------------------------------------------------------------- the counter
class _CountMap:
    """One order's open-addressing map: keys, counts, tuples (``tok_0`` first)."""

    def __init__(self, order: int, capacity: int = MIN_CAPACITY):
        capacity = max(MIN_CAPACITY, 1 << max(0, int(capacity - 1).bit_length()))
        self.order = order
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.counts = np.zeros(capacity, dtype=np.int64)
        self.grams = np.zeros((capacity, order), dtype=np.int32)
        self.size = 0

    @property
    def limit(self) -> int:
        return int(self.keys.shape[0] * MAX_LOAD)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.counts.nbytes + self.grams.nbytes

    def grow(self) -> None:
        bigger = _CountMap(self.order, self.keys.shape[0] * 2)
        done, size = _merge_kernel(
            self.keys,
            self.counts,
            self.grams,
            0,
            bigger.keys,
            bigger.counts,
            bigger.grams,
            0,
            bigger.limit,
        )
        assert done == self.keys.shape[0] and size == self.size
        self.keys, self.counts, self.grams = bigger.keys, bigger.counts, bigger.grams

    def count(self, ext, real, exact: bool, bits: int) -> None:
        start = 0
        while start < ext.shape[0]:
            start, self.size = _count_kernel(
                ext,
                real,
                start,
                self.order,
                exact,
                bits,
                self.keys,
                self.counts,
                self.grams,
                self.size,
                self.limit,
            )
            if start < ext.shape[0]:
                self.grow()

    def merge(self, other: _CountMap) -> None:
        start = 0
        while start < other.keys.shape[0]:
            start, self.size = _merge_kernel(
                other.keys,
                other.counts,
                other.grams,
                start,
                self.keys,
                self.counts,
                self.grams,
                self.size,
                self.limit,
            )
            if start < other.keys.shape[0]:
                self.grow()

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct n-grams ``(D, order)`` int64 (``tok_0`` first) and their counts ``(D,)``."""
        used = np.flatnonzero(self.counts)
        return self.grams[used].astype(np.int64), self.counts[used]


class NgramCounter:
    """Occurrences of every distinct n-gram of orders 2..max_ngram over a token stream.

    Feed it batches of raw token ids with :meth:`add`; documents never join (a piece with
    ``doc_start`` starts from pad context, any other piece continues the previous one). Two
    counters of the same shape merge exactly with :meth:`merge`.

    Parameters
    ----------
    vocab : the :class:`~engramctl.vocab.CanonicalVocab` that maps raw ids.
    max_ngram : largest n-gram order.
    pad : canonical pad id (context before a document starts).
    threads : worker threads (one order per thread); the result does not depend on it.
    """

    def __init__(self, vocab, *, max_ngram: int, pad: int, threads: int = 1):
        if max_ngram < 2:
            raise EngramError(f"max n-gram order must be at least 2, got {max_ngram}")
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int32)
        self.canonical_vocab_size = vocab.canonical_vocab_size
        self.max_ngram = max_ngram
        self.pad = int(pad)
        self.bits = key_bits(self.canonical_vocab_size)
        self.maps = {n: _CountMap(n) for n in range(2, max_ngram + 1)}
        self.carry = np.full(max_ngram - 1, self.pad, dtype=np.int32)
        self.tokens = 0
        self.documents = 0
        self.threads = max(1, int(threads))

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.maps.values())

    def exact(self, order: int) -> bool:
        return exact_keys(order, self.canonical_vocab_size)

    def add(self, ids: np.ndarray, offsets: np.ndarray, doc_start: np.ndarray) -> int:
        """Count a batch of pieces: ``ids[offsets[s]:offsets[s+1]]`` is piece ``s``.

        Returns -1, or the index into ``ids`` of the first id outside the vocab (nothing of the
        batch is counted then).
        """
        ids = np.ascontiguousarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise EngramError(
                f"token ids must be a flat integer array, got {ids.dtype} {ids.shape}"
            )
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        doc_start = np.ascontiguousarray(doc_start, dtype=np.uint8)
        if offsets.shape[0] != doc_start.shape[0] + 1 or offsets[-1] != ids.shape[0]:
            raise EngramError("offsets must hold one more entry than doc_start and end at len(ids)")
        K = self.max_ngram - 1
        ext = np.empty(ids.shape[0] + K * doc_start.shape[0], dtype=np.int32)
        real = np.empty(ext.shape[0], dtype=np.uint8)
        carry = self.carry.copy()
        bad = _extend_kernel(ids, offsets, doc_start, self.lut, self.pad, carry, ext, real)
        if bad >= 0:
            return int(bad)
        self._count(ext, real)
        self.carry = carry
        self.tokens += int(ids.shape[0])
        self.documents += int(doc_start.sum())
        return -1

    def _count(self, ext, real) -> None:
        jobs = [(m, self.exact(n)) for n, m in self.maps.items()]
        if self.threads == 1 or len(jobs) == 1:
            for m, exact in jobs:
                m.count(ext, real, exact, self.bits)
            return
        with ThreadPoolExecutor(min(self.threads, len(jobs))) as pool:
            for future in [pool.submit(m.count, ext, real, e, self.bits) for m, e in jobs]:
                future.result()

    def merge(self, other: NgramCounter) -> NgramCounter:
        """Add another counter's counts into this one (exact, order-independent)."""
        if other.max_ngram != self.max_ngram or other.canonical_vocab_size != (
            self.canonical_vocab_size
        ):
            raise EngramError("cannot merge counters of different orders or vocabs")
        for n, m in self.maps.items():
            m.merge(other.maps[n])
        self.tokens += other.tokens
        self.documents += other.documents
        return self

    def distinct(self, order: int) -> int:
        return self.maps[order].size

    def entries(self, order: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct n-grams of ``order`` ``(D, order)`` (``tok_0`` first) and counts ``(D,)``.

        Their order depends on insertion history; every figure computed from them does not.
        """
        return self.maps[order].entries()


# ------------------------------------------------------------------------- finalization
def ngram_mix(grams: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """``mix_n`` of each n-gram (``grams[:, k] = tok_k``) in wrapping int64, as in the spec."""
    grams = np.asarray(grams, dtype=np.int64)
    with np.errstate(over="ignore"):
        mix = grams[:, 0] * multipliers[0]
        for k in range(1, grams.shape[1]):
            mix = np.bitwise_xor(mix, grams[:, k] * multipliers[k])
    return mix


def expected_occupied_rows(rows: int, distinct: int) -> float:
    """Ideal uniform hashing: ``P (1 - (1 - 1/P)^d)``.

    >>> round(expected_occupied_rows(2, 2), 6)
    1.5
    """
    return -rows * math.expm1(distinct * math.log1p(-1.0 / rows))


def expected_colliding_fraction(rows: int, distinct: int) -> float:
    """Ideal uniform hashing: a distinct n-gram shares its row w.p. ``1 - (1 - 1/P)^(d-1)``.

    >>> expected_colliding_fraction(2, 2)
    0.5
    """
    if distinct < 1:
        return 0.0
    return -math.expm1((distinct - 1) * math.log1p(-1.0 / rows))


def order_stats(
    grams: np.ndarray,
    counts: np.ndarray,
    multipliers: np.ndarray,
    head_rows,
    *,
    order: int,
    exact: bool = True,
    histograms: bool = True,
) -> OrderStats:
    """Every figure of one (layer, order): ``grams``/``counts`` from :meth:`NgramCounter.entries`,
    the layer's multipliers, and the prime row count of each of the order's heads."""
    mix = np.ascontiguousarray(ngram_mix(grams, multipliers))
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    all_collided = np.ones(mix.shape[0], dtype=np.bool_)
    largest = max(int(p) for p in head_rows)
    row_counts = np.empty((largest, 2), dtype=np.int64)
    heads = []
    for p in head_rows:
        p = int(p)
        table = row_counts[:p]
        table.fill(0)
        figures = _head_kernel(mix, counts, np.int64(p), table, all_collided)
        occupied, collided, col_distinct, col_occ, max_load, max_occ = (int(v) for v in figures)
        histogram = tuple(np.bincount(table[:, 0]).tolist()) if histograms else ()
        heads.append(
            HeadStats(
                rows=p,
                occupied_rows=occupied,
                collided_rows=collided,
                colliding_distinct=col_distinct,
                colliding_occurrences=col_occ,
                max_row_load=max_load,
                max_row_occurrences=max_occ,
                distinct=int(mix.shape[0]),
                occurrences=int(counts.sum()),
                row_load_histogram=histogram,
            )
        )
    return OrderStats(
        order=order,
        occurrences=int(counts.sum()),
        distinct=int(mix.shape[0]),
        all_heads_colliding_occurrences=int(counts[all_collided].sum()) if heads else 0,
        exact_keys=exact,
        heads=tuple(heads),
    )


def estimate_memory(
    *, tokens: int, max_ngram: int, canonical_vocab_size: int, largest_head_rows: int
) -> int:
    """Bytes the counter and finalization may need at most for a stream of ``tokens`` tokens.

    Each position adds at most one distinct n-gram per order (and never more than ``C**n``);
    a map is at most ``1 / (MAX_LOAD / 2)`` times its entries right after growing; finalizing
    holds one ``(p, 2)`` int64 row table plus a few arrays per distinct n-gram.
    """
    total = largest_map = 0
    largest_distinct = 0
    for n in range(2, max_ngram + 1):
        distinct = min(int(tokens), canonical_vocab_size**n)
        largest_distinct = max(largest_distinct, distinct)
        slots = max(MIN_CAPACITY, 1 << max(0, int(distinct / MAX_LOAD)).bit_length())
        total += slots * (SLOT_BYTES + 4 * n)
        largest_map = max(largest_map, slots * (SLOT_BYTES + 4 * n))
    finalize = 16 * largest_head_rows + largest_distinct * (8 * max_ngram + 8 + 8 + 1)
    # growing a map holds the old half next to the new one
    return total + largest_map // 2 + finalize
