"""Language-model data for train/eval: the model vocab and training windows.

Corpora become one EOS-joined token stream in :mod:`engramctl.corpus.stream` (shared with
``cache-plan``, re-exported here); training cuts it into windows of ``seq_len + 1`` tokens (inputs
and shifted targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..corpus.stream import EOS_TOKENS, CorpusStream, eos_id, read_corpus_stream
from ..errors import EngramError

__all__ = [
    "EOS_TOKENS",
    "CorpusStream",
    "ModelVocab",
    "eos_id",
    "read_corpus_stream",
    "text_windows",
]


def text_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows ``[N, seq_len + 1]`` (consecutive windows share one token).

    >>> text_windows(np.arange(7), 3).tolist()
    [[0, 1, 2, 3], [3, 4, 5, 6]]
    """
    count = (len(stream) - 1) // seq_len
    if count < 1:
        raise EngramError(
            f"the corpus has {len(stream)} tokens: too few for one window of {seq_len}"
        )
    starts = np.arange(count) * seq_len
    return stream[starts[:, None] + np.arange(seq_len + 1)[None, :]]


@dataclass(frozen=True)
class ModelVocab:
    """Model vocabularies: every raw id seen in training (inputs), the frequent ones (outputs).

    Model id 0 is "unknown" on both sides; input id ``i + 1`` is ``raw_ids[i]``, output id
    ``j + 1`` is ``output_ids[j]``. Restricting outputs keeps the softmax small enough for CPU
    training with a 129k-token tokenizer; inputs keep every seen id, so no model loses input
    information.

    >>> mv = ModelVocab(np.array([5, 9]), np.array([9]))
    >>> mv.encode(np.array([9, 5, 7])).tolist(), mv.encode_targets(np.array([9, 5])).tolist()
    ([2, 1, 0], [1, 0])
    """

    raw_ids: np.ndarray  # sorted distinct raw token ids seen in training (inputs)
    output_ids: np.ndarray  # sorted subset predicted by the output layer

    @classmethod
    def from_stream(cls, stream: np.ndarray, min_count: int = 1) -> ModelVocab:
        """Inputs: every id in ``stream``; outputs: those occurring ``min_count`` times or more."""
        ids, counts = np.unique(stream, return_counts=True)
        return cls(ids.astype(np.int64), ids[counts >= max(1, min_count)].astype(np.int64))

    @property
    def size(self) -> int:
        return int(len(self.raw_ids)) + 1

    @property
    def output_size(self) -> int:
        return int(len(self.output_ids)) + 1

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids -> input ids (0 for ids never seen in training)."""
        return _lookup(self.raw_ids, raw)

    def encode_targets(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids -> output ids (0 for ids outside the output vocabulary)."""
        return _lookup(self.output_ids, raw)


def _lookup(sorted_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Position + 1 of each raw id in ``sorted_ids``, 0 where absent.

    >>> _lookup(np.array([3, 8]), np.array([8, 4])).tolist()
    [2, 0]
    """
    raw = np.asarray(raw, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(raw.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, raw), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == raw, pos + 1, 0).astype(np.int64)
