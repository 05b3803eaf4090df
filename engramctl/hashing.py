"""Multi-head n-gram hashing: the plain-numpy specification and the numba kernel.

For a batch of raw ids ``[B, T]``: map through the canonical vocab; ``tok_k[t]`` is the canonical id
``k`` positions back, or the canonical pad id before the start (or the carried context of a stream).
For layer ``L`` with multipliers ``m``: ``mix_2 = tok_0*m0 ^ tok_1*m1``, ``mix_n = mix_{n-1} ^
tok_{n-1}*m_{n-1}`` in wrapping int64; head ``h`` of order ``n`` has row id ``mix_n mod p_h``
(floor modulo). Output per layer: ``[B, T, (max_ngram-1)*heads]`` int64, ordered like the head
offsets.

Dead positions (DeepSeek-V4.1's image positions, as vLLM and SGLang hash them): a negative raw id,
a position of a ``dead`` mask, or an id a :class:`DeadRule` names is dead. At a dead position the
token, and every older token of each n-gram that reaches back across it, is replaced by the pad
id, so no n-gram crosses a dead position and a dead position itself gets the row ids of the
all-pad n-grams. In canonical ids a dead position is :data:`DEAD` (-1), which a stream's carried
context keeps too.

:func:`hash_layer_reference` is the readable specification and test oracle. :class:`NgramHasher`
maps raw ids to canonical ids once per batch (:func:`_canonical_kernel`) and hashes each layer with
:func:`hash_canonical`, which runs a numba kernel parallel over (sequence, position chunk) tasks:
:func:`_hash_fast_kernel` (a float-reciprocal floor modulo, exact and vectorized across heads) when
every prime of the layer is at least ``FAST_MOD_MIN``, else :func:`_hash_exact_kernel` (integer
``%``); a batch with a dead position goes through :func:`_hash_dead_kernel` instead, so the
kernels of batches without one are untouched. Tests hold every kernel to the reference.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit, prange
from .dead import DEAD, DeadRule, mark_dead
from .errors import EngramError
from .layout import EngramLayout
from .vocab import CanonicalVocab, as_int64_ids, check_ids_in_vocab

# A layer whose primes are all at least this is hashed with the float-reciprocal floor modulo of
# :func:`floor_mod_fast` (exact there: see its docstring); otherwise with the integer ``%`` kernel.
FAST_MOD_MIN = 2**13
# Positions per parallel task: keeps the work split even when the batch is small (a single long
# document still uses every core) and the output a task writes contiguous.
CHUNK = 1024


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
    first); ``None`` means the sequences start here (pad context). Negative ids (here or in the
    context) are dead: from the first dead token looking back, ``tok_k`` is ``pad``.
    """
    x = np.asarray(canonical, dtype=np.int64)
    B, T = x.shape
    max_ngram = len(multipliers)
    K = max_ngram - 1
    if context is None:
        context = np.full((B, K), pad, dtype=np.int64)
    extended = np.concatenate([np.asarray(context, dtype=np.int64), x], axis=1)  # (B, K+T)
    shifted = [extended[:, K - k : K - k + T] for k in range(max_ngram)]  # tok_k, (B, T) each
    blocked = np.zeros((B, T), dtype=bool)
    for k in range(max_ngram):  # a dead tok_k blocks tok_k and every older token
        blocked |= shifted[k] < 0
        shifted[k] = np.where(blocked, pad, shifted[k])
    with np.errstate(over="ignore"):
        hashes = []
        mix = shifted[0] * multipliers[0]
        for n in range(2, max_ngram + 1):
            mix = np.bitwise_xor(mix, shifted[n - 1] * multipliers[n - 1])
            for j in range(heads):
                hashes.append(mix % head_rows[(n - 2) * heads + j])
    return np.stack(hashes, axis=2)


# ------------------------------------------------------------------------------- kernels
@njit(cache=True, parallel=True)
def _canonical_kernel(raw, lut, context, extended):
    """extended (B, K+T) <- context (B, K) ++ lut[raw (B, T)], a negative id -> ``DEAD``;
    returns how many entries of ``extended`` are dead."""
    B, T = raw.shape
    K = context.shape[1]
    dead = 0
    for b in prange(B):
        for k in range(K):
            extended[b, k] = context[b, k]
            if context[b, k] < 0:
                dead += 1
        for t in range(T):
            tok = raw[b, t]
            if tok >= 0:
                extended[b, K + t] = lut[tok]
            else:
                extended[b, K + t] = DEAD
                dead += 1
    return dead


@njit(cache=True)
def floor_mod_fast(mix, mix_f, p, inv_p):
    """``mix mod p`` (floor modulo) for ``p >= FAST_MOD_MIN``, given ``mix_f = float64(mix)``.

    Why it is exact: with ``x = mix / p`` and ``y = fl(mix_f * fl(1/p))`` (three roundings),
    ``|y - x| <= 3 * 2**-53 * 2**63 / p <= 0.375`` for ``p >= 2**13``, and ``y - 0.5`` is exact
    (``|y| <= 2**50``), so ``q = floor(y - 0.5)`` is ``floor(x)`` or ``floor(x) - 1``. Then
    ``r = mix - q*p`` (wrapping int64; the true value fits) lies in ``[0, 2p)``, and the unsigned
    ``min(r, r - p)`` (``r - p`` wraps to a huge value when ``r < p``) is ``mix mod p``.
    Branch-free, so a loop over heads vectorizes.
    """
    q = np.int64(np.floor(mix_f * inv_p - 0.5))
    r = np.uint64(mix - q * p)
    return np.int64(min(r, r - np.uint64(p)))


@njit(cache=True, parallel=True)
def _hash_fast_kernel(extended, multipliers, head_rows, inv_rows, offsets, out):
    """Row ids through :func:`floor_mod_fast`; every prime must be >= ``FAST_MOD_MIN``.

    extended (B, K+T) canonical ids, context first; head_rows, inv_rows (= 1/p), offsets
    (orders, heads); out (B, T, orders, heads) int64. The head loop is innermost (it vectorizes
    across heads); two positions share each pass over the heads, which halves the loop overhead.
    """
    B, T, orders, heads = out.shape  # orders == K == max_ngram - 1
    chunks = (T + CHUNK - 1) // CHUNK
    for task in prange(B * chunks):
        b = task // chunks
        start = (task % chunks) * CHUNK
        stop = min(T, start + CHUNK)
        for t in range(start, stop, 2):
            u = min(t + 1, stop - 1)  # the second position; equal to t (rewritten) at an odd end
            mix_t = extended[b, orders + t] * multipliers[0]
            mix_u = extended[b, orders + u] * multipliers[0]
            for i in range(orders):
                mix_t ^= extended[b, orders + t - (i + 1)] * multipliers[i + 1]
                mix_u ^= extended[b, orders + u - (i + 1)] * multipliers[i + 1]
                mix_t_f = np.float64(mix_t)
                mix_u_f = np.float64(mix_u)
                for j in range(heads):
                    p = head_rows[i, j]
                    inv_p = inv_rows[i, j]
                    out[b, t, i, j] = floor_mod_fast(mix_t, mix_t_f, p, inv_p) + offsets[i, j]
                    out[b, u, i, j] = floor_mod_fast(mix_u, mix_u_f, p, inv_p) + offsets[i, j]


@njit(cache=True, parallel=True)
def _hash_exact_kernel(extended, multipliers, head_rows, offsets, out):
    """Row ids with integer floor modulo (any prime); arguments as :func:`_hash_fast_kernel`."""
    B, T, orders, heads = out.shape
    chunks = (T + CHUNK - 1) // CHUNK
    for task in prange(B * chunks):
        b = task // chunks
        start = (task % chunks) * CHUNK
        for t in range(start, min(T, start + CHUNK)):
            mix = extended[b, orders + t] * multipliers[0]
            for i in range(orders):
                mix ^= extended[b, orders + t - (i + 1)] * multipliers[i + 1]
                for j in range(heads):
                    out[b, t, i, j] = mix % head_rows[i, j] + offsets[i, j]


@njit(cache=True, parallel=True)
def _hash_dead_kernel(extended, multipliers, head_rows, inv_rows, offsets, pad, fast, out):
    """Row ids where ``extended`` holds dead positions (negative): from the first dead token
    looking back, every token is ``pad``. Floor modulo by :func:`floor_mod_fast` when ``fast``
    (every prime >= ``FAST_MOD_MIN``), else integer ``%``; other arguments as
    :func:`_hash_fast_kernel`."""
    B, T, orders, heads = out.shape
    chunks = (T + CHUNK - 1) // CHUNK
    for task in prange(B * chunks):
        b = task // chunks
        start = (task % chunks) * CHUNK
        for t in range(start, min(T, start + CHUNK)):
            tok = extended[b, orders + t]
            blocked = tok < 0
            mix = (pad if blocked else tok) * multipliers[0]
            for i in range(orders):
                tok = extended[b, orders + t - (i + 1)]
                blocked = blocked or tok < 0
                mix ^= (pad if blocked else tok) * multipliers[i + 1]
                if fast:
                    mix_f = np.float64(mix)
                    for j in range(heads):
                        r = floor_mod_fast(mix, mix_f, head_rows[i, j], inv_rows[i, j])
                        out[b, t, i, j] = r + offsets[i, j]
                else:
                    for j in range(heads):
                        out[b, t, i, j] = mix % head_rows[i, j] + offsets[i, j]


def hash_canonical(
    extended: np.ndarray,
    multipliers: np.ndarray,
    head_rows: np.ndarray,
    heads: int,
    *,
    offsets: np.ndarray | None = None,
    out: np.ndarray | None = None,
    pad: int | None = None,
    dead: bool | None = None,
) -> np.ndarray:
    """Hash canonical ids of one layer with the numba kernels -> ``[B, T, H]`` int64.

    Parameters
    ----------
    extended : canonical ids ``[B, K+T]``, the ``K = max_ngram-1`` context ids first (pad ids
        where sequences start), then the ``T`` ids to hash.
    multipliers : int64 ``[max_ngram]`` of the layer.
    head_rows : the prime row count of each head, ``[(max_ngram-1)*heads]``.
    heads : heads per n-gram order.
    offsets : added to each head's row id (the head offsets give whole-table rows); default 0.
    out : optional C-contiguous int64 ``[B, T, H]`` array to write into (and return).
    pad : the canonical pad id. Given, negative entries of ``extended`` are dead positions
        (:data:`DEAD`), hashed as the module docstring says; ``None`` hashes every entry as the
        value it is (the bare kernels, for crafted values).
    dead : whether ``extended`` holds a dead position, when the caller knows (``None``: look).

    Examples
    --------
    Pad id 1 as the context of ``[3, 5, 7]`` (the hand-worked case of the tests):

    >>> hash_canonical(np.array([[1, 1, 3, 5, 7]]), np.array([3, 5, 7]),
    ...                np.array([11, 13, 17, 19]), heads=2)[0].tolist()
    [[1, 12, 11, 11], [0, 0, 7, 7], [1, 12, 8, 6]]
    """
    extended = np.ascontiguousarray(extended, dtype=np.int64)
    multipliers = np.ascontiguousarray(multipliers, dtype=np.int64)
    head_rows = np.ascontiguousarray(head_rows, dtype=np.int64)
    if multipliers.ndim != 1 or multipliers.shape[0] < 2 or head_rows.ndim != 1:
        raise EngramError(
            f"expected multipliers [max_ngram >= 2] and head_rows [H], got shapes "
            f"{multipliers.shape} and {head_rows.shape}"
        )
    orders = multipliers.shape[0] - 1
    H = head_rows.shape[0]
    if heads < 1 or H != orders * heads:
        raise EngramError(f"expected {orders} x {heads} head row counts, got {H}")
    if head_rows.min() < 1:
        raise EngramError("head row counts must be positive")
    if extended.ndim != 2 or extended.shape[1] < orders:
        raise EngramError(f"extended ids must be [B, {orders}+T], got shape {extended.shape}")
    B, T = extended.shape[0], extended.shape[1] - orders
    offsets = np.zeros(H, np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
    if offsets.shape != (H,):
        raise EngramError(f"offsets must be [{H}], got shape {offsets.shape}")
    if out is None:
        out = np.empty((B, T, H), dtype=np.int64)
    elif (
        out.shape != (B, T, H)
        or out.dtype != np.int64
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise EngramError(f"out must be a writeable C-contiguous int64 [{B}, {T}, {H}] array")
    out4 = out.reshape(B, T, orders, heads)
    rows2 = head_rows.reshape(orders, heads)
    offsets2 = np.ascontiguousarray(offsets.reshape(orders, heads))
    fast = bool(head_rows.min() >= FAST_MOD_MIN)
    inv_rows = 1.0 / rows2.astype(np.float64)
    if pad is not None and dead is None:
        dead = bool(extended.size) and int(extended.min()) < 0
    if pad is not None and dead:
        _hash_dead_kernel(extended, multipliers, rows2, inv_rows, offsets2, pad, fast, out4)
    elif fast:
        _hash_fast_kernel(extended, multipliers, rows2, inv_rows, offsets2, out4)
    else:
        _hash_exact_kernel(extended, multipliers, rows2, offsets2, out4)
    return out


# --------------------------------------------------------------------------- public API
class NgramHasher:
    """Hash raw token ids to per-head row ids for every Engram layer of a layout.

    Negative ids are dead positions (as in the engines); ``dead_rule`` names more raw ids that
    are (e.g. :meth:`DeadRule.sglang_v41`), and :meth:`hash` takes a ``dead`` mask.

    Examples
    --------
    >>> hasher = NgramHasher(layout, vocab)            # doctest: +SKIP
    >>> hasher.hash(np.array([[5, 17, 9]]))[1].shape   # doctest: +SKIP
    (1, 3, 16)
    """

    def __init__(
        self, layout: EngramLayout, vocab: CanonicalVocab, *, dead_rule: DeadRule | None = None
    ):
        if vocab.canonical_vocab_size != layout.vocab_size:
            raise EngramError(
                f"layout was made for a canonical vocab of {layout.vocab_size} ids, but the "
                f"vocab has {vocab.canonical_vocab_size}; rebuild the layout from this vocab"
            )
        self.layout = layout
        self.vocab = vocab
        self.dead_rule = dead_rule
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int64)
        self.pad = layout.pad_canonical_id(vocab)
        self._params = {
            layer_id: (
                layout.multipliers(layer_id),
                layout.head_rows(layer_id),
                layout.head_offsets(layer_id),
            )
            for layer_id in layout.layers
        }

    @property
    def context_size(self) -> int:
        """Canonical tokens a stream carries into its next piece: ``max_ngram - 1``."""
        return self.layout.max_ngram - 1

    def start_context(self, batch: int = 1) -> np.ndarray:
        """The pad context of sequences that start here, ``[batch, max_ngram-1]``."""
        return np.full((batch, self.context_size), self.pad, dtype=np.int64)

    def _validate(self, ids, dead=None) -> tuple[np.ndarray, bool]:
        ids = as_int64_ids(ids)
        if ids.ndim not in (1, 2):
            raise EngramError(f"token ids must be [T] or [B, T], got shape {list(ids.shape)}")
        squeeze = ids.ndim == 1
        ids = mark_dead(ids, dead, self.dead_rule)
        ids = np.ascontiguousarray(np.atleast_2d(ids))
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

    def _extend(self, ids, context) -> tuple[np.ndarray, int]:
        context = self._context(context, ids.shape[0])
        extended = np.empty((ids.shape[0], self.context_size + ids.shape[1]), dtype=np.int64)
        dead = _canonical_kernel(ids, self.lut, context, extended)
        return extended, int(dead)

    def canonical_with_context(self, ids, context: np.ndarray | None = None) -> np.ndarray:
        """Canonical ids ``[B, K+T]`` of validated raw ids ``[B, T]``, context prepended (a
        dead position is :data:`DEAD`)."""
        return self._extend(ids, context)[0]

    def canonical(self, ids, *, dead=None) -> np.ndarray:
        """Canonical ids shaped like raw ``ids``, :data:`DEAD` at dead positions (``dead`` as in
        :meth:`hash`)."""
        ids, squeeze = self._validate(ids, dead)
        canonical = self._extend(ids, None)[0][:, self.context_size :]
        return canonical[0] if squeeze else canonical

    def _layer_ids(self, layers) -> tuple[int, ...]:
        if layers is None:
            return self.layout.layers
        for layer_id in layers:
            self.layout.check_layer(layer_id)
        return tuple(layers)

    def _out_buffer(self, out, layer_id: int, shape: tuple[int, ...]) -> np.ndarray | None:
        if out is None or out.get(layer_id) is None:
            return None
        buffer = out[layer_id]
        if (
            not isinstance(buffer, np.ndarray)
            or buffer.shape != shape
            or buffer.dtype != np.int64
            or not buffer.flags.c_contiguous
            or not buffer.flags.writeable
        ):
            raise EngramError(
                f"out[{layer_id}] must be a writeable C-contiguous int64 array of shape "
                f"{list(shape)}"
            )
        return buffer

    def hash(
        self,
        ids,
        *,
        context: np.ndarray | None = None,
        layers=None,
        table_rows: bool = False,
        out: dict[int, np.ndarray] | None = None,
        dead=None,
    ) -> dict[int, np.ndarray]:
        """Row ids ``{layer_id: [B, T, H] int64}`` (``[T, H]`` for 1-D input).

        Parameters
        ----------
        ids : raw token ids ``[B, T]`` or ``[T]``; a negative id is a dead position.
        context : canonical ids just before ``ids`` (``[B, max_ngram-1]``, oldest first), as
            returned by :meth:`next_context`; ``None`` starts every sequence from pad context.
        layers : subset of the layout's layer ids (default: all).
        table_rows : add each head's offset, giving rows of the layer's whole table.
        out : optional ``{layer_id: array}`` of C-contiguous int64 arrays shaped like the result,
            written in place and returned. Reusing them across batches of one shape saves
            allocating (and the kernel zeroing) fresh pages, which costs about as much as the
            hashing itself.
        dead : optional boolean mask shaped like ``ids``: these positions are dead (image
            positions; see the module docstring). Default: only negative ids (and the ids of
            the hasher's ``dead_rule``) are.
        """
        ids, squeeze = self._validate(ids, dead)
        extended, dead_count = self._extend(ids, context)
        B, T = ids.shape
        H = self.layout.heads_per_layer
        result = {}
        for layer_id in self._layer_ids(layers):
            multipliers, rows, offsets = self._params[layer_id]
            buffer = self._out_buffer(out, layer_id, (T, H) if squeeze else (B, T, H))
            rows_out = hash_canonical(
                extended,
                multipliers,
                rows,
                self.layout.heads,
                offsets=offsets if table_rows else None,
                out=None if buffer is None else buffer.reshape(B, T, H),
                pad=self.pad,
                dead=dead_count > 0,
            )
            if buffer is not None:
                result[layer_id] = buffer  # rows_out is a view of it
            else:
                result[layer_id] = rows_out[0] if squeeze else rows_out
        return result

    def hash_reference(self, ids, *, context=None, layers=None, table_rows=False, dead=None):
        """The same as :meth:`hash` through the plain-numpy specification (slow, readable)."""
        ids, squeeze = self._validate(ids, dead)
        context = self._context(context, ids.shape[0])
        canonical = np.where(ids < 0, DEAD, self.vocab.apply(np.maximum(ids, 0)))
        result = {}
        for layer_id in self._layer_ids(layers):
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

    def next_context(self, ids, context: np.ndarray | None = None, *, dead=None) -> np.ndarray:
        """The context to carry after hashing ``ids``: its last ``max_ngram-1`` canonical ids,
        a dead position kept as :data:`DEAD` (``dead`` as in :meth:`hash`)."""
        ids, _ = self._validate(ids, dead)
        tail = ids[:, max(0, ids.shape[1] - self.context_size) :]  # only these can matter
        joined = self.canonical_with_context(tail, context)
        return np.ascontiguousarray(joined[:, joined.shape[1] - self.context_size :])


class HashStream:
    """Hash one long sequence (or a batch of them) piece by piece with carried context.

    Feeding the pieces of a document gives exactly the row ids of hashing it whole, dead
    positions included (the carried context keeps them).
    """

    def __init__(self, hasher: NgramHasher, batch: int = 1):
        self.hasher = hasher
        self.context = hasher.start_context(batch)

    @property
    def layout(self):
        return self.hasher.layout

    def hash(self, ids, *, table_rows: bool = False, dead=None) -> dict[int, np.ndarray]:
        """:meth:`feed`, under :meth:`NgramHasher.hash`'s name: a row source given a stream
        hashes each batch it is handed as the next piece of the stream (``generate``)."""
        return self.feed(ids, table_rows=table_rows, dead=dead)

    def feed(self, ids, *, dead=None, **kwargs) -> dict[int, np.ndarray]:
        """Row ids of the next piece (``dead`` and ``kwargs`` as :meth:`NgramHasher.hash`)."""
        ids2d = np.atleast_2d(np.asarray(ids))
        dead2d = None if dead is None else np.atleast_2d(np.asarray(dead))
        out = self.hasher.hash(ids2d, context=self.context, dead=dead2d, **kwargs)
        self.context = self.hasher.next_context(ids2d, self.context, dead=dead2d)
        if np.asarray(ids).ndim == 1:
            out = {layer: rows[0] for layer, rows in out.items()}
        return out
