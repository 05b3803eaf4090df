"""``hash-stats --estimate``: distinct n-grams per order from HyperLogLog sketches, in constant
memory, and every per-head figure from the ideal-hash formulas.

:class:`NgramSketch` has :class:`~engramctl.stats.counter.NgramCounter`'s feeding contract
(``add`` id batches, documents never joined, context carried between pieces), so the same
streaming pass (:func:`engramctl.stats.run.count_corpus`) drives it, with Ctrl-C, ``--limit-tokens``
and progress as usual. Per order it keeps ``2**precision`` one-byte HyperLogLog registers (256 KiB
at the default precision 18): each n-gram's key is packed and hashed exactly as the counter packs
it (:func:`~engramctl.stats.counter.ngram_key_hash`, a 64-bit MurmurHash3 finalizer chain), the
top ``precision`` bits pick a register, the rank of the rest (leading zeros + 1) raises it.
Sketches merge exactly by register-wise maximum (Dask shards, in any grouping).

The estimate is Ertl's improved raw estimator ("New cardinality estimation algorithms for
HyperLogLog sketches", 2017): unbiased from zero to far beyond 2**64 / 2**precision without
empirical bias tables; its relative standard error is about ``1.04 / sqrt(2**precision)``
(0.20% at precision 18). A test holds it to Apache DataSketches' HLL on the same keys (the
DataSketches Python package takes one item per call, too slow to feed a corpus through).

Per head with P rows and d (estimated) distinct n-grams, ideal uniform hashing gives:
occupied ``P(1 - (1-1/P)^d)``, collided rows, colliding distinct fraction ``1 - (1-1/P)^(d-1)``;
an occurrence collides when its n-gram does, so the colliding occurrence fraction is the same;
the all-heads fraction is the product over heads; the max row load is the smallest k with fewer
than half a row expected at load k or more (Poisson). Only exact counting gives row-load
histograms (and the plot that draws them).
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import njit
from ..errors import EngramError
from .counter import key_bits, key_words, ngram_key_hash
from .extend import extend_batch
from .report import (
    HeadStats,
    OrderStats,
    SweepPoint,
    expected_colliding_fraction,
    expected_occupied_rows,
)

DEFAULT_PRECISION = 18
MIN_PRECISION, MAX_PRECISION = 8, 24


@njit(cache=True, inline="always")
def _rank(w, q):
    """1 + leading zeros of the q-bit value ``w`` (q + 1 when it is zero)."""
    if w == 0:
        return q + 1
    r = 1
    top = np.uint64(1) << np.uint64(q - 1)
    while (w & top) == 0:
        w <<= np.uint64(1)
        r += 1
    return r


@njit(cache=True, nogil=True)
def _sketch_kernel(ext, real, n, bits, KW, registers, p):
    """Raise the registers (2**p uint8) with every n-gram ending at a real position."""
    key = np.empty(KW, dtype=np.uint64)
    q = 64 - p
    low = (np.uint64(1) << np.uint64(q)) - np.uint64(1)
    for i in range(ext.shape[0]):
        if real[i] == 0:
            continue
        h = ngram_key_hash(ext, i, n, bits, key)
        r = np.uint8(_rank(h & low, q))
        slot = np.int64(h >> np.uint64(q))
        if r > registers[slot]:
            registers[slot] = r


@njit(cache=True, nogil=True)
def _hll_update_kernel(hashes, registers, p):
    """Raise the registers with 64-bit hashes (the oracle tests feed keys this way)."""
    q = 64 - p
    low = (np.uint64(1) << np.uint64(q)) - np.uint64(1)
    for h in hashes:
        r = np.uint8(_rank(h & low, q))
        slot = np.int64(h >> np.uint64(q))
        if r > registers[slot]:
            registers[slot] = r


def hll_update(registers: np.ndarray, hashes: np.ndarray) -> None:
    """Add 64-bit hashes to HyperLogLog registers (``2**p`` uint8)."""
    p = int(registers.shape[0]).bit_length() - 1
    if registers.dtype != np.uint8 or registers.shape[0] != 1 << p:
        raise EngramError("HLL registers must be a power-of-two uint8 array")
    _hll_update_kernel(np.ascontiguousarray(hashes, dtype=np.uint64), registers, p)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        before = z
        z += x * y
        y += y
        if z == before:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        before = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == before:
            return z / 3.0


def hll_estimate(registers: np.ndarray) -> float:
    """Ertl's improved raw estimate of the distinct hashes added to ``registers``."""
    m = registers.shape[0]
    p = m.bit_length() - 1
    q = 64 - p
    counts = np.bincount(registers, minlength=q + 2).astype(np.float64)
    z = m * _tau(1.0 - counts[q + 1] / m)
    for k in range(q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += m * _sigma(counts[0] / m)
    if math.isinf(z):
        return 0.0
    return m * m / (2.0 * math.log(2.0) * z)


def sketch_memory(max_ngram: int, batch_tokens: int, precision: int = DEFAULT_PRECISION) -> int:
    """Bytes of an estimating pass: the registers and two batches of ids in flight (ids,
    offsets, canonical ids and flags), whatever the corpus size."""
    return (max_ngram - 1) * (1 << precision) + 2 * batch_tokens * (8 + 8 + 4 + 1)


def relative_standard_error(precision: int) -> float:
    """About ``1.04 / sqrt(2**precision)`` (HyperLogLog's; Ertl's estimator matches it)."""
    return 1.04 / math.sqrt(1 << precision)


class NgramSketch:
    """Estimated distinct n-grams of orders 2..max_ngram over a token stream (constant memory).

    Fed like :class:`~engramctl.stats.counter.NgramCounter` (``add``, ``tokens``,
    ``documents``, ``carry``); :meth:`merge` takes the register-wise maximum.
    """

    def __init__(self, vocab, *, max_ngram: int, pad: int, precision: int = DEFAULT_PRECISION):
        if max_ngram < 2:
            raise EngramError(f"max n-gram order must be at least 2, got {max_ngram}")
        if not MIN_PRECISION <= precision <= MAX_PRECISION:
            raise EngramError(
                f"sketch precision must be between {MIN_PRECISION} and {MAX_PRECISION}, "
                f"got {precision}"
            )
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int32)
        self.canonical_vocab_size = vocab.canonical_vocab_size
        self.max_ngram = max_ngram
        self.pad = int(pad)
        self.bits = key_bits(self.canonical_vocab_size)
        self.precision = int(precision)
        self.registers = {n: np.zeros(1 << precision, np.uint8) for n in range(2, max_ngram + 1)}
        self.carry = np.full(max_ngram - 1, self.pad, dtype=np.int32)
        self.tokens = 0
        self.documents = 0

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.registers.values())

    def peak_bytes(self, **_) -> int:
        """Constant: the registers (the pass's batches come on top, as for the counter)."""
        return self.nbytes

    def add(self, ids: np.ndarray, offsets: np.ndarray, doc_start: np.ndarray) -> int:
        """Add a batch of pieces (see :meth:`NgramCounter.add`); returns -1 or the first bad id."""
        context = (self.lut, self.pad, self.carry)
        ext, real, carry, bad = extend_batch(ids, offsets, doc_start, *context)
        if bad >= 0:
            return bad
        for n, registers in self.registers.items():
            words = key_words(n, self.bits)
            _sketch_kernel(ext, real, n, self.bits, words, registers, self.precision)
        self.carry = carry
        self.tokens += int(np.asarray(ids).shape[0])
        self.documents += int(np.asarray(doc_start).sum())
        return -1

    def merge(self, other: NgramSketch) -> NgramSketch:
        """Add another sketch of the same shape (register-wise maximum, order-free)."""
        if (other.max_ngram, other.precision, other.canonical_vocab_size) != (
            self.max_ngram,
            self.precision,
            self.canonical_vocab_size,
        ):
            raise EngramError("cannot merge sketches of different orders, precisions or vocabs")
        for n, registers in self.registers.items():
            np.maximum(registers, other.registers[n], out=registers)
        self.tokens += other.tokens
        self.documents += other.documents
        return self

    @classmethod
    def sum_of(cls, sketches) -> NgramSketch:
        """A fresh sketch of the union of ``sketches`` (inputs untouched; any grouping)."""
        import copy

        total = copy.copy(sketches[0])  # shares the read-only lut; registers and totals are new
        total.registers = {n: np.zeros_like(r) for n, r in total.registers.items()}
        total.tokens = total.documents = 0
        for sketch in sketches:
            total.merge(sketch)
        return total

    def distinct(self, order: int) -> int:
        """Estimated distinct n-grams of ``order`` (rounded; never above the tokens)."""
        return min(round(hll_estimate(self.registers[order])), self.tokens)

    @property
    def relative_standard_error(self) -> float:
        return relative_standard_error(self.precision)


# -------------------------------------------------------------------- ideal-hash figures
def expected_max_load(rows: int, distinct: int) -> int:
    """The largest k with at least half a row expected to hold k or more n-grams (loads are
    Poisson with mean ``distinct / rows``; a normal approximation above a mean of 1,000)."""
    if distinct <= 0:
        return 0
    lam = distinct / rows
    if lam > 1000:  # rows * P(Z >= z) = 0.5, by bisection on the normal tail
        lo, hi = 0.0, 40.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rows * 0.5 * math.erfc(mid / math.sqrt(2)) >= 0.5 else (lo, mid)
        return int(lam + lo * math.sqrt(lam))
    k = max(1, math.floor(lam))
    pmf = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))  # P(X = k)
    tail, t, j = 0.0, pmf, k  # P(X >= k)
    while t > 0 and t > tail * 1e-17:
        tail += t
        j += 1
        t *= lam / j
    while rows * (tail - pmf) >= 0.5:  # P(X >= k + 1) = P(X >= k) - P(X = k)
        tail -= pmf
        k += 1
        pmf *= lam / k
    return k


def ideal_order_stats(order: int, occurrences: int, distinct: int, head_rows) -> OrderStats:
    """An :class:`OrderStats` of ideal uniform hashing for ``distinct`` n-grams (integer counts
    rounded from the expectations)."""
    heads = []
    for p in head_rows:
        p = int(p)
        colliding = expected_colliding_fraction(p, distinct)
        occupied = expected_occupied_rows(p, distinct)
        single = distinct * math.exp((distinct - 1) * math.log1p(-1.0 / p)) if distinct else 0.0
        heads.append(
            HeadStats(
                rows=p,
                occupied_rows=round(occupied),
                collided_rows=round(max(0.0, occupied - single)),
                colliding_distinct=round(colliding * distinct),
                colliding_occurrences=round(colliding * occurrences),
                max_row_load=expected_max_load(p, distinct),
                distinct=distinct,
                occurrences=occurrences,
            )  # fmt: skip
        )
    all_heads = math.prod(
        expected_colliding_fraction(int(p), distinct) for p in head_rows
    )  # fmt: skip
    return OrderStats(
        order=order,
        occurrences=occurrences,
        distinct=distinct,
        all_heads_colliding_occurrences=round(all_heads * occurrences),
        heads=tuple(heads),
    )


def ideal_layers(layout, layer_ids, distinct: dict[int, int], occurrences: int) -> dict:
    """``{layer: {order: OrderStats}}`` of ideal hashing for ``{order: distinct}``."""
    out = {}
    for layer in layer_ids:
        rows = layout.head_rows(layer)
        out[layer] = {
            n: ideal_order_stats(
                n, occurrences, distinct[n], rows[(n - 2) * layout.heads : (n - 1) * layout.heads]
            )
            for n in distinct
        }
    return out


# ---------------------------------------------------------------------------- the pass
def sketch_layers(plan, sketch) -> tuple[dict, tuple]:
    """``(layers, sweep points)`` of ideal hashing with the sketch's distinct estimates."""
    distinct = {n: sketch.distinct(n) for n in sketch.registers}
    layers = ideal_layers(plan.layout, plan.layer_ids, distinct, sketch.tokens)
    points = []
    for size in plan.sweep:
        lay = plan.layout.with_ngram_vocab([size] * (plan.layout.max_ngram - 1))
        points.append(
            SweepPoint(
                tuple(lay.ngram_vocab), ideal_layers(lay, plan.layer_ids, distinct, sketch.tokens)
            )
        )
    return layers, tuple(points)


def sketch_report(plan, sketch, warnings, stopped: str, bytes_read: int, started: float, **extra):
    """The report of an estimating pass: ``estimated`` and the relative standard error."""
    from .passes import make_report

    if sketch.tokens == 0 and not stopped:
        names = ", ".join(str(f.path) for f in plan.files[:3])
        raise EngramError(f"the corpus holds no tokens ({names}); nothing to count")
    layers, sweep = sketch_layers(plan, sketch)
    return make_report(
        plan, layers, sweep, tokens=sketch.tokens, documents=sketch.documents,
        warnings=warnings, stopped=stopped, bytes_read=bytes_read, started=started,
        estimated=True, relative_standard_error=sketch.relative_standard_error, **extra,
    )  # fmt: skip


def new_sketch(plan, vocab) -> NgramSketch:
    return NgramSketch(
        vocab, max_ngram=plan.layout.max_ngram, pad=plan.layout.pad_canonical_id(vocab)
    )
