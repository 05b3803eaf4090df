"""Tokenizing corpus batches: the Rust ``tokenizers`` ``encode_batch`` on a background thread.

:class:`TextTokenizer` encodes a list of texts without special tokens (no BOS/EOS) into flat ids
and offsets; :func:`tokenized_batches` runs reading and tokenizing a few batches ahead of the
consumer, so reading, tokenizing (the tokenizer's own thread pool) and counting overlap.

With a token limit (``hash-stats --limit-tokens``) tokenizing stops there, inside a document too:
:meth:`TextTokenizer.encode_up_to` tokenizes a long text only as far as it must, a prefix cut
before a space that follows a letter or digit (where the pre-tokenizers of byte-level BPE
tokenizers split anyway), keeping only ids well before the cut, so they are exactly the first
ids of the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import chain

import numpy as np

from .._background import background_iter
from ..errors import UsageError
from .readers import Batch

# A long text under a token limit is first tokenized as a prefix of this many characters per id
# still needed (at least PREFIX_MIN_CHARS), cut where _SAFE_CUT matches; PREFIX_MARGIN ids before
# the cut are dropped (they could differ from the whole text's), and the prefix grows 4x until
# it holds enough ids (by the ids per character it saw, 1.5x to 4x).
PREFIX_CHARS_PER_TOKEN = 6
PREFIX_MIN_CHARS = 1 << 12
PREFIX_MARGIN = 16
_SAFE_CUT = re.compile(r"(?<=\w) ")


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

    def encode_up_to(self, texts: list[str], want: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`encode` until ``want`` ids are made, then no more: at least ``want`` ids
        (or every id of ``texts``), each exactly an id of the whole text it comes from; the
        texts after that point get none (their offsets repeat). A text is tokenized whole, or
        (a long one) as a prefix of about the length ``want`` ids need."""
        lists: list = []
        made = 0
        for text in texts:
            if made >= want:
                lists.append([])
                continue
            ids = self._prefix_ids(text, want - made)
            lists.append(ids)
            made += len(ids)
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(offsets[-1]))
        return ids, offsets

    def _prefix_ids(self, text: str, need: int) -> list[int]:
        """At least ``need`` first ids of ``text`` (all of them if it has fewer)."""
        size = max(PREFIX_MIN_CHARS, need * PREFIX_CHARS_PER_TOKEN)
        while size < len(text):
            cut = _SAFE_CUT.search(text, size)
            if cut is None:
                break
            ids = self._encode([text[: cut.start()]], add_special_tokens=False)[0].ids
            if len(ids) >= need + PREFIX_MARGIN:  # the last few may differ from the whole text's
                return ids[: len(ids) - PREFIX_MARGIN]
            grow = 1.25 * (need + PREFIX_MARGIN) / max(1, len(ids))  # from the ids per char seen
            size = int(cut.start() * min(4.0, max(1.5, grow)))
        return self._encode([text], add_special_tokens=False)[0].ids


def tokenized_batches(
    batches: Iterator[Batch],
    tokenizer: TextTokenizer | None,
    *,
    prefetch: int = 2,
    limit: int | None = None,
) -> Iterator[Batch]:
    """Turn text batches into id batches on a background thread (id batches pass through).

    The thread reads and tokenizes up to ``prefetch`` batches ahead; an error there is raised
    here. Closing the generator stops the thread after its current batch
    (:func:`engramctl._background.background_iter`). With ``limit``, text past the first
    ``limit + 1`` ids is not tokenized (:meth:`TextTokenizer.encode_up_to`): the consumer that
    stops at ``limit`` sees one id more than it keeps, so it knows the input went on; batches
    after that come with no ids.
    """
    made = 0

    def tokenize(batch: Batch) -> Batch:
        nonlocal made
        if batch.texts is not None:
            if tokenizer is None:
                raise UsageError("text input needs a tokenizer (--tokenizer)")
            if limit is None:
                batch.ids, batch.offsets = tokenizer.encode(batch.texts)
            else:
                want = max(0, limit + 1 - made)
                batch.ids, batch.offsets = tokenizer.encode_up_to(batch.texts, want)
            batch.texts = None
        made += batch.tokens
        return batch

    return background_iter(map(tokenize, batches), ahead=prefetch, name="engramctl-corpus")
