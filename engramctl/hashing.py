"""Multi-head n-gram hashing: the plain-numpy specification and the numba kernel.

For a batch of raw ids ``[B, T]``: map through the canonical vocab; ``tok_k[t]`` is the canonical id
``k`` positions back, or the canonical pad id before the start (or the carried context of a stream).
For layer ``L`` with multipliers ``m``: ``mix_2 = tok_0*m0 ^ tok_1*m1``, ``mix_n = mix_{n-1} ^
tok_{n-1}*m_{n-1}`` in wrapping int64; head ``h`` of order ``n`` has row id ``mix_n mod p_h``
(floor modulo). Output per layer: ``[B, T, (max_ngram-1)*heads]`` int64, ordered like the head
offsets.

:func:`hash_layer_reference` is the readable specification and test oracle; :class:`NgramHasher`
runs :func:`_hash_kernel` (numba, parallel over the batch) and is held to the reference by tests.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit, prange
from .errors import EngramError
from .layout import EngramLayout
from .vocab import CanonicalVocab, check_ids_in_vocab

# Heads with a prime below this use a float reciprocal reduction, exact because every
# intermediate stays below 2**53; larger primes fall back to the integer ``%``.
FAST_MOD_LIMIT = 2**26


# --------------------------------------------------------------------------- specification
def hash_layer_reference(
    canonical: np.ndarray,
    multipliers: np.ndarray,
    head_rows: np.ndarray,
    heads: int,
    pad: int,
    context: np.ndarray | None = None,
) -> np.ndarray:
    """Plain-numpy hashing of canonical ids ``[B, T]`` for one layer -> ``[B, T, H]`` int64.

    ``context`` ``[B, max_ngram-1]`` holds the canonical ids just before the batch (oldest
    first); ``None`` means the sequences start here (pad context).
    """
    x = np.asarray(canonical, dtype=np.int64)
    B, T = x.shape
    max_ngram = len(multipliers)
    K = max_ngram - 1
    if context is None:
        context = np.full((B, K), pad, dtype=np.int64)
    extended = np.concatenate([np.asarray(context, dtype=np.int64), x], axis=1)  # (B, K+T)
    shifted = [extended[:, K - k : K - k + T] for k in range(max_ngram)]  # tok_k, (B, T) each
    with np.errstate(over="ignore"):
        hashes = []
        mix = shifted[0] * multipliers[0]
        for n in range(2, max_ngram + 1):
            mix = np.bitwise_xor(mix, shifted[n - 1] * multipliers[n - 1])
            for j in range(heads):
                hashes.append(mix % head_rows[(n - 2) * heads + j])
    return np.stack(hashes, axis=2)


# ------------------------------------------------------------------------------- kernel
@njit(cache=True, inline="always")
def _floor_mod(mix, hi, lo, negative, p, inv_p, two32_mod_p, two64_mod_p, fast):
    """``mix mod p`` in [0, p) for int64 ``mix`` split as uint64 ``hi*2**32 + lo``."""
    if not fast:
        return mix % p
    # hi mod p via the float reciprocal; off by at most one p, corrected branch-free.
    r = hi - np.int64(np.float64(hi) * inv_p) * p
    r += p & (r >> 63)
    r -= p
    r += p & (r >> 63)
    v = r * two32_mod_p + lo  # < 2**52: exact in float64
    r = v - np.int64(np.float64(v) * inv_p) * p
    r += p & (r >> 63)
    r -= p
    r += p & (r >> 63)
    # a negative int64 is its uint64 value minus 2**64
    r -= two64_mod_p & negative
    r += p & (r >> 63)
    return r


@njit(cache=True, parallel=True)
def _hash_kernel(
    raw, lut, context, multipliers, head_rows, inv_rows, two32_mod, two64_mod, fast, heads,
    offsets, out
):
    """raw (B, T) int64 token ids; context (B, K) canonical ids; out (B, T, H) int64."""
    B, T = raw.shape
    K = context.shape[1]
    max_ngram = multipliers.shape[0]
    mask32 = np.uint64(0xFFFFFFFF)
    for b in prange(B):
        for t in range(T):
            tok = raw[b, t]
            if tok >= 0:
                tok = lut[tok]
            mix = tok * multipliers[0]
            for n in range(2, max_ngram + 1):
                k = n - 1
                if t - k >= 0:
                    prev = raw[b, t - k]
                    if prev >= 0:
                        prev = lut[prev]
                else:
                    prev = context[b, K + t - k]
                mix ^= prev * multipliers[k]
                u = np.uint64(mix)
                hi = np.int64(u >> np.uint64(32))
                lo = np.int64(u & mask32)
                negative = mix >> 63  # all ones when mix < 0
                base = (n - 2) * heads
                for j in range(heads):
                    h = base + j
                    out[b, t, h] = offsets[h] + _floor_mod(
                        mix, hi, lo, negative, head_rows[h], inv_rows[h], two32_mod[h],
                        two64_mod[h], fast[h],
                    )


# --------------------------------------------------------------------------- public API
class NgramHasher:
    """Hash raw token ids to per-head row ids for every Engram layer of a layout.

    Examples
    --------
    >>> hasher = NgramHasher(layout, vocab)            # doctest: +SKIP
    >>> hasher.hash(np.array([[5, 17, 9]]))[1].shape   # doctest: +SKIP
    (1, 3, 16)
    """

    def __init__(self, layout: EngramLayout, vocab: CanonicalVocab):
        if vocab.canonical_vocab_size != layout.vocab_size:
            raise EngramError(
                f"layout was made for a canonical vocab of {layout.vocab_size} ids, but the "
                f"vocab has {vocab.canonical_vocab_size}; rebuild the layout from this vocab"
            )
        self.layout = layout
        self.vocab = vocab
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int64)
        self.pad = layout.pad_canonical_id(vocab)
        self._params = {}
        for layer_id in layout.layers:
            rows = layout.head_rows(layer_id)
            self._params[layer_id] = (
                layout.multipliers(layer_id),
                rows,
                1.0 / rows.astype(np.float64),
                np.array([(1 << 32) % int(p) for p in rows], dtype=np.int64),
                np.array([(1 << 64) % int(p) for p in rows], dtype=np.int64),
                rows < FAST_MOD_LIMIT,
                layout.head_offsets(layer_id),
            )

    @property
    def context_size(self) -> int:
        """Canonical tokens a stream carries into its next piece: ``max_ngram - 1``."""
        return self.layout.max_ngram - 1

    def start_context(self, batch: int = 1) -> np.ndarray:
        """The pad context of sequences that start here, ``[batch, max_ngram-1]``."""
        return np.full((batch, self.context_size), self.pad, dtype=np.int64)

    def _validate(self, ids) -> tuple[np.ndarray, bool]:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise EngramError(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim not in (1, 2):
            raise EngramError(f"token ids must be [T] or [B, T], got shape {ids.shape}")
        squeeze = ids.ndim == 1
        ids = np.ascontiguousarray(np.atleast_2d(ids), dtype=np.int64)
        check_ids_in_vocab(ids, self.vocab.source_vocab_size)
        return ids, squeeze

    def _context(self, context, batch: int) -> np.ndarray:
        if context is None:
            return self.start_context(batch)
        context = np.ascontiguousarray(np.atleast_2d(context), dtype=np.int64)
        if context.shape != (batch, self.context_size):
            raise EngramError(
                f"context must be [{batch}, {self.context_size}], got {list(context.shape)}"
            )
        return context

    def hash(
        self,
        ids,
        *,
        context: np.ndarray | None = None,
        layers=None,
        table_rows: bool = False,
    ) -> dict[int, np.ndarray]:
        """Row ids ``{layer_id: [B, T, H] int64}`` (``[T, H]`` for 1-D input).

        Parameters
        ----------
        ids : raw token ids ``[B, T]`` or ``[T]``; negative ids pass through the vocab unchanged.
        context : canonical ids just before ``ids`` (``[B, max_ngram-1]``, oldest first), as
            returned by :meth:`next_context`; ``None`` starts every sequence from pad context.
        layers : subset of the layout's layer ids (default: all).
        table_rows : add each head's offset, giving rows of the layer's whole table.
        """
        ids, squeeze = self._validate(ids)
        context = self._context(context, ids.shape[0])
        result = {}
        for layer_id in layers if layers is not None else self.layout.layers:
            mult, rows, inv, two32, two64, fast, offsets = self._params[layer_id]
            out = np.empty((*ids.shape, rows.shape[0]), dtype=np.int64)
            _hash_kernel(
                ids, self.lut, context, mult, rows, inv, two32, two64, fast,
                self.layout.heads, offsets if table_rows else np.zeros_like(offsets), out,
            )
            result[layer_id] = out[0] if squeeze else out
        return result

    def hash_reference(self, ids, *, context=None, layers=None, table_rows=False):
        """The same as :meth:`hash` through the plain-numpy specification (slow, readable)."""
        ids, squeeze = self._validate(ids)
        context = self._context(context, ids.shape[0])
        canonical = self.vocab.apply(ids)
        result = {}
        for layer_id in layers if layers is not None else self.layout.layers:
            out = hash_layer_reference(
                canonical,
                self.layout.multipliers(layer_id),
                self.layout.head_rows(layer_id),
                self.layout.heads,
                self.pad,
                context,
            )
            if table_rows:
                out = out + self.layout.head_offsets(layer_id)
            result[layer_id] = out[0] if squeeze else out
        return result

    def next_context(self, ids, context: np.ndarray | None = None) -> np.ndarray:
        """The context to carry after hashing ``ids`` (its last ``max_ngram-1`` canonical ids)."""
        ids, _ = self._validate(ids)
        context = self._context(context, ids.shape[0])
        joined = np.concatenate([context, self.vocab.apply(ids)], axis=1)
        return np.ascontiguousarray(joined[:, joined.shape[1] - self.context_size :])


class HashStream:
    """Hash one long sequence (or a batch of them) piece by piece with carried context.

    Feeding the pieces of a document gives exactly the row ids of hashing it whole.
    """

    def __init__(self, hasher: NgramHasher, batch: int = 1):
        self.hasher = hasher
        self.context = hasher.start_context(batch)

    def feed(self, ids, **kwargs) -> dict[int, np.ndarray]:
        ids2d = np.atleast_2d(np.asarray(ids))
        out = self.hasher.hash(ids2d, context=self.context, **kwargs)
        self.context = self.hasher.next_context(ids2d, self.context)
        if np.asarray(ids).ndim == 1:
            out = {layer: rows[0] for layer, rows in out.items()}
        return out
