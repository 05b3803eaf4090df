"""What a training run starts from: the tokenized corpora (:func:`prepare_training_data`), a base
checkpoint (:func:`load_base`), and whether the table fits in memory (:func:`table_fits_in_memory`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import EngramError, UsageError


@dataclass
class TrainingData:
    """Token windows of the training (and held-out) corpus and the model vocab."""

    windows: np.ndarray  # [N, seq_len + 1] raw ids
    heldout: np.ndarray | None
    model_vocab: object  # lm_data.ModelVocab
    meta: dict  # tokenizer and corpus facts recorded in the checkpoint


def prepare_training_data(
    *,
    corpus: Path,
    heldout: Path | None,
    vocab,
    tokenizer_source: str | None,
    seq_len: int,
    min_count: int = 1,
    model_vocab=None,
) -> TrainingData:
    """Tokenize the corpora with the vocab's tokenizer (checked by sha256) into windows.

    ``model_vocab``: use this model vocab (a base checkpoint's) instead of the corpus's own.
    """
    from ...tokenizer import load_checked_tokenizer
    from ..data import ModelVocab, read_corpus_stream, text_windows

    if min_count < 1:
        raise UsageError(f"--min-count must be at least 1, got {min_count}")
    source = tokenizer_source or (vocab.source_name if vocab is not None else "") or "deepseek-v4"
    sha256 = vocab.source_sha256 if vocab is not None else None
    tokenizer, info = load_checked_tokenizer(source, sha256=sha256)
    stream = read_corpus_stream(corpus, tokenizer).ids
    if len(stream) < seq_len + 1:
        raise EngramError(
            f"{corpus} tokenizes to {len(stream)} tokens, fewer than one window of "
            f"--seq-len {seq_len} + 1; give a larger corpus"
        )
    if model_vocab is None:
        model_vocab = ModelVocab.from_stream(stream, min_count=min_count)
        check_min_count(stream, model_vocab, min_count, corpus=corpus)
    held = None
    if heldout is not None:
        held = text_windows(read_corpus_stream(heldout, tokenizer).ids, seq_len)
    meta = {
        "tokenizer": {"name": info.name, "sha256": info.sha256},
        "corpus": {
            "path": str(corpus),
            "tokens": int(len(stream)),
            "heldout": str(heldout) if heldout else None,
        },
        "model_vocab": {
            "inputs": model_vocab.size,
            "outputs": model_vocab.output_size,
            "min_count": min_count,
        },
    }
    return TrainingData(text_windows(stream, seq_len), held, model_vocab, meta)


def check_min_count(stream: np.ndarray, model_vocab, min_count: int, *, corpus) -> None:
    """Refuse a ``--min-count`` that leaves no id to predict (every target "unknown": the run
    would learn nothing and print loss 0), saying how many ids remain and what would work."""
    if len(model_vocab.output_ids) > 0:
        return
    _, counts = np.unique(stream, return_counts=True)
    top = int(counts.max()) if counts.size else 0
    raise UsageError(
        f"--min-count {min_count} leaves 0 of the {model_vocab.size - 1:,} token ids of {corpus} "
        f"to predict (the most frequent occurs {top:,} times): every target would be unknown "
        f"and nothing learned; use --min-count {top} or less"
    )


def check_base_flags(base, given: dict, *, path) -> None:
    """Refuse flags given with ``--init-from`` that disagree with the base model (its shape and
    model vocab are kept), naming both values, as ``--resume`` does."""
    shape = base.model.config
    kept = {
        "depth": shape.n_layer,
        "width": shape.n_embd,
        "attn_heads": shape.n_head,
        "short_conv": shape.short_conv,
        "min_count": (base.meta.get("model_vocab") or {}).get("min_count"),
    }
    differences = []
    for name, value in given.items():
        if name in kept and value != kept[name]:
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                flag = flag if value else "--no-" + flag[2:]
                differences.append(f"{flag}, the model has {'' if kept[name] else 'no '}{name}")
            else:
                shown = "(not recorded)" if kept[name] is None else kept[name]
                differences.append(f"{flag} {value}, the model has {shown}")
    if given.get("seq_len", 0) > shape.block_size:  # shorter windows are fine; longer cannot be
        differences.append(
            f"--seq-len {given['seq_len']}, the model's window is {shape.block_size} tokens"
        )
    if differences:
        raise UsageError(
            f"--init-from {path} keeps the model's shape and vocab, and the flags disagree: "
            f"{'; '.join(differences)}. Drop them"
        )


def load_base(path: Path, *, table, vocab, device: str):
    """The ``--init-from`` checkpoint, checked against the table and vocab it will train with."""
    from ..checkpoint import load_checkpoint

    base = load_checkpoint(path, device=device)
    if table is not None:
        if base.layout is None:
            raise UsageError(f"{path} has no Engram layers; it cannot be adapted by a table")
        if base.layout.to_dict() != table.layout.to_dict():
            raise EngramError(
                f"{path} was trained with another layout than the table {table.path}; give the "
                "table the model was trained with (or a copy of it)"
            )
        if base.model.config.engram_dim != table.dim:
            raise EngramError(
                f"{path} reads rows of {base.model.config.engram_dim} values, the table has "
                f"{table.dim}"
            )
    if vocab is not None and base.vocab is not None and base.vocab.fingerprint != vocab.fingerprint:
        raise EngramError(
            f"{path} was trained with vocab {base.vocab.fingerprint}, --vocab is "
            f"{vocab.fingerprint}; pass the model's vocab"
        )
    return base


def table_fits_in_memory(table, *, fraction: float = 0.5) -> bool:
    """Whether the table's layers decoded to float32 take under ``fraction`` of free memory."""
    needed = sum(table.layout.layer_rows(layer) for layer in table.layout.layers) * table.dim * 4
    return needed * 3 < fraction * available_memory()  # rows + the two Adam moments


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
