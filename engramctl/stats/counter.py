"""Exact, mergeable n-gram counting: the one pass behind the collision statistics of DESIGN.md.

Counting (one pass over the corpus): per n-gram order, :class:`NgramCounter` keeps an
open-addressing hash map ``{n-gram -> occurrences}`` (numba, linear probing, grown by rehash). The
key is the tuple of canonical ids itself, packed losslessly into ``ceil(n / floor(64 / bits))``
64-bit words (``bits = ceil(log2 C)``: 17 for DeepSeek-V4, so 3 ids a word), so distinct counts
are exact: no fingerprint, no false merges. The map does not depend on layers, heads or table
sizes, so one pass serves every layer and every ``--sweep`` size, and two counters merge by adding
counts (identical results whatever the batch size, chunking, thread count or order of files).

The figures of each head follow from these counts in :mod:`engramctl.stats.figures`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._numba import njit
from .._prefetch import AHEAD, prefetch
from ..errors import EngramError
from .extend import extend_batch

MAX_LOAD = 0.6  # grow a count map when it is this full
MIN_CAPACITY = 1 << 10
PARTITION_SALT = 0x9E3779B97F4A7C15  # partitions use other bits of the key hash than the slots


def key_bits(canonical_vocab_size: int) -> int:
    """Bits per canonical id in a packed key.

    >>> key_bits(99092), key_bits(2)
    (17, 1)
    """
    return max(1, (int(canonical_vocab_size) - 1).bit_length())


def key_words(order: int, bits: int) -> int:
    """64-bit words of a packed n-gram key (ids never straddle words).

    >>> key_words(3, 17), key_words(4, 17)
    (1, 2)
    """
    per_word = 64 // bits
    return -(-order // per_word)


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
def _pack_ngram(ext, i, n, bits, key):
    """Pack the n-gram ending at ``ext[i]`` into ``key`` (KW,): ``tok_k = ext[i - k]`` in word
    ``k // per_word`` at bit ``bits * (k % per_word)``; returns the slot hash of the key."""
    per_word = 64 // bits
    for w in range(key.shape[0]):
        key[w] = 0
    for k in range(n):
        w = k // per_word
        key[w] |= np.uint64(ext[i - k]) << np.uint64(bits * (k % per_word))
    h = np.uint64(0)
    for w in range(key.shape[0]):
        h = _fmix64(h ^ key[w])
    return h


@njit(cache=True, inline="always")
def _slot_hash(table, s, KW):
    h = np.uint64(0)
    for w in range(KW):
        h = _fmix64(h ^ table[s, w])
    return h


@njit(cache=True, inline="always")
def _partition_of(h, parts):
    """The partition (0..parts-1) of a key whose slot hash is ``h``."""
    return np.int64(_fmix64(h ^ np.uint64(PARTITION_SALT)) % np.uint64(parts))


@njit(cache=True, nogil=True)
def _partition_real_kernel(ext, real, n, bits, KW, parts, part, out):
    """``out[i] = real[i]`` where the n-gram ending at ``ext[i]`` is in partition ``part``."""
    key = np.empty(KW, dtype=np.uint64)
    for i in range(ext.shape[0]):
        out[i] = 0
        if real[i] and _partition_of(_pack_ngram(ext, i, n, bits, key), parts) == part:
            out[i] = 1


@njit(cache=True, nogil=True)
def _slot_partitions_kernel(table, parts, which):
    """``which[s]``: the partition of the key in slot ``s``, or -1 for a free slot."""
    KW = table.shape[1] - 1
    for s in range(table.shape[0]):
        which[s] = _partition_of(_slot_hash(table, s, KW), parts) if table[s, KW] else -1


@njit(cache=True, nogil=True)
def _count_kernel(ext, real, start, n, bits, table, size, limit):
    """Add the n-grams ending at real positions ``start..`` of ``ext`` to one count map.

    table (cap, KW+1) uint64 slots: the packed key (KW words), then the count (0: a free slot).
    Keys and slots of the next AHEAD positions wait in a ring, their slots prefetched. Stops
    before inserting a new key once ``size == limit``; returns ``(next_index, size)``.
    """
    mask = table.shape[0] - 1
    shift = np.uint64(64 - int(np.log2(table.shape[0])))
    KW = table.shape[1] - 1
    N = ext.shape[0]
    ring_slot = np.empty(AHEAD, dtype=np.int64)
    ring_key = np.empty((AHEAD, KW), dtype=np.uint64)
    for j in range(start, min(N, start + AHEAD)):
        r = j % AHEAD
        ring_slot[r] = np.int64(_pack_ngram(ext, j, n, bits, ring_key[r]) >> shift)
        prefetch(table, ring_slot[r])
    key = np.empty(KW, dtype=np.uint64)
    one = np.uint64(1)
    for i in range(start, N):
        r = i % AHEAD
        pos = ring_slot[r]
        for w in range(KW):
            key[w] = ring_key[r, w]
        if i + AHEAD < N:  # (keys of context positions are garbage and never used)
            ring_slot[r] = np.int64(_pack_ngram(ext, i + AHEAD, n, bits, ring_key[r]) >> shift)
            prefetch(table, ring_slot[r])
        if real[i] == 0:
            continue
        while True:
            c = table[pos, KW]
            if c == 0:
                if size >= limit:
                    return i, size
                for w in range(KW):
                    table[pos, w] = key[w]
                table[pos, KW] = one
                size += 1
                break
            same = True
            for w in range(KW):
                if table[pos, w] != key[w]:
                    same = False
            if same:
                table[pos, KW] = c + one
                break
            pos = (pos + 1) & mask
    return N, size


@njit(cache=True, nogil=True)
def _merge_kernel(src, start, table, size, limit):
    """Add the slots ``start..`` of another count map; returns ``(next_slot, size)``.

    A slot's position is the top bits of its key's hash in both maps, so walking ``src`` in slot
    order writes ``table`` nearly in order too: no prefetch needed.
    """
    mask = table.shape[0] - 1
    shift = np.uint64(64 - int(np.log2(table.shape[0])))
    KW = table.shape[1] - 1
    for s in range(start, src.shape[0]):
        add = src[s, KW]
        if add == 0:
            continue
        pos = np.int64(_slot_hash(src, s, KW) >> shift)
        while True:
            c = table[pos, KW]
            if c == 0:
                if size >= limit:
                    return s, size
                for w in range(KW + 1):
                    table[pos, w] = src[s, w]
                size += 1
                break
            same = True
            for w in range(KW):
                if table[pos, w] != src[s, w]:
                    same = False
            if same:
                table[pos, KW] = c + add
                break
            pos = (pos + 1) & mask
    return src.shape[0], size


@njit(cache=True, nogil=True)
def _entries_kernel(table, bits, grams, counts):
    """Unpack the used slots of a count map into grams (D, n) int64 and counts (D,) int64."""
    KW = table.shape[1] - 1
    n = grams.shape[1]
    per_word = 64 // bits
    mask = np.uint64((1 << bits) - 1)
    d = 0
    for s in range(table.shape[0]):
        c = table[s, KW]
        if c == 0:
            continue
        for k in range(n):
            word = table[s, k // per_word]
            grams[d, k] = np.int64((word >> np.uint64(bits * (k % per_word))) & mask)
        counts[d] = np.int64(c)
        d += 1
    return d


# -------------------------------------------------------------------------- the counter
class _CountMap:
    """One order's open-addressing map: ``table[slot] = [packed key words..., count]``."""

    def __init__(self, order: int, bits: int, capacity: int = MIN_CAPACITY):
        capacity = max(MIN_CAPACITY, 1 << max(0, int(capacity - 1).bit_length()))
        self.order, self.bits = order, bits
        self.table = np.zeros((capacity, key_words(order, bits) + 1), dtype=np.uint64)
        self.size = 0

    @property
    def limit(self) -> int:
        return int(self.table.shape[0] * MAX_LOAD)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def grow(self) -> None:
        bigger = _CountMap(self.order, self.bits, self.table.shape[0] * 2)
        done, size = _merge_kernel(self.table, 0, bigger.table, 0, bigger.limit)
        assert done == self.table.shape[0] and size == self.size
        self.table = bigger.table

    def count(self, ext, real) -> None:
        start = 0
        while start < ext.shape[0]:
            start, self.size = _count_kernel(
                ext, real, start, self.order, self.bits, self.table, self.size, self.limit
            )
            if start < ext.shape[0]:
                self.grow()

    def merge(self, other: _CountMap) -> None:
        start = 0
        while start < other.table.shape[0]:
            start, self.size = _merge_kernel(other.table, start, self.table, self.size, self.limit)
            if start < other.table.shape[0]:
                self.grow()

    def split(self, parts: int) -> list[_CountMap]:
        """This map's keys in ``parts`` new maps, by key-space partition (exact, disjoint)."""
        which = np.empty(self.table.shape[0], dtype=np.int64)
        _slot_partitions_kernel(self.table, parts, which)
        out = []
        for part in range(parts):
            slots = self.table[which == part]
            piece = _CountMap(self.order, self.bits, int(slots.shape[0] / MAX_LOAD) + 1)
            done, piece.size = _merge_kernel(slots, 0, piece.table, 0, piece.limit)
            assert done == slots.shape[0] and piece.size == slots.shape[0]
            out.append(piece)
        return out

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct n-grams ``(D, order)`` int64 (``tok_0`` first) and their counts ``(D,)``."""
        grams = np.empty((self.size, self.order), dtype=np.int64)
        counts = np.empty(self.size, dtype=np.int64)
        found = _entries_kernel(self.table, self.bits, grams, counts)
        assert found == self.size
        return grams, counts


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
    partition : ``(part, parts)``: count only the n-grams of that partition of the key space
        (a hash of the packed key, :func:`engramctl.stats.partition.partition_of_keys`);
        partitions are disjoint and cover every n-gram, so their counts add up to the whole's.
    """

    def __init__(self, vocab, *, max_ngram: int, pad: int, threads: int = 1, partition=None):
        if max_ngram < 2:
            raise EngramError(f"max n-gram order must be at least 2, got {max_ngram}")
        if partition is not None and not 0 <= partition[0] < partition[1]:
            raise EngramError(f"partition {partition[0]} of {partition[1]} does not exist")
        self.partition = None if partition is None or partition[1] == 1 else tuple(partition)
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int32)
        self.canonical_vocab_size = vocab.canonical_vocab_size
        self.max_ngram = max_ngram
        self.pad = int(pad)
        self.bits = key_bits(self.canonical_vocab_size)
        self.maps = {n: _CountMap(n, self.bits) for n in range(2, max_ngram + 1)}
        self.carry = np.full(max_ngram - 1, self.pad, dtype=np.int32)
        self.tokens = 0
        self.documents = 0
        self.threads = max(1, int(threads))

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.maps.values())

    def peak_bytes(self, *, largest_head_rows: int, threads: int = 1) -> int:
        """Memory after the next growth of the largest map, or during finalization."""
        grow = 2 * max(m.nbytes for m in self.maps.values())
        distinct = {n: m.size for n, m in self.maps.items()}
        finalize = finalize_memory(distinct, largest_head_rows=largest_head_rows, threads=threads)
        return self.nbytes + max(grow, finalize)

    def add(self, ids: np.ndarray, offsets: np.ndarray, doc_start: np.ndarray) -> int:
        """Count a batch of pieces: ``ids[offsets[s]:offsets[s+1]]`` is piece ``s``.

        Returns -1, or the index into ``ids`` of the first id outside the vocab (nothing of the
        batch is counted then).
        """
        context = (self.lut, self.pad, self.carry)
        ext, real, carry, bad = extend_batch(ids, offsets, doc_start, *context)
        if bad >= 0:
            return bad
        self._count(ext, real)
        self.carry = carry
        self.tokens += int(np.asarray(ids).shape[0])
        self.documents += int(np.asarray(doc_start).sum())
        return -1

    def _count(self, ext, real) -> None:
        maps = list(self.maps.values())

        def count(m: _CountMap) -> None:
            mine = real
            if self.partition is not None:
                mine = np.empty_like(real)
                words = m.table.shape[1] - 1
                part, parts = self.partition
                _partition_real_kernel(ext, real, m.order, self.bits, words, parts, part, mine)
            m.count(ext, mine)

        if self.threads == 1:
            for m in maps:
                count(m)
            return
        with ThreadPoolExecutor(min(self.threads, len(maps))) as pool:
            # the longest n-grams have the most distinct keys: start them first
            for future in [pool.submit(count, m) for m in reversed(maps)]:
                future.result()

    def split(self, parts: int) -> list[NgramCounter]:
        """The counts in ``parts`` counters, one per partition of the key space (see
        ``partition``); tokens and documents stay with the first, so the parts merge back into
        this counter. This counter is left untouched."""
        pieces = {n: m.split(parts) for n, m in self.maps.items()}
        out = []
        for part in range(parts):
            counter = copy.copy(self)  # shares the read-only lut
            counter.maps = {n: pieces[n][part] for n in self.maps}
            counter.partition = (part, parts) if parts > 1 else None
            counter.tokens = self.tokens if part == 0 else 0
            counter.documents = self.documents if part == 0 else 0
            out.append(counter)
        return out

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

    @classmethod
    def sum_of(cls, counters: Sequence[NgramCounter]) -> NgramCounter:
        """A fresh counter holding the sum of ``counters`` (exact, in any grouping).

        The inputs are left untouched (a re-run merge must not count anything twice): they are
        added into fresh maps sized for the sum of their entries, so no map grows on the way.
        """
        first = counters[0]
        total = copy.copy(first)  # shares the read-only lut; maps and totals are new
        total.maps = {
            n: _CountMap(n, m.bits, int(sum(c.maps[n].size for c in counters) / MAX_LOAD) + 1)
            for n, m in first.maps.items()
        }
        total.tokens = total.documents = 0
        for counter in counters:
            total.merge(counter)
        return total

    def distinct(self, order: int) -> int:
        return self.maps[order].size

    def entries(self, order: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct n-grams of ``order`` ``(D, order)`` (``tok_0`` first) and counts ``(D,)``.

        Their order depends on insertion history; every figure computed from them does not.
        """
        return self.maps[order].entries()


# the slot hash of the n-gram ending at ext[i], packed into key: (ext, i, n, bits, key) -> uint64
ngram_key_hash = _pack_ngram


def finalize_memory(distinct: dict, *, largest_head_rows: int, threads: int = 1) -> int:
    """Bytes finalization adds for ``{order: distinct n-grams}``: every order's tuples and counts,
    one order's mixes, per thread the rows and flags of one order and a per-row load byte.
    """
    largest = max(distinct.values(), default=0)
    entries = sum(d * (8 * n + 8) for n, d in distinct.items())
    return entries + largest * (8 + threads * (4 + 1)) + threads * largest_head_rows


def estimate_memory(
    *,
    tokens: int,
    max_ngram: int,
    canonical_vocab_size: int,
    largest_head_rows: int,
    threads: int = 1,
) -> int:
    """Bytes the counter and finalization may need at most for a stream of ``tokens`` tokens.

    Each position adds at most one distinct n-gram per order (and never more than ``C**n``); a
    map holds at most ``1 / MAX_LOAD`` slots per entry rounded up to a power of two, and growing
    it briefly holds the old table next to the new one; finalization (with the maps still held)
    needs :func:`finalize_memory`.
    """
    maps, largest_map = count_maps_memory(
        tokens=tokens, max_ngram=max_ngram, canonical_vocab_size=canonical_vocab_size
    )
    distinct = {n: min(int(tokens), canonical_vocab_size**n) for n in range(2, max_ngram + 1)}
    finalize = finalize_memory(distinct, largest_head_rows=largest_head_rows, threads=threads)
    return maps + max(largest_map // 2, finalize)


def count_maps_memory(*, tokens: int, max_ngram: int, canonical_vocab_size: int) -> tuple[int, int]:
    """``(bytes of every order's count map, bytes of the largest)`` at most for ``tokens`` tokens
    (growing the largest briefly needs half its size again)."""
    bits = key_bits(canonical_vocab_size)
    maps = largest_map = 0
    for n in range(2, max_ngram + 1):
        distinct = min(int(tokens), canonical_vocab_size**n)
        slots = max(MIN_CAPACITY, 1 << max(0, int(distinct / MAX_LOAD)).bit_length())
        size = slots * 8 * (key_words(n, bits) + 1)
        maps += size
        largest_map = max(largest_map, size)
    return maps, largest_map
