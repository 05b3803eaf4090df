"""The pieces of a ``build-counts`` pass that one process (:mod:`.build`) and the Dask build
(:mod:`.build_dask`) share: the pairs of a batch, which pairs are held out, and the memory's
metadata written at the end. Both builds call these, so their memories agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EngramError
from ..hashing import hash_canonical

HELDOUT_EVERY = 20  # one block in 20 held out for the gate (5%)
HELDOUT_CAP = 1 << 17  # held-out pairs at most (their rows stay in RAM until the fit)
BLOCK = 256  # pairs per held-out block (16 for corpora under ~1M tokens)
HEAD_PAIRS = HELDOUT_EVERY * HELDOUT_CAP  # no pair at or past this running index is held out
SNAPSHOT_BYTES = 1 << 26  # and at most so many that their rows' summaries fit 64 MiB


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


def heldout_block(files, options) -> int:
    """Pairs per held-out block: :data:`BLOCK`, or 16 when the corpus is estimated under ~1M
    tokens (so a small corpus still holds some out)."""
    from ..corpus.files import estimate_tokens

    return BLOCK if estimate_tokens(files, options) >= 1 << 20 else 16


def heldout_cap(columns: int, top_k: int, block: int) -> int:
    """Held-out pairs at most: :data:`HELDOUT_CAP`, fewer where their rows' summaries (kept in
    RAM until the gate's fit: ``columns`` rows of ``16 + 8 K`` bytes a pair) would pass
    :data:`SNAPSHOT_BYTES` (at V4.1's layout, 49 columns and K = 8: 16,896 pairs); whole
    blocks of ``block`` pairs."""
    cap = int(min(HELDOUT_CAP, max(1024, SNAPSHOT_BYTES // (columns * (16 + 8 * top_k)))))
    return cap - cap % block


def is_heldout(index, block: int, cap: int = 0) -> np.ndarray:
    """Whether each pair of running index ``index`` (over the whole corpus, valid pairs only) is
    held out: one block of ``block`` pairs in :data:`HELDOUT_EVERY`, the first ``cap`` (default
    :data:`HELDOUT_CAP`; :func:`heldout_cap`) such pairs (whole blocks: ``block`` divides the
    cap). Every pair held out has a running index below :data:`HEAD_PAIRS`."""
    cap = cap or HELDOUT_CAP
    assert cap % block == 0 and cap <= HELDOUT_CAP
    index = np.asarray(index, dtype=np.int64)
    return ((index // block) % HELDOUT_EVERY == HELDOUT_EVERY - 1) & (index < HELDOUT_EVERY * cap)


def layout_bases(layout, layer_ids, canonical_size: int) -> tuple[np.ndarray, int]:
    """Each counted layer's first row (level 1's ``canonical_size`` rows come first) and the
    rows in all."""
    bases, rows = [], int(canonical_size)
    for layer in layer_ids:
        bases.append(rows)
        rows += layout.layer_rows(layer)
    return np.array(bases, dtype=np.int64), rows


def corpus_tokenizer(files, job, vocab, tokenizer=None):
    """The tokenizer text input needs (``tokenizer`` if given, else ``job.tokenizer`` checked
    against the vocab's); ``None`` for token input."""
    needs = any(f.format != "tokens" for f in files) and not job.corpus.tokens_field
    if not needs or tokenizer is not None:
        return tokenizer
    from ..corpus.tokenize import TextTokenizer
    from ..tokenizer import load_checked_tokenizer

    return TextTokenizer(load_checked_tokenizer(job.tokenizer, sha256=vocab.source_sha256)[0])


def check_ids(batch, ids, vocab_size: int) -> None:
    """Refuse a batch holding an id outside the tokenizer's vocab, naming where."""
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(np.flatnonzero((ids < 0) | (ids >= vocab_size))[0])
        raise EngramError(
            f"{batch.locate(bad)}: token id {int(ids[bad])} is outside the "
            f"tokenizer's vocab (0..{vocab_size - 1}); use the vocab "
            "built from the tokenizer that produced these ids"
        )


class PairMaker:
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


def column_starts(layout, layer_ids, bases) -> np.ndarray:
    """The first row of each column (level 1, then each layer's heads): ascending."""
    starts = [0]
    for i, layer in enumerate(layer_ids):
        starts.extend(int(bases[i]) + int(o) for o in layout.head_offsets(layer))
    starts = np.asarray(starts, np.int64)
    assert (np.diff(starts) > 0).all(), "columns must tile the rows in order"
    return starts


def discounts_of(unigram, layout, layer_ids, hist, occupied) -> list:
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


def fit_build_gate(before, unigram, layout, layer_ids, discounts, rows, targets):
    """Fit the gate on the held-out pairs against the rows as counted without them."""
    from .gate import fit_gate, unfitted_gate
    from .locate import RowLocator
    from .query import level_columns
    from .smoothing import level_probability_kernel, unigram_probabilities

    if not rows.shape[0]:
        return unfitted_gate("no held-out positions (the corpus is too small)")
    cols, ncols = level_columns(layout, len(layer_ids))
    p0 = unigram_probabilities(unigram, discounts[0])
    out = np.empty((rows.shape[0], 4))
    local = RowLocator.build(before.row_ids)(rows)
    level_probability_kernel(local, targets, cols, ncols, before.tokens, before.counts,
                             before.totals, p0, np.asarray(discounts), out)  # fmt: skip
    return fit_gate(out[:, 0], p0[targets], out[:, 1:4], layout.max_ngram)


def memory_meta(
    *, layout, layer_ids, bases, rows, vocab, tokenizer_name, top_k, unigram,
    counted, held_rows, held_targets, corpus, started, full,
) -> dict:  # fmt: skip
    """The memory's metadata once its row arrays are written: the
    discounts (before the held-out pairs, for the gate's fit, and after), the gate fitted on
    the held-out pairs, the full rows, the corpus summary.

    ``counted``: what :meth:`.accumulate.PairAccumulator.finish` returns (the snapshot before
    the held-out pairs, the counts of counts and occupied rows after, rows written).
    ``full``: the rows whose K slots are all taken (where truncation may have happened),
    counted as the rows were written.
    """
    import time

    from .store import FORMAT, FORMAT_VERSION

    before, hist, occupied, stored = counted
    discounts = discounts_of(unigram, layout, layer_ids, before.hist, before.occupied)
    gate = fit_build_gate(before, unigram, layout, layer_ids, discounts, held_rows, held_targets)
    discounts = discounts_of(unigram, layout, layer_ids, hist, occupied)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": layout.to_dict(),
        "layers": {
            str(L): {"base": int(b), "rows": int(layout.layer_rows(L))}
            for L, b in zip(layer_ids, bases, strict=True)
        },  # fmt: skip
        "rows": int(rows),
        "occupied_rows": int(stored - 1),
        "canonical_vocab_size": int(vocab.canonical_vocab_size),
        "vocab_size": int(vocab.source_vocab_size),
        "vocab_fingerprint": vocab.fingerprint,
        "tokenizer": {
            "name": vocab.source_name or tokenizer_name,
            "sha256": vocab.source_sha256,
        },  # fmt: skip
        "top_k": int(top_k),
        "discounts": discounts,
        "smoothing": "interpolated absolute discounting, Ney discounts, count-min over heads",
        "gate": gate,
        "corpus": corpus,
        "full_rows": int(full),
        "build_seconds": time.perf_counter() - started,
    }


def corpus_summary(files, total_bytes, tokens, documents, pairs, held, warnings) -> dict:
    """The memory's ``corpus`` metadata."""
    return {
        "files": [str(f.path) for f in files][:100],
        "file_count": len(files),
        "bytes": int(total_bytes),
        "tokens": tokens,
        "documents": documents,
        "pairs": pairs,
        "heldout_pairs": held,
        "warnings": warnings,
    }


def check_counted(files, tokens: int, pairs: int) -> None:
    """Refuse a corpus that gave no token, or no pair."""
    if tokens == 0:
        names = ", ".join(str(f.path) for f in files[:3])
        raise EngramError(f"the corpus tokenizes to nothing ({names}); nothing to count")
    if pairs == 0:
        raise EngramError(
            "the corpus has no document of two tokens or more: no next token to count"
        )


@dataclass(frozen=True)
class PassStart:
    """What a build knows before its pass (one process and Dask alike)."""

    started: float  # time.perf_counter() at the start
    layout: object  # the EngramLayout
    layer_ids: tuple
    files: list  # the corpus files found
    tokenizer: object  # for text input (None for token files)
    bases: np.ndarray  # each counted layer's first row
    rows: int  # rows of the layout (level 1 and every counted layer)
    starts: np.ndarray  # each column's first row
    store: object  # with --append: the memory added to (else None)
    suffix: str  # the new files' suffix ("" for a new memory, ".N" for the Nth append)
    top_k: int


def start_pass(job, vocab, layout, tokenizer=None) -> PassStart:
    """Check the job against the vocab and layout, find the corpus, load the tokenizer and,
    with ``--append``, open the memory (refusing one built otherwise; an interrupted append's
    files removed)."""
    import time

    from ..corpus.files import discover_files
    from ..hashing import NgramHasher

    job.corpus.validate()
    started = time.perf_counter()
    lay, layer_ids = layout.layout, tuple(layout.layer_ids)
    NgramHasher(lay, vocab)  # refuses a layout made for another vocab
    files = discover_files(job.inputs, format=job.corpus.format)
    tokenizer = corpus_tokenizer(files, job, vocab, tokenizer)
    bases, rows = layout_bases(lay, layer_ids, vocab.canonical_vocab_size)
    store, suffix, top_k = None, "", job.top_k
    if job.append:
        from .append import check_appendable, remove_strays
        from .store import open_counts

        store = open_counts(job.out)
        check_appendable(store, vocab, lay, layer_ids, job.top_k)
        top_k = store.top_k
        remove_strays(job.out, store.meta["manifest"])  # an interrupted append's files
        suffix = f".{int(store.meta.get('generation', 0)) + 1}"
    return PassStart(started, lay, layer_ids, files, tokenizer, bases, rows,
                     column_starts(lay, layer_ids, bases), store, suffix, top_k)  # fmt: skip
