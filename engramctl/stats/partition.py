"""Partitioned exact counting: the figures of a pass whose n-grams are split into K partitions.

The n-gram key space is split by a hash of the packed key (:func:`partition_of_keys`) into K
disjoint partitions, each counted on its own (one pass over the input per partition here, one
worker per partition on Dask). Per-row figures add up across partitions, so the figures of a
*target* (one table size, layer and order: its heads) come in two looks at each partition's
distinct n-grams:

1. **loads**: per head, distinct n-grams per row (one byte a row, saturating; a head where a row
   reaches 255 is redone with 8 bytes a row), summed over the partitions. The loads give occupied
   and collided rows, the colliding distinct n-grams, the max load and the histogram; their
   ``>= 2`` bitmap (P bits a head) is the "collided row" map.
2. **collisions**: each partition's n-grams against the merged bitmaps give the colliding
   occurrences of each head and the all-heads colliding occurrences (an n-gram collides in every
   head of its order).

Every figure is an integer sum or maximum, so the report equals the single pass's to the last
digit for any K. :func:`partition_loads`, :func:`add_loads`, :func:`loads_figures` and
:func:`partition_collisions` are the pieces both drivers (:mod:`.partition_run` on this machine,
:mod:`.partition_dask` on workers) call; for any split of the entries they give what
:func:`engramctl.stats.figures.order_stats` gives on all of them (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._numba import njit
from ..errors import EngramError
from .counter import PARTITION_SALT, count_maps_memory, key_words
from .figures import ngram_mix
from .report import HeadStats, OrderStats

SATURATED = 255  # a uint8 load that may be 255 or more


@dataclass(frozen=True)
class Target:
    """One (table size, layer, order): the heads whose figures are computed together."""

    point: int  # 0: the layout, i: the i-th --sweep size
    layer: int
    order: int
    multipliers: tuple[int, ...]  # the layer's first ``order`` multipliers
    head_rows: tuple[int, ...]  # prime rows of each head of the order
    histograms: bool  # keep each head's row-load histogram (layout heads only)


def targets(layout, layer_ids, sweep=()) -> list[Target]:
    """Every target of a report: the layout's layers, then each sweep size's, order by order."""
    sizes = [layout, *(layout.with_ngram_vocab([s] * (layout.max_ngram - 1)) for s in sweep)]
    out = []
    for point, lay in enumerate(sizes):
        for layer in layer_ids:
            multipliers, rows = lay.multipliers(layer), lay.head_rows(layer)
            for n in range(2, lay.max_ngram + 1):
                heads = rows[(n - 2) * lay.heads : (n - 1) * lay.heads]
                out.append(
                    Target(
                        point, layer, n,
                        tuple(int(m) for m in multipliers[:n]),
                        tuple(int(p) for p in heads),
                        point == 0,
                    )
                )  # fmt: skip
    return out


def fmix64_reference(x: np.ndarray) -> np.ndarray:
    """Plain-numpy specification of MurmurHash3's 64-bit finalizer (uint64 in, uint64 out), the
    mixer of the key hash, the partitions and the sketches (numba's copy: ``counter._fmix64``).

    >>> hex(fmix64_reference(np.array([1], dtype=np.uint64))[0])
    '0xb456bcfc34c2cb2c'
    """
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def key_hash_reference(grams: np.ndarray, bits: int) -> np.ndarray:
    """Plain-numpy specification of the 64-bit key hash of each n-gram ``(D, n)`` (``tok_0``
    first): its ids packed into words as the count maps pack them, each word mixed in with
    MurmurHash3's finalizer (:func:`engramctl.stats.counter.ngram_key_hash`)."""
    grams = np.asarray(grams, dtype=np.uint64)
    n = grams.shape[1]
    per_word = 64 // bits
    h = np.zeros(grams.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for w in range(key_words(n, bits)):
            word = np.zeros(grams.shape[0], dtype=np.uint64)
            for k in range(w * per_word, min(n, (w + 1) * per_word)):
                word |= grams[:, k] << np.uint64(bits * (k % per_word))
            h = fmix64_reference(h ^ word)
    return h


def partition_of_keys(grams: np.ndarray, bits: int, parts: int) -> np.ndarray:
    """Plain-numpy specification of the key-space partition of each n-gram ``(D, n)``: its key
    hash, mixed once more with a salt, modulo ``parts``."""
    with np.errstate(over="ignore"):
        mixed = fmix64_reference(key_hash_reference(grams, bits) ^ np.uint64(PARTITION_SALT))
    return (mixed % np.uint64(parts)).astype(np.int64)


# ------------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def _add_loads_kernel(mix, p, loads, cap):
    """``loads[mix[e] mod p] += 1`` saturating at ``cap``; returns the largest load reached."""
    top = 0
    for e in range(mix.shape[0]):
        r = mix[e] % p
        load = np.int64(loads[r])
        if load < cap:
            load += 1
            loads[r] = load
        top = max(top, load)
    return top


@njit(cache=True, nogil=True)
def _histogram_kernel(loads, histogram):
    """``histogram[k]``: rows of load k."""
    for r in range(loads.shape[0]):
        histogram[loads[r]] += 1


@njit(cache=True, nogil=True)
def _collisions_kernel(mix, counts, p, bitmap, flags):
    """Occurrences whose row's bit is set in ``bitmap`` (little-endian bits); clears
    ``flags[e]`` where the n-gram's row holds no other n-gram."""
    colliding = 0
    for e in range(mix.shape[0]):
        r = mix[e] % p
        if (bitmap[r >> 3] >> (r & 7)) & 1:
            colliding += counts[e]
        else:
            flags[e] = False
    return colliding


# ------------------------------------------------------------------- the two looks, checked
def _mix(target: Target, grams: np.ndarray) -> np.ndarray:
    if grams.ndim != 2 or grams.shape[1] != target.order:
        raise EngramError(f"expected {target.order}-grams, got an array of shape {grams.shape}")
    multipliers = np.asarray(target.multipliers, dtype=np.int64)
    return np.ascontiguousarray(ngram_mix(grams, multipliers))


def _loads_of(mix: np.ndarray, p: int, loads: np.ndarray | None) -> np.ndarray:
    """Add ``mix``'s rows to ``loads`` (uint8, or int64 once a row reaches 255)."""
    if loads is None:
        loads = np.zeros(p, dtype=np.uint8)
    if loads.dtype == np.uint8:
        before = loads.copy() if mix.shape[0] else loads
        if _add_loads_kernel(mix, np.int64(p), loads, SATURATED) < SATURATED:
            return loads
        loads = before.astype(np.int64)
    _add_loads_kernel(mix, np.int64(p), loads, 2**62)
    return loads


def partition_loads(target: Target, grams: np.ndarray, loads=None) -> list[np.ndarray]:
    """Look 1 of one partition: per head, distinct n-grams per row, added into ``loads`` (a
    list of per-head arrays from an earlier partition, or ``None``)."""
    mix = _mix(target, grams)
    loads = list(loads) if loads is not None else [None] * len(target.head_rows)
    return [_loads_of(mix, p, loads[h]) for h, p in enumerate(target.head_rows)]


def add_loads(*parts: list[np.ndarray]) -> list[np.ndarray]:
    """Sum per-head loads of several partitions exactly (into new arrays; inputs untouched)."""
    out = []
    for arrays in zip(*parts, strict=True):
        if all(a.dtype == np.uint8 for a in arrays):
            total = np.zeros(arrays[0].shape, dtype=np.uint16)
            for a in arrays:
                total += a
                if int(total.max(initial=0)) >= SATURATED:
                    break
            else:
                out.append(total.astype(np.uint8))
                continue
        total = np.zeros(arrays[0].shape, dtype=np.int64)
        for a in arrays:
            total += a
        out.append(total)
    return out


@dataclass(frozen=True)
class HeadLoads:
    """What look 1 gives of a head: its figures but the colliding occurrences, and its bitmap."""

    occupied: int
    collided: int
    colliding_distinct: int
    max_load: int
    histogram: tuple[int, ...]
    bitmap: np.ndarray  # packed (little-endian) "row holds 2+ n-grams", P bits


def loads_figures(loads: list[np.ndarray]) -> list[HeadLoads]:
    """Per head, the figures of the summed loads and the collided-row bitmap."""
    out = []
    for row_loads in loads:
        top = int(row_loads.max(initial=0))
        histogram = np.zeros(top + 1, dtype=np.int64)
        _histogram_kernel(row_loads, histogram)
        by_load = histogram * np.arange(top + 1)
        out.append(
            HeadLoads(
                occupied=int(histogram[1:].sum()),
                collided=int(histogram[2:].sum()),
                colliding_distinct=int(by_load[2:].sum()),
                max_load=top,
                histogram=tuple(histogram.tolist()),
                bitmap=np.packbits(row_loads >= 2, bitorder="little"),
            )
        )
    return out


@dataclass
class Collisions:
    """What look 2 gives, summed over partitions."""

    distinct: int
    occurrences: int
    colliding_occurrences: list[int]  # per head
    all_heads_colliding_occurrences: int

    def __add__(self, other: Collisions) -> Collisions:
        pairs = zip(self.colliding_occurrences, other.colliding_occurrences, strict=True)
        return Collisions(
            self.distinct + other.distinct,
            self.occurrences + other.occurrences,
            [a + b for a, b in pairs],
            self.all_heads_colliding_occurrences + other.all_heads_colliding_occurrences,
        )


def partition_collisions(
    target: Target, grams: np.ndarray, counts: np.ndarray, heads: list[HeadLoads]
) -> Collisions:
    """Look 2 of one partition against the merged bitmaps."""
    mix = _mix(target, grams)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    flags = np.ones(mix.shape[0], dtype=np.bool_)
    colliding = [
        int(_collisions_kernel(mix, counts, np.int64(p), head.bitmap, flags))
        for p, head in zip(target.head_rows, heads, strict=True)
    ]
    return Collisions(int(mix.shape[0]), int(counts.sum()), colliding, int(counts[flags].sum()))


def order_stats_of(target: Target, heads: list[HeadLoads], found: Collisions) -> OrderStats:
    """The :class:`OrderStats` of a target from both looks."""
    return OrderStats(
        order=target.order,
        occurrences=found.occurrences,
        distinct=found.distinct,
        all_heads_colliding_occurrences=found.all_heads_colliding_occurrences,
        heads=tuple(
            HeadStats(
                rows=p,
                occupied_rows=head.occupied,
                collided_rows=head.collided,
                colliding_distinct=head.colliding_distinct,
                colliding_occurrences=found.colliding_occurrences[h],
                max_row_load=head.max_load,
                distinct=found.distinct,
                occurrences=found.occurrences,
                row_load_histogram=head.histogram if target.histograms else (),
            )  # fmt: skip
            for h, (p, head) in enumerate(zip(target.head_rows, heads, strict=True))
        ),
    )


def target_figures(target: Target, partitions) -> OrderStats:
    """Both looks over ``partitions``: a callable returning an iterable of ``(grams, counts)``
    per partition (called twice, so it may read them from disk each time)."""
    loads = None
    for grams, _ in partitions():
        loads = partition_loads(target, grams, loads)
    if loads is None:
        raise EngramError("no partitions to finalize")
    heads = loads_figures(loads)
    del loads
    found = None
    for grams, counts in partitions():
        part = partition_collisions(target, grams, counts, heads)
        found = part if found is None else found + part
    return order_stats_of(target, heads, found)


def assemble(figures: dict[Target, OrderStats], n_points: int) -> list[dict]:
    """``[{layer: {order: OrderStats}}]`` per point (layout first, then each sweep size)."""
    points: list[dict] = [{} for _ in range(n_points)]
    for target, stats in figures.items():
        points[target.point].setdefault(target.layer, {})[target.order] = stats
    return points


# ----------------------------------------------------------------------------- memory
def partition_share(distinct: int, parts: int) -> int:
    """At most how many of ``distinct`` n-grams one of ``parts`` hash partitions gets (the mean
    plus a wide margin: a partition is a binomial sample, its std is about sqrt(mean))."""
    if parts == 1:
        return int(distinct)
    mean = distinct / parts
    return int(mean + 8 * mean**0.5 + 64)


def partition_memory(
    *,
    tokens: int,
    parts: int,
    max_ngram: int,
    canonical_vocab_size: int,
    heads: int,
    largest_head_rows: int,
) -> int:
    """Bytes one partition may need: the larger of counting and finalizing it.

    Counting: the count maps of ``partition_share(tokens)`` n-grams per order (each position adds
    at most one), half the largest again while it grows. Finalizing one target at a time: one
    order's entries of the partition (tuples, counts, mixes, flags: ``8n + 25`` bytes each) and the
    target's per-row loads (one byte a row per head) with their bitmaps (one bit a row).
    """
    share = partition_share(tokens, parts)
    maps, largest = count_maps_memory(
        tokens=share, max_ngram=max_ngram, canonical_vocab_size=canonical_vocab_size
    )
    counting = maps + largest // 2
    entries = share * (8 * max_ngram + 25)
    loads = heads * (largest_head_rows + largest_head_rows // 8 + 1)
    return max(counting, entries + loads)


def choose_partitions(memory_of, max_memory: int, *, most: int = 1 << 16) -> int | None:
    """The smallest K whose ``memory_of(K)`` fits ``max_memory`` (None when none up to ``most``
    does)."""
    k = 1
    while k <= most and memory_of(k) > max_memory:
        k *= 2
    if k > most:
        return None
    lo = k // 2 + 1 if k > 1 else 1
    while lo < k:  # the smallest fitting K between the last power of two that did not fit and k
        mid = (lo + k) // 2
        if memory_of(mid) <= max_memory:
            k = mid
        else:
            lo = mid + 1
    return k
