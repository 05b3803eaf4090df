"""Language-model data for train/eval: documents, token streams, the model vocab, windows.

A private stand-in for ``corpus.py`` (another branch) until it lands: reads ``.jsonl`` (a
``text`` field per line), ``.txt`` (one document per file) or a directory of those. Documents are
tokenized without special tokens and joined by the tokenizer's end-of-sequence id into one stream,
which is cut into non-overlapping windows of ``seq_len + 1`` tokens (inputs and shifted targets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EngramError

TEXT_SUFFIXES = (".jsonl", ".txt")
EOS_TOKENS = ("<｜end▁of▁sentence｜>", "</s>", "<|endoftext|>", "<eos>")


def corpus_files(path: Path) -> list[Path]:
    """The readable files of a corpus path (a file, or a directory searched recursively)."""
    path = Path(path)
    if not path.exists():
        raise EngramError(f"corpus not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise EngramError(f"no {'/'.join(TEXT_SUFFIXES)} files under {path}")
    return files


def read_documents(path: Path) -> list[str]:
    """Texts of every document of a corpus file or directory (jsonl ``text`` fields, txt files)."""
    docs: list[str] = []
    for file in corpus_files(path):
        if file.suffix == ".jsonl":
            with open(file, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise EngramError(f"{file}:{number}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise EngramError(
                            f"{file}:{number}: expected an object with a 'text' string"
                        )
                    docs.append(record["text"])
        else:
            try:
                docs.append(file.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise EngramError(f"{file} is not UTF-8 text") from None
    if not docs:
        raise EngramError(f"corpus {path} holds no documents")
    return docs


def eos_id(tokenizer) -> int:
    """The tokenizer's end-of-sequence id (the document separator), or 0."""
    for token in EOS_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def token_stream(docs: list[str], tokenizer) -> np.ndarray:
    """All documents tokenized (no special tokens), each followed by EOS, as one int64 stream."""
    eos = eos_id(tokenizer)
    pieces = []
    for encoding in tokenizer.encode_batch(docs, add_special_tokens=False):
        pieces.append(np.asarray(encoding.ids, dtype=np.int64))
        pieces.append(np.array([eos], dtype=np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


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
