"""Tokenizing corpus batches: the Rust ``tokenizers`` ``encode_batch`` on a background thread.

:class:`TextTokenizer` encodes a list of texts without special tokens (no BOS/EOS) into flat ids
and offsets; :func:`tokenized_batches` runs reading and tokenizing a few batches ahead of the
consumer, so reading, tokenizing (the tokenizer's own thread pool) and counting overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import numpy as np

from .._background import background_iter
from ..errors import UsageError
from .readers import Batch


class TextTokenizer:
    """Batch tokenization with the Rust ``tokenizers`` (no special tokens added)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int64 ids and offsets ``(len(texts)+1,)`` of a list of texts."""
        encodings = self._encode(texts, add_special_tokens=False)
        id_lists = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        offsets = np.zeros(len(id_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(offsets[-1]))
        return ids, offsets


def tokenized_batches(
    batches: Iterator[Batch], tokenizer: TextTokenizer | None, *, prefetch: int = 2
) -> Iterator[Batch]:
    """Turn text batches into id batches on a background thread (id batches pass through).

    The thread reads and tokenizes up to ``prefetch`` batches ahead; an error there is raised
    here. Closing the generator stops the thread after its current batch
    (:func:`engramctl._background.background_iter`).
    """

    def tokenize(batch: Batch) -> Batch:
        if batch.texts is not None:
            if tokenizer is None:
                raise UsageError("text input needs a tokenizer (--tokenizer)")
            batch.ids, batch.offsets = tokenizer.encode(batch.texts)
            batch.texts = None
        return batch

    return background_iter(map(tokenize, batches), ahead=prefetch, name="engramctl-corpus")
