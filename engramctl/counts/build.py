"""``build-counts``: one streaming pass over a corpus into a count memory.

The corpus readers and the tokenizer thread of ``hash-stats`` (:mod:`engramctl.corpus`) give
batches of raw ids; each batch is mapped to canonical ids and hashed with the layout
(:func:`engramctl.hashing.hash_canonical`, pad context at each document's start, the context
carried across pieces). Each position ``t >= 1`` of a document gives one pair: the rows of the
context ending at ``t - 1`` (level 1: the canonical id; every counted layer's heads of every
order) and the raw id at ``t``. :class:`~.accumulate.PairAccumulator` adds the pairs to the
rows' top-K summaries (SpaceSaving, :mod:`.spacesaving`: a kept count over-counts by at most
total/K) for the rows that occur only, in RAM up to ``max_memory`` and in row buckets spilled
to disk beyond it; every row sees its continuations in corpus order, so the result depends on
neither threads nor buckets.

One pair in 20 (blocks of :data:`BLOCK` pairs, at most :func:`heldout_cap`) is held out: the
gate is fitted on them (:mod:`engramctl.counts.gate`) against the rows as counted before them,
and they are counted last. The memory is written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._system import format_bytes, parse_memory
from ..corpus.files import CorpusOptions, corpus_bytes
from ..corpus.readers import read_batches
from ..corpus.tokenize import TextTokenizer, tokenized_batches
from ..errors import EngramError, UsageError
from ..layout import ResolvedLayout
from .accumulate import PairAccumulator
from .buildparts import (
    BuildCountsReport,
    PairMaker,
    check_counted,
    check_ids,
    corpus_summary,
    heldout_block,
    heldout_cap,
    is_heldout,
    memory_meta,
    start_pass,
)
from .disk import DiskEstimate, check_disk, corpus_tokens, disk_full_is_one_line, estimate_disk
from .store import write_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildCountsJob:
    """One ``build-counts`` run as asked."""

    inputs: tuple[str, ...]  # corpus files, directories or globs
    out: Path  # the count memory to write (a directory, e.g. counts.zarr)
    corpus: CorpusOptions = field(default_factory=lambda: CorpusOptions(batch_tokens=1 << 18))
    tokenizer: str = "deepseek-v4"  # for text input; must be the one the vocab was built from
    top_k: int = 8  # continuations kept per row
    limit_tokens: int | None = None  # stop after this many tokens
    overwrite: bool = False  # replace an existing memory
    max_memory: int | None = None  # RAM for row summaries before spilling (None: 25% of RAM)
    partitions: int = 0  # >= 2: spill into this many row buckets (0, 1: only over max_memory)
    append: bool = False  # add the corpus to the memory at ``out`` (one commit)
    scheduler: str | None = None  # count on Dask: an address or local:N (:mod:`.build_dask`)

    def check(self) -> None:
        if isinstance(self.top_k, bool) or self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1 (continuations kept per row), got "
                             f"{self.top_k}")  # fmt: skip
        from .accumulate import MAX_BUCKETS

        if isinstance(self.partitions, bool) or not 0 <= self.partitions <= MAX_BUCKETS:
            raise UsageError(f"--partitions must be 1..{MAX_BUCKETS} (row buckets counted one "
                             f"after another), got {self.partitions}")  # fmt: skip
        if self.max_memory is not None and self.max_memory < 1:
            raise UsageError(f"--max-memory must be positive, got {self.max_memory}")
        if self.limit_tokens is not None and self.limit_tokens < 1:
            raise UsageError(f"--limit-tokens must be at least 1, got {self.limit_tokens}")
        if self.scheduler and self.limit_tokens is not None:
            raise UsageError("--limit-tokens counts the first tokens in order; drop --scheduler")
        out = Path(self.out)
        if self.append:
            from .store import is_counts_store

            if self.overwrite:
                raise UsageError("--append adds to the memory at --out; drop --overwrite")
            if not is_counts_store(out):
                raise EngramError(f"--append needs a count memory at {out}; build it first "
                                  "with engramctl build-counts")  # fmt: skip
            return
        if out.exists() and not self.overwrite and not (out.is_dir() and not any(out.iterdir())):
            raise EngramError(f"{out} exists; pass --overwrite to replace it")
        if not out.parent.exists():
            raise EngramError(f"directory {out.parent} does not exist; create it first")


def build_counts(
    *,
    job: BuildCountsJob,
    vocab,
    layout: ResolvedLayout,
    tokenizer: TextTokenizer | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> BuildCountsReport:
    """Count ``job``'s corpus into a new count memory at ``job.out``; see the module docstring.

    Parameters
    ----------
    job : the corpus, K and the output.
    vocab : the canonical vocab (:class:`engramctl.vocab.CanonicalVocab`) of ``layout``.
    layout : the layout and the layers to count (:func:`engramctl.layout.resolve_layout`).
    tokenizer : for text input (default: ``job.tokenizer``, checked against the vocab).
    progress : called after each batch with ``(bytes done, bytes total, documents, tokens)``.
    """
    from .._files import atomic_directory

    job.check()
    if job.scheduler:
        from .build_dask import build_counts_dask

        return build_counts_dask(job=job, vocab=vocab, layout=layout, tokenizer=tokenizer,
                                 progress=progress)  # fmt: skip
    _import_in_background("scipy.optimize")  # the gate's fit, at the end: ~0.5 s to import
    begun = start_pass(job, vocab, layout, tokenizer)
    started, lay, layer_ids = begun.started, begun.layout, begun.layer_ids
    files, tokenizer, bases, rows = begun.files, begun.tokenizer, begun.bases, begun.rows
    starts, store, suffix, top_k = begun.starts, begun.store, begun.suffix, begun.top_k
    total_bytes = corpus_bytes(files)
    from ..corpus.files import estimate_tokens

    block = heldout_block(files, job.corpus)
    if job.append:
        from .append import in_place, remove_strays

    budget = job.max_memory or parse_memory("25%")
    cap = heldout_cap(len(starts), top_k, block)
    where = Path(job.out) if job.append else Path(job.out).absolute().parent
    disk = _check_disk(job, files, starts, rows, top_k, budget, cap, vocab, store, where)
    place = in_place(Path(job.out), store.meta["manifest"]) if job.append else \
        atomic_directory(Path(job.out), label="building", replace=job.overwrite)  # fmt: skip
    with place as tmp, disk_full_is_one_line(where):
        tmp.mkdir(parents=True, exist_ok=job.append)
        spill = " (then spilling row buckets to disk)" if job.partitions < 2 else ""
        log.info("row summaries: %s of RAM%s", format_bytes(budget), spill)
        initial = (
            None
            if store is None
            else tuple(getattr(store, a)[:-1] for a in ("row_ids", "tokens", "counts", "totals"))
        )
        acc = PairAccumulator(total_rows=rows, starts=starts, top_k=top_k, budget=budget,
                              workdir=tmp / ".spill",
                              buckets=job.partitions if job.partitions > 1 else 0,
                              initial=initial)  # fmt: skip
        unigram = np.zeros(vocab.source_vocab_size, np.uint64)
        if store is not None:
            unigram += np.asarray(store.unigram)
        estimated = max(1, estimate_tokens(files, job.corpus))
        maker = PairMaker(lay, layer_ids, vocab, bases)
        tokens = documents = pairs = 0
        held_rows, held_targets, held = [], [], 0
        from ..corpus.files import CorpusWarnings

        warnings = CorpusWarnings()
        batches = tokenized_batches(read_batches(files, job.corpus, warnings), tokenizer)
        done_before = np.concatenate([[0], np.cumsum([f.size for f in files])])
        try:
            for batch in batches:
                ids = batch.ids
                if job.limit_tokens is not None and tokens + ids.shape[0] > job.limit_tokens:
                    keep = job.limit_tokens - tokens
                    pieces = max(1, int(np.searchsorted(batch.offsets, keep, side="left")))
                    batch.offsets = np.minimum(batch.offsets[: pieces + 1], keep)
                    batch.doc_start = batch.doc_start[:pieces]
                    ids = batch.ids = ids[:keep]
                if ids.shape[0] == 0:
                    continue
                check_ids(batch, ids, vocab.source_vocab_size)
                context, targets, valid = maker.pairs(ids, batch.offsets, batch.doc_start)
                index = pairs + np.cumsum(valid) - 1  # the running number of each valid pair
                hold = valid & is_heldout(index, block, cap)
                if hold.any():
                    held_rows.append(context[hold])
                    held_targets.append(targets[hold])
                    held += int(hold.sum())
                acc.add(
                    context,
                    targets,
                    valid & ~hold,
                    expected_growth=max(1.0, estimated / (tokens + ids.shape[0])),
                )
                unigram += np.bincount(ids, minlength=vocab.source_vocab_size).astype(np.uint64)
                tokens += int(ids.shape[0])
                documents += int(np.count_nonzero(batch.doc_start))
                pairs += int(valid.sum())
                if progress is not None:
                    done = int(done_before[batch.file_index] + batch.file_fraction
                               * files[batch.file_index].size)  # fmt: skip
                    progress(done, total_bytes, documents, tokens)
                if job.limit_tokens is not None and tokens >= job.limit_tokens:
                    break
        finally:
            batches.close()
        check_counted(files, tokens, pairs)
        G = starts.shape[0]
        rows_h = np.concatenate(held_rows) if held else np.zeros((0, G), np.int64)
        targets_h = np.concatenate(held_targets) if held else np.zeros(0, np.int64)
        scratch = acc.scratch_bytes
        counted = acc.finish(rows_h, targets_h, tmp, suffix)
        corpus = corpus_summary(files, total_bytes, tokens, documents, pairs, held,
                                warnings.counts)  # fmt: skip
        meta = memory_meta(layout=lay, layer_ids=layer_ids,
                           bases=bases, rows=rows, vocab=vocab, tokenizer_name=job.tokenizer,
                           top_k=top_k, unigram=unigram, counted=counted, held_rows=rows_h,
                           held_targets=targets_h, corpus=corpus, started=started,
                           full=acc.full_rows)  # fmt: skip
        stored, full, discounts, gate = (counted[3], meta["full_rows"], meta["discounts"],
                                         meta["gate"])  # fmt: skip
        if store is not None:
            from .append import merged_corpus

            meta["corpus"] = merged_corpus(store.meta["corpus"], meta["corpus"])
            meta["generation"] = int(suffix[1:])
            meta["build_seconds"] += float(store.meta.get("build_seconds", 0.0))
        arrays = {"unigram": unigram, "canonical": vocab.canonical_ids}
        written = write_metadata(tmp, meta, arrays, suffix, crcs=acc.crcs)  # the commit
        if store is not None:
            del store, initial
            remove_strays(tmp, written["manifest"])  # the replaced files
        size = sum(entry["bytes"] for entry in written["manifest"].values())
    return BuildCountsReport(
        path=str(job.out), tokens=tokens, documents=documents, pairs=pairs, heldout_pairs=held,
        rows=int(rows), occupied_rows=int(stored - 1), top_k=top_k, full_rows=full, bytes=size,
        seconds=time.perf_counter() - started, discounts=discounts, gate=gate,
        disk=disk.to_dict(), scratch_bytes=scratch,
    )  # fmt: skip


def _import_in_background(module: str) -> None:
    """Import ``module`` on a daemon thread (the pass mostly waits on the tokenizer and
    numba kernels, which release the GIL), so it is loaded when needed."""
    import importlib
    import threading

    def load():
        try:
            importlib.import_module(module)
        except ImportError:  # reported where it is needed
            pass

    threading.Thread(target=load, name=f"import {module}", daemon=True).start()


def _check_disk(job, files, starts, rows, top_k, budget, cap, vocab, store, where) -> DiskEstimate:
    """Project the build's disk (:mod:`.disk`) and refuse or warn before any work."""
    tokens, low, exact = corpus_tokens(files, job.corpus, job.limit_tokens)
    estimate = estimate_disk(
        tokens=tokens, tokens_low=low, exact=exact, column_rows=np.diff(np.append(starts, rows)),
        top_k=top_k, budget=budget, partitions=job.partitions, heldout_cap=cap,
        vocab_size=vocab.source_vocab_size, where=where,
        initial_rows=0 if store is None else int(store.meta.get("occupied_rows") or 0),
    )  # fmt: skip
    log.info("disk: %s", estimate)
    check_disk(estimate)
    return estimate
