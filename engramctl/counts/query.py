"""Querying a count memory: the rows of each context, ``P_counts`` of each target, λ.

:class:`CountsModel` opens a store for a vocab (refusing another one), hashes raw token streams
with the store's layout (:class:`~engramctl.hashing.NgramHasher`, the same hashing as the table)
and scores them with :func:`~engramctl.counts.smoothing.level_probability_kernel`.
"""

from __future__ import annotations

import numpy as np

from ..errors import EngramError
from ..hashing import NgramHasher
from ..table.core.meta import check_vocab_fingerprint
from .gate import GateInputs, gate_lambda, gate_names, model_inputs_needed
from .smoothing import distribution, level_probability_kernel, unigram_probabilities
from .store import CountsStore


def level_columns(layout, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of each level k = 1..M in a ``(P, G)`` row matrix, and how many each has.

    Column 0 is level 1; layer ``i``'s head ``h`` of order ``k`` is ``1 + i*H + (k-2)*heads + h``.
    """
    M, heads, H = layout.max_ngram, layout.heads, layout.heads_per_layer
    cols = np.zeros((M, max(1, n_layers * heads)), dtype=np.int64)
    ncols = np.zeros(M, dtype=np.int64)
    ncols[0] = 1
    for k in range(2, M + 1):
        found = [1 + i * H + (k - 2) * heads + h for i in range(n_layers) for h in range(heads)]
        cols[k - 1, : len(found)] = found
        ncols[k - 1] = len(found)
    return cols, ncols


class CountsModel:
    """A count memory ready to score: ``P_counts(next | context)`` and the gate λ."""

    def __init__(self, store: CountsStore, vocab):
        check_vocab_fingerprint(
            store.meta["vocab_fingerprint"],
            vocab.fingerprint,
            what=f"the count memory {store.path}",
            given="the vocab",
            advice="build the count memory with this vocab",
        )
        self.store = store
        self.vocab = vocab
        self.layout = store.layout
        self.hasher = NgramHasher(self.layout, vocab)
        self.layer_ids = store.layer_ids
        self.bases = np.array([store.layer_base(layer) for layer in self.layer_ids], np.int64)
        self.level_cols, self.level_ncols = level_columns(self.layout, len(self.layer_ids))
        self.discounts = store.discounts
        self.p0 = unigram_probabilities(store.unigram, self.discounts[0])
        self.gate_weights = np.asarray(store.meta["gate"]["weights"], dtype=np.float64)
        self.gate_names = gate_names(store.meta["gate"], self.gate_weights)
        # the summaries of the stored rows (format 2: the occupied ones, ``row_ids`` ascending)
        self.arrays = (np.asarray(store.tokens), np.asarray(store.counts),
                       np.asarray(store.totals))  # fmt: skip
        self.row_ids = None if store.row_ids is None else np.asarray(store.row_ids)
        self._locator = None  # the row ids' directory (:mod:`.locate`), made on first use

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        """Indices into :attr:`arrays` of layout rows (any shape; an absent row maps to the
        store's all-zero last row). Format 1 stores every row: the rows themselves."""
        if self.row_ids is None:
            return np.asarray(rows, dtype=np.int64)
        if self._locator is None:
            from .locate import RowLocator

            self._locator = RowLocator.build(self.row_ids)
        return self._locator(rows)

    @property
    def columns(self) -> int:
        return 1 + len(self.layer_ids) * self.layout.heads_per_layer

    @property
    def max_level(self) -> int:
        return self.layout.max_ngram

    def context_rows(self, ids: np.ndarray) -> np.ndarray:
        """``(T, G)`` store rows of the contexts ending at each position of a raw-id stream
        that starts a document (pad before it)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise EngramError(f"expected a 1-D stream of token ids, got shape {ids.shape}")
        hashed = self.hasher.hash(ids, layers=self.layer_ids, table_rows=True)
        rows = np.empty((ids.shape[0], self.columns), dtype=np.int64)
        rows[:, 0] = self.hasher.lut[ids]
        H = self.layout.heads_per_layer
        for i, layer in enumerate(self.layer_ids):
            rows[:, 1 + i * H : 1 + (i + 1) * H] = hashed[layer] + self.bases[i]
        return rows

    def score_rows(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``(P, 4)``: P_counts(target), count, distinct, level of each ``(rows, target)``."""
        out = np.empty((rows.shape[0], 4), dtype=np.float64)
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        if targets.size and (targets.min() < 0 or targets.max() >= self.p0.shape[0]):
            raise EngramError(f"token ids must be in 0..{self.p0.shape[0] - 1}")
        level_probability_kernel(
            np.ascontiguousarray(self.local_rows(rows)), targets, self.level_cols, self.level_ncols,
            *self.arrays, self.p0, self.discounts, out,
        )  # fmt: skip
        return out

    def score_stream(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids) - 1, 4)`` scores of ``ids[1:]``, each after the stream before it."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape[0] < 2:
            return np.zeros((0, 4))
        return self.score_rows(self.context_rows(ids[:-1]), ids[1:])

    @property
    def gate_reads(self) -> set[str]:
        """What the gate reads of the model (:class:`~engramctl.counts.gate.GateInputs` fields
        besides the evidence; empty for the build's gate)."""
        return model_inputs_needed(self.gate_names)

    @property
    def needs_model_entropy(self) -> bool:
        """Does the gate read the model (it was fitted against a model)?"""
        return bool(self.gate_reads)

    def gate(self, scores: np.ndarray, mix: float | None = None, model_entropy=None,
             inputs: GateInputs | None = None) -> np.ndarray:  # fmt: skip
        """λ per scored position: the constant ``mix``, or the fitted gate on the evidence
        (``inputs``: the evidence and what the gate reads of the model, or just the model's
        entropy at each position)."""
        if mix is not None:
            return np.full(scores.shape[0], float(mix))
        if inputs is None:
            inputs = GateInputs(scores[:, 1:4], model_entropy=model_entropy)
        return gate_lambda(self.gate_weights, inputs, self.max_level, names=self.gate_names)

    def distribution_after(self, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(P_counts(. | history) over raw ids, the context's rows)`` after a non-empty
        raw-id history."""
        tail = np.asarray(history[-self.max_level :], dtype=np.int64)
        rows = self.context_rows(tail)[-1]
        prob = distribution(self.local_rows(rows), self.level_cols, self.level_ncols,
                            *self.arrays, self.p0, self.discounts)  # fmt: skip
        return prob, rows

    def next_distribution(self, history: list[int], model_entropy=None, *, model_raw=None,
                          recent_gain: float = 0.0) -> tuple[np.ndarray, float]:  # fmt: skip
        """``(P_counts(. | history) over raw ids, λ)`` after a non-empty raw-id history.

        For a gate fitted against a model: ``model_entropy`` (over its classes), ``model_raw``
        (its distribution over raw ids, whose top token the gate may read) and the document's
        ``recent_gain`` so far (:class:`~engramctl.counts.gate.RecentGain`)."""
        prob, rows = self.distribution_after(history)
        evidence = self.score_rows(rows[None, :], np.zeros(1, np.int64))[:, 1:4]
        fields = {"model_entropy": None if model_entropy is None else [model_entropy]}
        if model_raw is not None:
            top = int(np.argmax(model_raw))
            fields |= {"model_top": [float(model_raw[top])], "counts_of_model_top": [prob[top]],
                       "recent_gain": [recent_gain]}  # fmt: skip
        inputs = GateInputs(evidence, **{k: None if v is None else np.asarray(v, np.float64)
                                         for k, v in fields.items()})  # fmt: skip
        return prob, float(self.gate(evidence, inputs=inputs)[0])
