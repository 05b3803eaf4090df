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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._system import format_bytes, parse_memory
from ..corpus.files import CorpusOptions, corpus_bytes, discover_files
from ..corpus.readers import read_batches
from ..corpus.tokenize import TextTokenizer, tokenized_batches
from ..errors import EngramError, UsageError
from ..hashing import hash_canonical
from ..layout import ResolvedLayout
from .accumulate import PairAccumulator
from .disk import DiskEstimate, check_disk, corpus_tokens, disk_full_is_one_line, estimate_disk
from .store import FORMAT, FORMAT_VERSION, write_metadata

log = logging.getLogger(__name__)

HELDOUT_EVERY = 20  # one block in 20 held out for the gate (5%)
HELDOUT_CAP = 1 << 17  # held-out pairs at most (their rows stay in RAM until the fit)
SNAPSHOT_BYTES = 1 << 26  # and at most so many that their rows' summaries fit 64 MiB
BLOCK = 256  # pairs per held-out block (16 for corpora under ~1M tokens)


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


@dataclass(frozen=True)
class BuildCountsReport:
    """What a build counted and wrote."""

    path: str
    tokens: int
    documents: int
    pairs: int  # (context, next token) pairs counted
    heldout_pairs: int  # of them, held out for the gate's fit (counted after it)
    rows: int  # rows of the layout (level 1 and every counted layer)
    occupied_rows: int  # of them, the rows counted (the store holds these only)
    top_k: int
    full_rows: int  # rows whose K slots are all taken (where truncation may have happened)
    bytes: int
    seconds: float
    discounts: list
    gate: dict
    disk: dict | None = None  # the disk projected before the pass (:class:`.disk.DiskEstimate`)
    scratch_bytes: int = 0  # row-bucket files written (0: the build did not spill)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


# ----------------------------------------------------------------------------- the pass
class _PairMaker:
    """Turns batches of raw ids into (context rows, next raw id) pairs, context carried."""

    def __init__(self, layout, layer_ids, vocab, bases):
        self.layout, self.layer_ids = layout, tuple(layer_ids)
        self.lut = np.ascontiguousarray(vocab.canonical_ids, dtype=np.int64)
        self.vocab_size = vocab.source_vocab_size
        self.pad = layout.pad_canonical_id(vocab)
        self.K = layout.max_ngram - 1
        self.params = [(layout.multipliers(L), layout.head_rows(L), layout.head_offsets(L))
                       for L in self.layer_ids]  # fmt: skip
        self.bases = bases
        self.columns = 1 + len(self.layer_ids) * layout.heads_per_layer
        self.carry_canon = np.full(self.K, self.pad, dtype=np.int64)
        self.carry_rows = np.zeros(self.columns, dtype=np.int64)
        self.carry_valid = False

    def pairs(self, ids, offsets, doc_start) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows (T, G), targets (T,), valid (T,))`` of one batch's tokens."""
        ids = np.asarray(ids, dtype=np.int64)
        T, K = ids.shape[0], self.K
        canon = self.lut[ids]
        lengths = np.diff(np.asarray(offsets, dtype=np.int64))
        starts = np.asarray(doc_start, dtype=bool)
        piece_of = np.repeat(np.arange(len(lengths)), lengths)
        inserted = np.cumsum(starts) * K  # pads inserted up to each piece (a doc start: K pads)
        pos = np.arange(T) + inserted[piece_of]
        extended = np.full(K + T + int(inserted[-1]), self.pad, dtype=np.int64)
        extended[:K] = self.carry_canon
        extended[K + pos] = canon
        # row 0: the carried context (the previous batch's last position); rows 1..T: this batch
        rows = np.empty((T + 1, self.columns), dtype=np.int64)
        rows[0] = self.carry_rows
        rows[1:, 0] = canon
        H = self.layout.heads_per_layer
        for i, (mult, head_rows, head_offsets) in enumerate(self.params):
            hashed = hash_canonical(
                extended[None, :], mult, head_rows, self.layout.heads, offsets=head_offsets
            )[0]
            rows[1:, 1 + i * H : 1 + (i + 1) * H] = hashed[pos] + self.bases[i]
        first_of_doc = np.zeros(T, dtype=bool)
        first_of_doc[np.asarray(offsets[:-1])[starts & (lengths > 0)]] = True
        context = rows[:-1]  # the context of token t ends at t - 1 (a view: no copy)
        valid = ~first_of_doc
        valid[0] &= self.carry_valid
        self.carry_canon = extended[-K:].copy()
        self.carry_rows = rows[-1].copy()
        self.carry_valid = True
        return context, ids, valid


def _full_rows(path: Path, block: int = 1 << 20) -> int:
    """Rows whose K slots are all taken (where truncation may have happened) in the counts
    file at ``path``, read a block of rows at a time (file reads, not a mapping: the pages
    read are not held in the build's RSS, which stays flat in the memory's size)."""
    counts = np.load(path, mmap_mode="r")
    rows, K, offset, dtype = counts.shape[0], counts.shape[1], counts.offset, counts.dtype
    del counts
    full = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        for lo in range(0, rows, block):
            part = np.fromfile(handle, dtype, count=min(block, rows - lo) * K).reshape(-1, K)
            full += int(np.count_nonzero(part[:, -1]))
    return full


def heldout_cap(columns: int, top_k: int) -> int:
    """Held-out pairs at most: :data:`HELDOUT_CAP`, fewer where their rows' summaries (kept
    in RAM until the gate's fit: ``columns`` rows of ``16 + 8 K`` bytes a pair) would pass
    :data:`SNAPSHOT_BYTES` (at V4.1's layout, 49 columns and K = 8: 17,120 pairs)."""
    return int(min(HELDOUT_CAP, max(1024, SNAPSHOT_BYTES // (columns * (16 + 8 * top_k)))))


def column_starts(layout, layer_ids, bases) -> np.ndarray:
    """The first row of each column (level 1, then each layer's heads): ascending."""
    starts = [0]
    for i, layer in enumerate(layer_ids):
        starts.extend(int(bases[i]) + int(o) for o in layout.head_offsets(layer))
    starts = np.asarray(starts, np.int64)
    assert (np.diff(starts) > 0).all(), "columns must tile the rows in order"
    return starts


def _discounts(unigram, layout, layer_ids, hist, occupied) -> list:
    """Each level's Ney discount from its counts of counts (``hist`` (G, 4) per column).
    Level 1 reads its exact rows; level k the head of order k (any counted layer) with the most
    occupied rows: the one with the fewest collisions, exact when one head has none."""
    from .smoothing import ney_discount

    n = np.bincount(np.minimum(np.asarray(unigram), 3).astype(np.int64), minlength=4)
    discounts = [ney_discount(int(n[1]), int(n[2])), ney_discount(int(hist[0, 1]),
                                                                  int(hist[0, 2]))]  # fmt: skip
    H = layout.heads_per_layer
    for k in range(2, layout.max_ngram + 1):
        heads = range((k - 2) * layout.heads, (k - 1) * layout.heads)
        columns = [1 + i * H + h for i in range(len(layer_ids)) for h in heads]
        g = max(columns, key=lambda c: (occupied[c], -c))
        discounts.append(ney_discount(int(hist[g, 1]), int(hist[g, 2])))
    return discounts


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
    from ..hashing import NgramHasher

    job.check()
    job.corpus.validate()
    started = time.perf_counter()
    lay, layer_ids = layout.layout, tuple(layout.layer_ids)
    NgramHasher(lay, vocab)  # refuses a layout made for another vocab
    files = discover_files(job.inputs, format=job.corpus.format)
    needs_tokenizer = any(f.format != "tokens" for f in files) and not job.corpus.tokens_field
    if needs_tokenizer and tokenizer is None:
        from ..tokenizer import load_checked_tokenizer

        tokenizer = TextTokenizer(
            load_checked_tokenizer(job.tokenizer, sha256=vocab.source_sha256)[0]
        )
    total_bytes = corpus_bytes(files)
    from ..corpus.files import estimate_tokens

    block = BLOCK if estimate_tokens(files, job.corpus) >= 1 << 20 else 16
    canonical_size = vocab.canonical_vocab_size
    bases, rows = [], canonical_size
    for layer in layer_ids:
        bases.append(rows)
        rows += lay.layer_rows(layer)
    bases = np.array(bases, dtype=np.int64)
    store, suffix, top_k = None, "", job.top_k
    if job.append:
        from .append import check_appendable, remove_strays
        from .store import open_counts

        store = open_counts(job.out)
        check_appendable(store, vocab, lay, layer_ids, job.top_k)
        top_k = store.top_k
        remove_strays(job.out, store.meta["manifest"])  # an interrupted append's files
        suffix = f".{int(store.meta.get('generation', 0)) + 1}"
    budget = job.max_memory or parse_memory("25%")
    starts = column_starts(lay, layer_ids, bases)
    where = Path(job.out) if job.append else Path(job.out).absolute().parent
    disk = _check_disk(job, files, starts, rows, top_k, budget, vocab, store, where)
    place = _in_place(Path(job.out), store.meta["manifest"]) if job.append else \
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
        cap = heldout_cap(len(starts), top_k)
        maker = _PairMaker(lay, layer_ids, vocab, bases)
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
                if ids.min() < 0 or ids.max() >= vocab.source_vocab_size:
                    bad = int(np.flatnonzero((ids < 0) | (ids >= vocab.source_vocab_size))[0])
                    raise EngramError(
                        f"{batch.locate(bad)}: token id {int(ids[bad])} is outside the "
                        f"tokenizer's vocab (0..{vocab.source_vocab_size - 1}); use the vocab "
                        "built from the tokenizer that produced these ids"
                    )
                context, targets, valid = maker.pairs(ids, batch.offsets, batch.doc_start)
                index = pairs + np.cumsum(valid) - 1  # the running number of each valid pair
                hold = valid & ((index // block) % HELDOUT_EVERY == HELDOUT_EVERY - 1)
                room = cap - held
                if hold.sum() > room:
                    hold[np.flatnonzero(hold)[room:]] = False
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
        if tokens == 0:
            names = ", ".join(str(f.path) for f in files[:3])
            raise EngramError(f"the corpus tokenizes to nothing ({names}); nothing to count")
        if pairs == 0:
            raise EngramError(
                "the corpus has no document of two tokens or more: no next token to count"
            )
        G = starts.shape[0]
        rows_h = np.concatenate(held_rows) if held else np.zeros((0, G), np.int64)
        targets_h = np.concatenate(held_targets) if held else np.zeros(0, np.int64)
        scratch = acc.scratch_bytes
        before, hist, occupied, stored = acc.finish(rows_h, targets_h, tmp, suffix)
        discounts = _discounts(unigram, lay, layer_ids, before.hist, before.occupied)
        gate = _fit_gate(before, unigram, lay, layer_ids, discounts, rows_h, targets_h)
        discounts = _discounts(unigram, lay, layer_ids, hist, occupied)
        full = _full_rows(tmp / f"counts{suffix}.npy")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layout": lay.to_dict(),
            "layers": {
                str(L): {"base": int(b), "rows": int(lay.layer_rows(L))}
                for L, b in zip(layer_ids, bases, strict=True)
            },  # fmt: skip
            "rows": int(rows),
            "occupied_rows": int(stored - 1),
            "canonical_vocab_size": int(canonical_size),
            "vocab_size": int(vocab.source_vocab_size),
            "vocab_fingerprint": vocab.fingerprint,
            "tokenizer": {
                "name": vocab.source_name or job.tokenizer,
                "sha256": vocab.source_sha256,
            },  # fmt: skip
            "top_k": int(top_k),
            "discounts": discounts,
            "smoothing": "interpolated absolute discounting, Ney discounts, count-min over heads",
            "gate": gate,
            "corpus": {
                "files": [str(f.path) for f in files][:100],
                "file_count": len(files),
                "bytes": int(total_bytes),
                "tokens": tokens,
                "documents": documents,
                "pairs": pairs,
                "heldout_pairs": held,
                "warnings": warnings.counts,
            },  # fmt: skip
            "full_rows": full,
            "build_seconds": time.perf_counter() - started,
        }
        if store is not None:
            from .append import merged_corpus

            meta["corpus"] = merged_corpus(store.meta["corpus"], meta["corpus"])
            meta["generation"] = int(suffix[1:])
            meta["build_seconds"] += float(store.meta.get("build_seconds", 0.0))
        arrays = {"unigram": unigram, "canonical": vocab.canonical_ids}
        written = write_metadata(tmp, meta, arrays, suffix)  # the commit
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


def _check_disk(job, files, starts, rows, top_k, budget, vocab, store, where) -> DiskEstimate:
    """Project the build's disk (:mod:`.disk`) and refuse or warn before any work."""
    tokens, low, exact = corpus_tokens(files, job.corpus, job.limit_tokens)
    estimate = estimate_disk(
        tokens=tokens, tokens_low=low, exact=exact, column_rows=np.diff(np.append(starts, rows)),
        top_k=top_k, budget=budget, partitions=job.partitions,
        heldout_cap=heldout_cap(len(starts), top_k),
        vocab_size=vocab.source_vocab_size, where=where,
        initial_rows=0 if store is None else int(store.meta.get("occupied_rows") or 0),
    )  # fmt: skip
    log.info("disk: %s", estimate)
    check_disk(estimate)
    return estimate


@contextmanager
def _in_place(path: Path, manifest: dict):
    """``--append`` writes into the memory's own directory (new file names; ``zarr.json``'s
    rename is the commit): one line for a file system error; a failure before the commit
    removes the new files (the memory stays as it was)."""
    from .append import remove_strays
    from .store import read_metadata

    try:
        yield path
    except BaseException as exc:
        if read_metadata(path)["manifest"] == manifest:  # not committed
            remove_strays(path, manifest)
        if isinstance(exc, OSError):
            raise EngramError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def _fit_gate(before, unigram, layout, layer_ids, discounts, rows, targets):
    """Fit the gate on the held-out pairs against the rows as counted without them."""
    from .accumulate import locate
    from .gate import fit_gate, unfitted_gate
    from .query import level_columns
    from .smoothing import level_probability_kernel, unigram_probabilities

    if not rows.shape[0]:
        return unfitted_gate("no held-out positions (the corpus is too small)")
    cols, ncols = level_columns(layout, len(layer_ids))
    p0 = unigram_probabilities(unigram, discounts[0])
    out = np.empty((rows.shape[0], 4))
    level_probability_kernel(locate(before.row_ids, rows), targets, cols, ncols, before.tokens,
                             before.counts, before.totals, p0, np.asarray(discounts),
                             out)  # fmt: skip
    return fit_gate(out[:, 0], p0[targets], out[:, 1:4], layout.max_ngram)
