"""``hash-stats`` end to end: plan (files, memory bound), one streaming pass, finalization.

:func:`plan_hash_stats` finds the input files and bounds the memory the pass will need, refusing
up front (naming a choice that fits) when the bound is above ``max_memory``.
:func:`run_hash_stats` streams the corpus through :class:`~engramctl.stats.counter.NgramCounter` and
returns a :class:`~engramctl.stats.report.HashStatsReport`. Ctrl-C (SIGINT) or a true
``should_stop()`` stops reading after the current batch; the report then covers what was read
and says ``partial``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._system import cpu_count, format_bytes, parse_memory
from ..corpus.files import (
    CorpusFile,
    CorpusOptions,
    corpus_bytes,
    discover_files,
    estimate_tokens,
)
from ..corpus.tokenize import TextTokenizer
from ..errors import EngramError, UsageError
from ..layout import EngramLayout
from ..tokenizer import load_checked_tokenizer
from .counter import estimate_memory
from .passes import build_report, count_corpus, finalize, largest_rows, make_report
from .report import HashStatsReport

__all__ = [  # count_corpus, finalize, build_report, make_report live in .passes (shared by modes)
    "HashStatsPlan", "plan_hash_stats", "run_hash_stats", "load_matching_tokenizer",
    "count_corpus", "finalize", "build_report", "make_report",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HashStatsPlan:
    """What a pass will read and the memory it may need."""

    files: list[CorpusFile]
    options: CorpusOptions
    layout: EngramLayout
    layer_ids: tuple[int, ...]  # layers of ``layout`` to report
    sweep: tuple[int, ...]  # candidate rows per head, every order
    limit_tokens: int | None
    threads: int  # counting threads (one order each) and finalization threads (heads)
    tokens_estimate: int
    memory_estimate: int
    max_memory: int
    partitions: int | None = None  # count in K key-space partitions (None: one single pass)
    partitions_chosen: bool = False  # K was chosen to fit --max-memory, not given
    spill_dir: str | None = None  # where partitioned counting keeps each partition's n-grams
    estimate: bool = False  # HyperLogLog sketches and ideal-hash figures instead of exact counts
    extrapolate: float | None = None  # also predict the figures at this many tokens (Heaps' law)

    @property
    def bytes_total(self) -> int:
        return corpus_bytes(self.files)

    @property
    def needs_tokenizer(self) -> bool:
        return any(f.format != "tokens" for f in self.files) and not self.options.tokens_field


def _memory(layout, layer_ids, sweep, tokens: int, threads: int = 1) -> int:
    return estimate_memory(
        tokens=tokens,
        max_ngram=layout.max_ngram,
        canonical_vocab_size=layout.vocab_size,
        largest_head_rows=largest_rows(layout, layer_ids, sweep),
        threads=threads,
    )


def _what_fits(layout, layer_ids, sweep, tokens, max_memory, threads) -> str:
    def memory(sizes, count):
        return _memory(layout, layer_ids, sizes, count, threads)

    hints = []
    small_sweep = tuple(s for s in sweep if memory((s,), 0) * 2 < max_memory)
    if small_sweep != tuple(sweep) and memory(small_sweep, tokens) <= max_memory:
        listed = ",".join(str(s) for s in small_sweep)
        hints.append(f"--sweep {listed}" if small_sweep else "no --sweep")
    lo, hi = 0, tokens
    while lo < hi:  # the most tokens whose bound fits
        mid = (lo + hi + 1) // 2
        if memory(sweep, mid) <= max_memory:
            lo = mid
        else:
            hi = mid - 1
    if lo > 0:
        hints.append(f"--limit-tokens {lo:_}".replace("_", ","))
    if not hints:
        return "lower --max-ngram or the table sizes, or raise --max-memory"
    shared = "the counts are shared by all layers, so --layers barely changes this"
    return " or ".join(hints) + f" would fit ({shared})"


def plan_hash_stats(
    inputs,
    *,
    layout: EngramLayout,
    layer_ids=None,
    options: CorpusOptions | None = None,
    sweep=(),
    limit_tokens: int | None = None,
    max_memory: int | None = None,
    threads: int | None = None,
    partitions: int | None = None,
    spill_dir: str | None = None,
    estimate: bool = False,
    extrapolate: float | None = None,
) -> HashStatsPlan:
    """Find the corpus files and bound the memory; refuse when the bound exceeds ``max_memory``.

    ``partitions`` K counts the n-grams in K key-space partitions, one after another (see
    :mod:`engramctl.stats.partition_run`), bounding the memory of one partition; ``None`` makes
    one pass when it fits ``max_memory`` and otherwise chooses the smallest K that fits.
    ``estimate`` sketches the distinct n-grams in constant memory (:mod:`.sketch`);
    ``extrapolate`` predicts the figures at that many tokens (:mod:`.extrapolate`).
    """
    options = options or CorpusOptions()
    options.validate()
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    threads = threads or cpu_count()
    layer_ids = tuple(layer_ids) if layer_ids else layout.layers
    for layer in layer_ids:
        if layer not in layout.layers:
            raise UsageError(f"layer {layer} is not a layer of the layout {list(layout.layers)}")
    if limit_tokens is not None and limit_tokens < 1:
        raise UsageError(f"--limit-tokens must be at least 1, got {limit_tokens}")
    for size in sweep:
        if not 2 <= size <= 2**40:
            raise UsageError(f"--sweep sizes must be between 2 and 2**40 rows, got {size}")
    files = discover_files(inputs, format=options.format)
    options.check_doc_sep_id(files)
    tokens = estimate_tokens(files, options)
    if limit_tokens is not None:
        tokens = min(tokens, limit_tokens)
    max_memory = parse_memory(None) if max_memory is None else int(max_memory)
    if partitions is not None and partitions < 1:
        raise UsageError(f"--partitions must be at least 1, got {partitions}")
    if extrapolate is not None:
        from .extrapolate import batch_tokens_for, check_target

        check_target(extrapolate, tokens)  # and batches small enough for the checkpoints
        batch = batch_tokens_for(tokens, options.batch_tokens)
        options = dataclasses.replace(options, batch_tokens=batch)
    if estimate:
        if partitions is not None:
            raise UsageError("--estimate counts nothing exactly; drop --partitions")
        from .sketch import sketch_memory

        memory, chosen = sketch_memory(layout.max_ngram, options.batch_tokens), False
    else:
        memory, partitions, chosen = _fit_memory(
            layout, layer_ids, sweep, tokens, max_memory, threads, partitions
        )
    return HashStatsPlan(
        files,
        options,
        layout,
        layer_ids,
        tuple(sweep),
        limit_tokens,
        threads,
        tokens,
        memory,
        max_memory,
        partitions,
        chosen,
        spill_dir,
        estimate,
        None if extrapolate is None else float(extrapolate),
    )


def _fit_memory(layout, layer_ids, sweep, tokens, max_memory, threads, partitions):
    """``(bytes, partitions, chosen)``: the single pass's bound, or a partition's (K given, or
    the smallest K that fits when the single pass does not); refuses when nothing fits."""
    memory = _memory(layout, layer_ids, sweep, tokens, threads)
    chosen = False
    if partitions is None and memory > max_memory:
        partitions = _choose_partitions(layout, layer_ids, sweep, tokens, max_memory)
        chosen = partitions is not None
    if partitions is not None:
        memory = _partition_memory(layout, layer_ids, sweep, tokens, partitions)
        if memory > max_memory:
            raise EngramError(
                f"hash-stats in {partitions} partition(s) may need up to {format_bytes(memory)} "
                f"per partition for about {tokens:,} tokens, above --max-memory "
                f"{format_bytes(max_memory)}; "
                + (
                    "raise --partitions or --max-memory"
                    if chosen or _choose_partitions(layout, layer_ids, sweep, tokens, max_memory)
                    else "the per-row loads of the largest table do not fit at any --partitions: "
                    "lower the table sizes or --sweep, or raise --max-memory"
                )
            )
    elif memory > max_memory:
        raise EngramError(
            f"hash-stats may need up to {format_bytes(memory)} for about {tokens:,} tokens, "
            f"above --max-memory {format_bytes(max_memory)}; "
            + _what_fits(layout, layer_ids, sweep, tokens, max_memory, threads)
        )
    return memory, partitions, chosen


def _partition_memory(layout, layer_ids, sweep, tokens: int, parts: int) -> int:
    from .partition import partition_memory

    return partition_memory(
        tokens=tokens,
        parts=parts,
        max_ngram=layout.max_ngram,
        canonical_vocab_size=layout.vocab_size,
        heads=layout.heads,
        largest_head_rows=largest_rows(layout, layer_ids, sweep),
    )


def _choose_partitions(layout, layer_ids, sweep, tokens: int, max_memory: int) -> int | None:
    from .partition import choose_partitions

    return choose_partitions(
        lambda k: _partition_memory(layout, layer_ids, sweep, tokens, k), max_memory
    )


def load_matching_tokenizer(source: str, vocab) -> TextTokenizer:
    """The tokenizer for text input; refuses one the vocab was not built from."""
    return TextTokenizer(load_checked_tokenizer(source, sha256=vocab.source_sha256)[0])


def run_hash_stats(
    plan: HashStatsPlan,
    *,
    vocab,
    tokenizer: TextTokenizer | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HashStatsReport:
    """Stream the corpus once and compute every figure of DESIGN.md "Collision statistics".

    Parameters
    ----------
    plan : from :func:`plan_hash_stats`.
    vocab : the canonical vocab the layout was built for.
    tokenizer : needed for text input (:func:`load_matching_tokenizer`).
    progress : called after each batch with ``(bytes done, bytes total, documents, tokens)``.
    should_stop : polled after each batch; true stops the pass like Ctrl-C.
    """
    if plan.partitions is not None:  # K passes, one per key-space partition
        from .partition_run import run_partitioned

        return run_partitioned(
            plan, vocab=vocab, tokenizer=tokenizer, progress=progress, should_stop=should_stop
        )
    if plan.needs_tokenizer and tokenizer is None:
        raise UsageError("text input needs a tokenizer; pass --tokenizer")
    started = time.perf_counter()
    counter = checkpoints = None
    if plan.estimate:
        from .sketch import new_sketch

        counter = new_sketch(plan, vocab)
    if plan.extrapolate is not None:
        from .extrapolate import Checkpoints

        checkpoints = Checkpoints(range(2, plan.layout.max_ngram + 1))
    counter, warnings, stopped, bytes_read = count_corpus(
        plan,
        vocab=vocab,
        tokenizer=tokenizer,
        progress=progress,
        should_stop=should_stop,
        counter=counter,
        on_batch=checkpoints,
    )
    extra = {}
    if checkpoints is not None:
        from .extrapolate import extrapolation

        extra["extrapolation"] = extrapolation(plan, checkpoints, counter.tokens)
    if plan.estimate:
        from .sketch import sketch_report

        return sketch_report(plan, counter, warnings, stopped, bytes_read, started, **extra)
    return build_report(plan, counter, warnings, stopped, bytes_read, started, **extra)
