"""A corpus as one token stream cut into model windows: the cut ``train``, ``eval`` and
``cache-plan`` share.

Documents are tokenized without special tokens and joined by the tokenizer's end-of-sequence id
into one stream; ``eval`` cuts it into windows of ``seq_len + 1`` tokens that score every target
once (:func:`lm_windows`, the last window padded with EOS), each window hashed from pad context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EngramError

EOS_TOKENS = ("<｜end▁of▁sentence｜>", "</s>", "<|endoftext|>", "<eos>")


@dataclass(frozen=True)
class CorpusStream:
    """A corpus as one EOS-joined int64 token stream, and its UTF-8 text bytes."""

    ids: np.ndarray  # raw token ids, each document followed by EOS
    text_bytes: int | None  # bytes of the text read (None for pre-tokenized input)
    documents: int


def read_corpus_stream(path, tokenizer) -> CorpusStream:
    """Read and tokenize corpus paths (a file, directory or glob, or a list of them) into one
    token stream."""
    from .files import CorpusOptions, CorpusWarnings, discover_files
    from .readers import read_batches
    from .tokenize import TextTokenizer

    paths = [str(p) for p in path] if isinstance(path, list | tuple) else [str(path)]
    files = discover_files(paths)
    encoder = TextTokenizer(tokenizer)
    eos = np.array([eos_id(tokenizer)], dtype=np.int64)
    pieces: list[np.ndarray] = []
    text_bytes: int | None = 0
    documents = 0
    for batch in read_batches(files, CorpusOptions(field_flags=False), CorpusWarnings()):
        if batch.texts is not None:
            text_bytes = (
                None
                if text_bytes is None
                else text_bytes + sum(len(t.encode("utf-8")) for t in batch.texts)
            )
            ids, offsets = encoder.encode(batch.texts)
        else:
            text_bytes, ids, offsets = None, batch.ids, batch.offsets
        for k, start in enumerate(batch.doc_start):
            if start and documents:
                pieces.append(eos)  # the previous document ends here
            documents += bool(start)
            pieces.append(np.asarray(ids[offsets[k] : offsets[k + 1]], dtype=np.int64))
    if not documents:
        raise EngramError(f"corpus {', '.join(paths)} holds no documents")
    pieces.append(eos)
    return CorpusStream(np.concatenate(pieces), text_bytes, documents)


def eos_id(tokenizer) -> int:
    """The tokenizer's end-of-sequence id (the document separator), or 0."""
    for token in EOS_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def lm_windows(stream: np.ndarray, seq_len: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[N, seq_len + 1]`` scoring every target once, and the mask of real targets.

    >>> w, m = lm_windows(np.arange(6), 3, pad=-1)
    >>> w.tolist(), m.tolist()
    ([[0, 1, 2, 3], [3, 4, 5, -1]], [[True, True, True], [True, True, False]])
    """
    n_targets = len(stream) - 1
    if n_targets < 1:
        raise EngramError("the benchmark holds fewer than two tokens")
    count = math.ceil(n_targets / seq_len)
    padded = np.full(count * seq_len + 1, pad, dtype=np.int64)
    padded[: len(stream)] = stream
    starts = np.arange(count)[:, None] * seq_len
    windows = padded[starts + np.arange(seq_len + 1)[None, :]]
    mask = (starts + np.arange(1, seq_len + 1)[None, :]) < len(stream)
    return windows, mask
