"""The row trace of a workload: per Engram layer, each batch's distinct rows, batches in order.

A workload is cut exactly as ``eval`` cuts a benchmark, so the plan describes what ``eval`` (and a
server batching the same way) will page: documents tokenized without special tokens and joined by
EOS into one stream, cut into windows of ``seq_len`` inputs that score every token once (the last
padded with EOS), each window hashed from pad context, ``batch`` consecutive windows per batch.
A 2-D ``.npy`` of token ids is taken as it is: one sequence per row.

The trace of a layer lists, for each batch, its distinct whole-layer row ids (head offsets added)
in ascending order; an *access* is one entry. It is stored with dense ids (``rows[ids]`` gives the
row), so the policies' arrays are sized by the rows the workload touches, never by the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngramError, UsageError


@dataclass(frozen=True)
class Workload:
    """The sequences a workload runs through the model, in order."""

    sequences: np.ndarray  # (N, T) raw token ids, one sequence per row
    tokens: int  # real tokens (the EOS padding of the last window excluded)
    documents: int
    cut: str  # how it was cut, for the report


@dataclass
class LayerTrace:
    """One Engram layer's trace (see the module docstring)."""

    layer: int
    ids: np.ndarray  # dense row id per access (int32 or int64), batch after batch
    rows: np.ndarray  # sorted distinct whole-layer row ids: access i reads rows[ids[i]]
    bounds: np.ndarray  # int64 [batches + 1]: batch k's accesses are ids[bounds[k]:bounds[k+1]]
    lookups: np.ndarray  # int64 [batches]: positions x heads of each batch (before de-duplication)
    warm_rows: np.ndarray  # rows looked up in the warm-up batches (may repeat across batches)
    warm_lookups: np.ndarray  # their lookup counts

    @property
    def batches(self) -> int:
        return len(self.bounds) - 1

    @property
    def distinct(self) -> int:
        return len(self.rows)

    def unique_per_batch(self) -> np.ndarray:
        return np.diff(self.bounds)


def _npy_rows(path: Path) -> np.ndarray | None:
    """A 2-D integer ``.npy`` (memory-mapped), or None for anything else."""
    if path.suffix.lower() != ".npy" or not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise EngramError(f"{path} is not a readable .npy array ({exc})") from exc
    if array.ndim != 2:
        return None
    if array.dtype.kind not in "iu":
        raise EngramError(f"{path}: token ids must be integers, got dtype {array.dtype}")
    return array


def read_workload(paths, *, tokenizer, seq_len: int) -> Workload:
    """The sequences of a workload: the rows of 2-D ``.npy`` files, or ``eval``'s windows.

    ``tokenizer`` (a ``tokenizers.Tokenizer``) encodes text and names the EOS id that joins
    documents and pads the last window; 2-D ``.npy`` rows are used as they are.
    """
    from ..corpus.stream import eos_id, lm_windows, read_corpus_stream

    if seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1, got {seq_len}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("give at least one workload file")
    arrays = [_npy_rows(p) for p in paths]
    if any(a is not None for a in arrays):
        if any(a is None for a in arrays):
            raise UsageError(
                "mix of 2-D .npy workloads (one sequence per row) and other corpora; plan them "
                "separately"
            )
        widths = {a.shape[1] for a in arrays}
        if len(widths) > 1:
            raise EngramError(f"2-D .npy workloads have rows of different lengths {sorted(widths)}")
        sequences = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])
        if sequences.size == 0:
            raise EngramError("the workload holds no tokens")
        n = len(sequences)
        return Workload(sequences, int(sequences.size), n, f"{n:,} rows of {widths.pop()} tokens")
    for p in paths:
        if not p.exists() and not any(ch in str(p) for ch in "*?["):
            raise EngramError(f"workload not found: {p}")
    stream = read_corpus_stream(paths, tokenizer)
    windows, mask = lm_windows(stream.ids, seq_len, pad=eos_id(tokenizer))
    sequences = np.ascontiguousarray(windows[:, :-1])
    cut = f"{len(sequences):,} windows of {seq_len} tokens (EOS-joined, as eval cuts them)"
    return Workload(sequences, int(len(stream.ids) - 1), stream.documents, cut)


def sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values, ascending, and how often each occurs (a sort; numpy's hash-based
    ``unique`` is several times slower on a batch's row ids).

    >>> [a.tolist() for a in sorted_unique(np.array([5, 2, 5, 9]))]
    [[2, 5, 9], [1, 2, 1]]
    """
    ordered = np.sort(values, kind="stable" if values.dtype.kind == "b" else None)
    if ordered.size == 0:
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    counts = np.diff(np.append(starts, ordered.size))
    return ordered[starts], counts.astype(np.int64)


def batch_count(workload: Workload, batch: int) -> int:
    """Batches of ``batch`` consecutive sequences (the last may be short)."""
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    n = len(workload.sequences)
    if batch > n:
        raise UsageError(
            f"--batch {batch} is larger than the workload ({n} sequences); lower --batch"
        )
    return -(-n // batch)


def build_traces(
    workload: Workload,
    hasher,
    *,
    batch: int,
    layers,
    warmup_batches: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, LayerTrace]:
    """Hash the workload batch by batch and record each layer's trace.

    ``hasher`` is an :class:`engramctl.hashing.NgramHasher`; ``warmup_batches`` first batches also
    record their rows' lookup counts (for the static cache).
    """
    total = batch_count(workload, batch)
    layers = tuple(layers)
    pieces: dict = {layer: [] for layer in layers}
    lookups: dict = {layer: np.zeros(total, dtype=np.int64) for layer in layers}
    warm: dict = {layer: ([], []) for layer in layers}
    for k in range(total):
        sequences = workload.sequences[k * batch : (k + 1) * batch]
        hashed = hasher.hash(sequences, layers=layers, table_rows=True)  # {layer: (B, T, H)}
        for layer in layers:
            ids = hashed[layer].ravel()
            lookups[layer][k] = ids.size
            unique, counts = sorted_unique(ids)
            if k < warmup_batches:
                warm[layer][0].append(unique)
                warm[layer][1].append(counts)
            pieces[layer].append(unique)
        if progress is not None:
            progress(k + 1, total)
    traces = {}
    for layer in layers:
        sizes = np.fromiter((len(p) for p in pieces[layer]), dtype=np.int64, count=total)
        bounds = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(sizes, out=bounds[1:])
        flat = np.concatenate(pieces[layer])
        pieces[layer] = None  # free as we go
        rows, dense = np.unique(flat, return_inverse=True)
        del flat
        dense = dense.astype(np.int32 if len(rows) < 2**31 else np.int64)
        warm_rows, warm_counts = warm[layer]
        traces[layer] = LayerTrace(
            layer=layer,
            ids=dense,
            rows=rows,
            bounds=bounds,
            lookups=lookups[layer],
            warm_rows=np.concatenate(warm_rows) if warm_rows else np.zeros(0, np.int64),
            warm_lookups=np.concatenate(warm_counts) if warm_counts else np.zeros(0, np.int64),
        )
    return traces
