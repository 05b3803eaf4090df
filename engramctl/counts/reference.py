"""The plain reference estimator: exact dict counts, no hashing, no truncation.

The readable specification of the count memory and its test oracle. Documents are given as
canonical ids (what the contexts are made of, as in the Engram hashing) and raw ids (what is
predicted). At each position ``t >= 1`` of a document, the context of level ``k`` (1..M) is the
last ``k`` canonical ids up to ``t - 1``, with the canonical pad id before the document's start
(exactly the n-gram the hashing sees), and the raw id at ``t`` is counted after it. The unigram
counts every raw id. Probabilities follow :mod:`engramctl.counts.smoothing`; the numba store
gives the same numbers when no row collides and no row holds more than K continuations.

>>> ref = ReferenceCounts(vocab_size=4, max_order=2, pad=0)
>>> ref.add(np.array([1, 2, 1, 2]), np.array([1, 2, 1, 2]))
>>> ref.finish()
>>> round(sum(ref.prob([1], y) for y in range(4)), 12)
1.0
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..errors import EngramError
from .smoothing import ney_discount, unigram_probabilities


class ReferenceCounts:
    """Exact next-token counts per context length 1..``max_order`` and the exact unigram."""

    def __init__(self, *, vocab_size: int, max_order: int, pad: int):
        self.vocab_size = int(vocab_size)
        self.max_order = int(max_order)
        self.pad = int(pad)
        # level k -> context tuple (k canonical ids) -> Counter(raw next id)
        self.tables = [defaultdict(Counter) for _ in range(self.max_order + 1)]
        self.unigram = np.zeros(self.vocab_size, dtype=np.int64)
        self.discounts: list[float] = []
        self.p0: np.ndarray | None = None

    def context(self, history, k: int) -> tuple:
        """The last ``k`` canonical ids of ``history``, pad-filled on the left."""
        history = [int(x) for x in history][-k:]
        return tuple([self.pad] * (k - len(history)) + history)

    def add(self, canonical: np.ndarray, raw: np.ndarray) -> None:
        """Count one document (its canonical and raw ids, the same length)."""
        canonical, raw = np.asarray(canonical), np.asarray(raw)
        if canonical.shape != raw.shape:
            raise EngramError("canonical and raw ids must have the same length")
        np.add.at(self.unigram, raw, 1)
        for t in range(1, len(raw)):
            for k in range(1, self.max_order + 1):
                self.tables[k][self.context(canonical[:t], k)][int(raw[t])] += 1

    def finish(self) -> None:
        """Estimate each level's discount from its counts of counts."""
        n = np.bincount(np.minimum(self.unigram, 3), minlength=4)
        self.discounts = [ney_discount(int(n[1]), int(n[2]))]
        for k in range(1, self.max_order + 1):
            n1 = n2 = 0
            for continuations in self.tables[k].values():
                for c in continuations.values():
                    n1 += c == 1
                    n2 += c == 2
            self.discounts.append(ney_discount(n1, n2))
        self.p0 = unigram_probabilities(self.unigram, self.discounts[0])

    def evidence(self, history) -> tuple[int, int, int]:
        """``(count, distinct continuations, level)`` at the longest level with data."""
        best = (0, 0, 0)
        for k in range(1, self.max_order + 1):
            continuations = self.tables[k].get(self.context(history, k))
            if continuations:
                best = (sum(continuations.values()), len(continuations), k)
        return best

    def distribution(self, history) -> np.ndarray:
        """``P(. | history)`` over the whole vocab (``history``: canonical ids, oldest first)."""
        if self.p0 is None:
            raise EngramError("call finish() before querying")
        prob = self.p0.copy()
        for k in range(1, self.max_order + 1):
            continuations = self.tables[k].get(self.context(history, k))
            if not continuations:
                continue
            total, d = sum(continuations.values()), self.discounts[k]
            ids = np.array(list(continuations.keys()), dtype=np.int64)
            share = np.maximum(np.array(list(continuations.values()), float) - d, 0) / total
            prob = (1.0 - share.sum()) * prob
            prob[ids] += share
        return prob

    def prob(self, history, y: int) -> float:
        """``P(y | history)`` (one token: no vocab-sized array)."""
        if self.p0 is None:
            raise EngramError("call finish() before querying")
        prob = float(self.p0[int(y)])
        for k in range(1, self.max_order + 1):
            continuations = self.tables[k].get(self.context(history, k))
            if not continuations:
                continue
            total, d = sum(continuations.values()), self.discounts[k]
            kept = sum(max(c - d, 0.0) for c in continuations.values())
            prob = max(continuations.get(int(y), 0) - d, 0.0) / total + (1 - kept / total) * prob
        return prob
