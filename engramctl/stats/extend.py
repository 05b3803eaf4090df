"""A batch of corpus pieces as canonical ids with each piece's n-gram context in front: what the
exact counter (:mod:`engramctl.stats.counter`) and the sketches (:mod:`engramctl.stats.sketch`)
read. Documents start from pad context; a negative id is a dead (image) position, hashed as
DeepSeek-V4.1's engines hash it (:mod:`engramctl.hashing`): its n-grams are all pad, and no
n-gram reaches back across it.
"""

from __future__ import annotations

import numpy as np

from .._numba import njit
from ..errors import EngramError


@njit(cache=True, nogil=True)
def _extend_kernel(raw, offsets, doc_start, lut, pad, carry, ext, real):
    """Canonical ids with each piece's context in front; returns the first bad raw index or -1.

    raw (N,) ids; offsets (S+1,); doc_start (S,) uint8; carry (K,) int32 in/out context;
    ext (N + (S+D)*K,) int32 out; real (same,) uint8 out (1 where ext holds a token of the corpus).
    A negative raw id (D of them) is dead: a fresh pad context, then a pad token (its n-grams).
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
            if tok < 0:  # dead (as engramctl.hashing hashes it: no n-gram reaches across)
                ext[j : j + K + 1] = pad
                real[j : j + K] = 0
                real[j + K] = 1
                j += K + 1
                continue
            if tok >= V:
                return t
            ext[j] = lut[tok]
            real[j] = 1
            j += 1
        for k in range(K):
            carry[k] = ext[j - K + k]
    return -1


def extend_batch(ids, offsets, doc_start, lut, pad: int, carry: np.ndarray):
    """Canonical ids of a batch of pieces with each piece's n-gram context in front.

    Returns ``(ext, real, carry after the batch, bad)``: ``real`` marks the positions of ``ext``
    that hold a token of the corpus (an n-gram ends at each); ``bad`` is -1 or the index into
    ``ids`` of the first id at or above the vocab size (``ext`` is then incomplete). A negative
    id is a dead position: its n-grams are all pad and no n-gram reaches across it. ``carry``
    (the context before the batch) is left untouched.
    """
    ids = np.ascontiguousarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise EngramError(f"token ids must be a flat integer array, got {ids.dtype} {ids.shape}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    doc_start = np.ascontiguousarray(doc_start, dtype=np.uint8)
    if offsets.shape[0] != doc_start.shape[0] + 1 or offsets[-1] != ids.shape[0]:
        raise EngramError("offsets must hold one more entry than doc_start and end at len(ids)")
    K = carry.shape[0]
    dead = int(np.count_nonzero(ids < 0)) if ids.dtype.kind == "i" else 0
    ext = np.empty(ids.shape[0] + K * (doc_start.shape[0] + dead), dtype=np.int32)
    real = np.empty(ext.shape[0], dtype=np.uint8)
    carry = carry.copy()
    bad = _extend_kernel(ids, offsets, doc_start, lut, pad, carry, ext, real)
    return ext, real, carry, int(bad)
