"""The tasks of ``build-counts --scheduler`` (:mod:`.build_dask`), run on the Dask workers.

- :func:`pair_shard`: a shard's (context row, next token) pairs, made by the one-process code
  (:class:`~.buildparts.PairMaker`), appended to one file per row bucket (:class:`BucketFiles`),
  the shard's first :data:`~.buildparts.HEAD_PAIRS` pairs first with their local pair index;
- :func:`count_bucket`: a row bucket's pairs of every shard replayed in shard order into a
  :class:`~.accumulate.PairAccumulator`, the held-out ones (known once the driver gives each
  shard's pair offset) counted last by its ``finish``, and written as sorted ``.npy`` files.

A task writes under a name of its own and renames it to its final name when complete, so a
task that Dask re-runs after a worker died starts clean.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .accumulate import REPLAY_PAIRS, PairAccumulator
from .buildparts import HEAD_PAIRS, PairMaker, check_ids, heldout_cap, is_heldout


@dataclass(frozen=True)
class DaskSetup:
    """What every task needs, sent to the workers once."""

    vocab: object
    tokenizer: object
    layout: object  # the engramctl.layout.Layout
    layer_ids: tuple
    bases: np.ndarray
    starts: np.ndarray  # each column's first row
    total_rows: int
    options: object  # CorpusOptions
    buckets: int
    top_k: int
    budget: int  # bytes of row summaries a bucket task holds before it spills
    scratch: str  # absolute, on a file system every worker mounts
    initial: dict | None = None  # --append: the memory's row arrays (name -> absolute path)

    @property
    def width(self) -> int:
        return -(-self.total_rows // self.buckets)


@dataclass(frozen=True)
class ShardResult:
    """What a shard task counted (its pairs are in its bucket files)."""

    tokens: int
    documents: int
    pairs: int
    unigram: np.ndarray  # uint64 per raw id
    warnings: dict  # CorpusWarnings.counts


@dataclass(frozen=True)
class BucketResult:
    """What a bucket task counted (its rows are in its ``.npy`` files, the sentinel last)."""

    snapshot: tuple  # (row ids, tokens, counts, totals) of the held-out rows before them
    hist_before: np.ndarray
    occupied_before: np.ndarray
    hist_after: np.ndarray
    occupied_after: np.ndarray
    rows: int  # rows written, the sentinel included
    held: tuple  # (global pair index, row, target) of the bucket's held-out entries


# ------------------------------------------------------------------------------ shard tasks
class BucketFiles:
    """A shard's pairs appended to one file per row bucket: ``rows{b}.bin`` (int64),
    ``targets{b}.bin`` (int32), and for the shard's first :data:`HEAD_PAIRS` pairs (written
    first) their local pair index, ``index{b}.bin`` (uint32)."""

    def __init__(self, directory: Path, width: int, buckets: int):
        self.directory, self.width, self.buckets = Path(directory), int(width), int(buckets)
        self.pairs = 0

    def add(self, rows, targets, valid) -> None:
        index = self.pairs + np.cumsum(valid) - 1  # the shard-local index of each valid pair
        head = valid & (index < HEAD_PAIRS)
        self._write(rows, targets, head, index)
        self._write(rows, targets, valid & ~head, None)
        self.pairs += int(np.count_nonzero(valid))

    def _write(self, rows, targets, keep, index) -> None:
        kept = np.flatnonzero(keep)
        if not kept.size:
            return
        G = rows.shape[1]
        r = np.ascontiguousarray(rows[kept].T).reshape(-1)  # column by column, each in order
        arrays = [r, np.tile(np.asarray(targets, np.int32)[kept], G)]
        names = ["rows", "targets"]
        if index is not None:
            arrays.append(np.tile(index[kept].astype(np.uint32), G))
            names.append("index")
        bucket = r // self.width
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            pick = order[bounds[b] : bounds[b + 1]]
            for name, array in zip(names, arrays, strict=True):
                with open(self.directory / f"{name}{b}.bin", "ab") as handle:
                    array[pick].tofile(handle)


def _prime(maker: PairMaker, shard, options, vocab_size: int) -> None:
    """A shard cut inside a document (flat token streams) starts from the context of the
    tokens before it: the last ``max_ngram`` of them give the rows of its first token's context.
    """
    from ..corpus.readers import token_context

    before, _ = token_context(shard, options, maker.K + 1)
    if not before.size or before.min() < 0 or before.max() >= vocab_size:
        return  # a document start (or ids the shard before refuses)
    # as a document of its own: at most K + 1 tokens, so the pads reach no row of its last one
    # unless the document did start there
    maker.pairs(before, np.array([0, before.size]), np.array([True]))


def pair_shard(index: int, shard, setup: DaskSetup) -> ShardResult:
    """Runs on a worker: shard ``index``'s pairs into ``scratch/s{index}/``' bucket files."""
    from ..corpus.files import CorpusWarnings
    from ..corpus.readers import read_batches
    from ..corpus.tokenize import tokenized_batches

    scratch = Path(setup.scratch)
    final = scratch / f"s{index:05d}"
    attempt = scratch / f"s{index:05d}.tmp-{uuid.uuid4().hex[:8]}"
    attempt.mkdir()  # not parents: a build given up has removed its scratch
    vocab = setup.vocab
    maker = PairMaker(setup.layout, setup.layer_ids, vocab, setup.bases)
    _prime(maker, shard, setup.options, vocab.source_vocab_size)
    files = BucketFiles(attempt, setup.width, setup.buckets)
    unigram = np.zeros(vocab.source_vocab_size, np.uint64)
    tokens = documents = 0
    found = CorpusWarnings()
    batches = tokenized_batches(read_batches([shard], setup.options, found), setup.tokenizer)
    try:
        for batch in batches:
            ids = batch.ids
            if ids.shape[0] == 0:
                continue
            check_ids(batch, ids, vocab.source_vocab_size)
            context, targets, valid = maker.pairs(ids, batch.offsets, batch.doc_start)
            files.add(context, targets, valid)
            unigram += np.bincount(ids, minlength=vocab.source_vocab_size).astype(np.uint64)
            tokens += int(ids.shape[0])
            documents += int(np.count_nonzero(batch.doc_start))
    except BaseException:
        shutil.rmtree(attempt, ignore_errors=True)
        raise
    finally:
        batches.close()
    shutil.rmtree(final, ignore_errors=True)  # an earlier attempt's (its worker died after)
    os.replace(attempt, final)
    return ShardResult(tokens, documents, files.pairs, unigram, found.counts)


# ----------------------------------------------------------------------------- bucket tasks
def _shard_bucket(directory: Path, b: int):
    """``(rows, targets, local index of the first entries)`` of a shard's bucket ``b``."""
    path = directory / f"rows{b}.bin"
    if not path.exists():
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint32)
    index = directory / f"index{b}.bin"
    targets = np.memmap(directory / f"targets{b}.bin", np.int32, "r")
    head = np.fromfile(index, np.uint32) if index.exists() else np.zeros(0, np.uint32)
    return np.memmap(path, np.int64, "r"), targets, head


def _initial(setup: DaskSetup, b: int):
    """``--append``: the memory's summaries of bucket ``b``'s rows (memory-mapped slices)."""
    if setup.initial is None:
        return None
    arrays = [np.load(setup.initial[name], mmap_mode="r")
              for name in ("row_ids", "tokens", "counts", "totals")]  # fmt: skip
    lo, hi = b * setup.width, (b + 1) * setup.width
    i, j = np.searchsorted(arrays[0][:-1], [lo, hi])  # (the last row is the all-zero sentinel)
    return tuple(a[i:j] for a in arrays)


def count_bucket(b: int, setup: DaskSetup, offsets: list, block: int) -> BucketResult:
    """Runs on a worker: replay row bucket ``b``'s pairs of every shard in shard order, the
    held-out ones (by the shards' pair ``offsets``) last; write its rows to ``scratch/b{b}/``."""
    scratch = Path(setup.scratch)
    final = scratch / f"b{b:03d}"
    attempt = scratch / f"b{b:03d}.tmp-{uuid.uuid4().hex[:8]}"
    attempt.mkdir()
    try:
        acc = PairAccumulator(total_rows=setup.total_rows, starts=setup.starts,
                              top_k=setup.top_k, budget=setup.budget, workdir=attempt / ".spill",
                              initial=_initial(setup, b), lo=b * setup.width,
                              hi=(b + 1) * setup.width)  # fmt: skip
        shards = [scratch / f"s{s:05d}" for s in range(len(offsets))]
        total = sum((d / f"rows{b}.bin").stat().st_size // 8 for d in shards
                    if (d / f"rows{b}.bin").exists())  # fmt: skip
        seen, held = 0, []
        for directory, offset in zip(shards, offsets, strict=True):
            rows, targets, index = _shard_bucket(directory, b)
            head = index.shape[0]
            g = int(offset) + index.astype(np.int64)
            hold = is_heldout(g, block, heldout_cap(len(setup.starts), setup.top_k, block))
            if hold.any():
                held.append((g[hold], np.asarray(rows[:head])[hold],
                             np.asarray(targets[:head])[hold]))  # fmt: skip
            for lo in range(0, rows.shape[0], REPLAY_PAIRS):
                hi = min(lo + REPLAY_PAIRS, rows.shape[0])
                keep = np.ones(hi - lo, bool)
                if lo < head:
                    keep[: min(hi, head) - lo] = ~hold[lo : min(hi, head)]
                seen += hi - lo
                acc.add(np.asarray(rows[lo:hi])[:, None], np.asarray(targets[lo:hi]), keep,
                        expected_growth=max(1.0, total / seen))  # fmt: skip
            del rows, targets
        held.append((np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)))
        g, r, y = (np.concatenate(a) for a in zip(*held, strict=True))
        order = np.argsort(g, kind="stable")  # corpus order (entries of one pair: other rows)
        before, hist, occupied, stored = acc.finish(r[order][:, None], y[order], attempt)
    except BaseException:
        shutil.rmtree(attempt, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(attempt, final)
    snapshot = tuple(np.asarray(a)[:-1] for a in (before.row_ids, before.tokens, before.counts,
                                                   before.totals))  # fmt: skip
    return BucketResult(snapshot, before.hist, before.occupied, hist, occupied, int(stored),
                        (g, r, y))  # fmt: skip


__all__ = ["DaskSetup", "ShardResult", "BucketResult", "BucketFiles", "pair_shard",
           "count_bucket"]  # fmt: skip
