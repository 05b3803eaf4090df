"""``hash-stats`` end to end: plan (files, memory bound), one streaming pass, finalization.

:func:`plan_hash_stats` finds the input files and bounds the memory the pass will need, refusing
up front (naming a choice that fits) when the bound is above ``max_memory``.
:func:`run_hash_stats` streams the corpus through :class:`~engramctl.stats.counter.NgramCounter` and
returns a :class:`~engramctl.stats.report.HashStatsReport`. Ctrl-C (SIGINT) or a true
``should_stop()`` stops reading after the current batch; the report then covers what was read
and says ``partial``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._system import cpu_count, format_bytes, parse_memory
from ..corpus.files import (
    CorpusFile,
    CorpusOptions,
    CorpusWarnings,
    corpus_bytes,
    discover_files,
    estimate_tokens,
)
from ..corpus.readers import read_batches
from ..corpus.tokenize import TextTokenizer, tokenized_batches
from ..errors import EngramError, UsageError
from ..layout import EngramLayout
from ..tokenizer import load_checked_tokenizer
from .counter import NgramCounter, estimate_memory
from .figures import order_stats
from .report import HashStatsReport, SweepPoint

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

    @property
    def bytes_total(self) -> int:
        return corpus_bytes(self.files)

    @property
    def needs_tokenizer(self) -> bool:
        return any(f.format != "tokens" for f in self.files) and not self.options.tokens_field


def _largest_rows(layout: EngramLayout, layer_ids, sweep) -> int:
    largest = max(int(layout.head_rows(layer).max()) for layer in layer_ids)
    # the next primes above a sweep size are well within 1% (plus a little for tiny sizes)
    return max([largest, *(int(s * 1.01) + 1000 for s in sweep)])


def _memory(layout, layer_ids, sweep, tokens: int, threads: int = 1) -> int:
    return estimate_memory(
        tokens=tokens,
        max_ngram=layout.max_ngram,
        canonical_vocab_size=layout.vocab_size,
        largest_head_rows=_largest_rows(layout, layer_ids, sweep),
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
) -> HashStatsPlan:
    """Find the corpus files and bound the memory; refuse when the bound exceeds ``max_memory``."""
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
    tokens = estimate_tokens(files, options)
    if limit_tokens is not None:
        tokens = min(tokens, limit_tokens)
    max_memory = parse_memory(None) if max_memory is None else int(max_memory)
    memory = _memory(layout, layer_ids, sweep, tokens, threads)
    if memory > max_memory:
        raise EngramError(
            f"hash-stats may need up to {format_bytes(memory)} for about {tokens:,} tokens, "
            f"above --max-memory {format_bytes(max_memory)}; "
            + _what_fits(layout, layer_ids, sweep, tokens, max_memory, threads)
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
    )


def load_matching_tokenizer(source: str, vocab) -> TextTokenizer:
    """The tokenizer for text input; refuses one the vocab was not built from."""
    return TextTokenizer(load_checked_tokenizer(source, sha256=vocab.source_sha256)[0])


@dataclass
class _StopFlag:
    """Set by SIGINT (first Ctrl-C) or a caller's ``should_stop``."""

    should_stop: Callable[[], bool] | None = None
    interrupted: bool = False
    _previous: object = field(default=None, repr=False)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.interrupted = True

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.interrupted = True
        return self.interrupted


def _truncate(batch, keep: int) -> None:
    """Keep the first ``keep`` tokens of an id batch."""
    pieces = int(np.searchsorted(batch.offsets, keep, side="left"))
    pieces = max(1, pieces)
    batch.offsets = np.minimum(batch.offsets[: pieces + 1], keep)
    batch.ids = batch.ids[:keep]
    batch.doc_start = batch.doc_start[:pieces]
    batch.where = batch.where[:pieces]


def count_corpus(
    plan: HashStatsPlan,
    *,
    vocab,
    tokenizer: TextTokenizer | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    counter: NgramCounter | None = None,
) -> tuple[NgramCounter, CorpusWarnings, str, int]:
    """The streaming pass: ``(counter, warnings, stopped_reason, bytes read)``.

    ``counter`` (default: a new one) is counted into; its ``carry`` is the context of the first
    piece (a token-stream shard that starts inside a document).
    """
    layout = plan.layout
    if counter is None:
        counter = NgramCounter(
            vocab,
            max_ngram=layout.max_ngram,
            pad=layout.pad_canonical_id(vocab),
            threads=plan.threads,
        )
    warnings = CorpusWarnings()
    done_before = np.concatenate([[0], np.cumsum([f.size for f in plan.files])])
    largest_rows = _largest_rows(layout, plan.layer_ids, plan.sweep)
    stopped = ""
    done = 0
    with _StopFlag(should_stop) as stop:
        batches = tokenized_batches(read_batches(plan.files, plan.options, warnings), tokenizer)
        try:
            for batch in batches:
                if plan.limit_tokens is not None:
                    room = plan.limit_tokens - counter.tokens
                    if room <= 0:  # more input than the limit: stop before it
                        stopped = "limit-tokens"
                        break
                    if batch.tokens > room:
                        _truncate(batch, room)
                        stopped = "limit-tokens"  # counted below, then the pass stops
                bad = counter.add(batch.ids, batch.offsets, batch.doc_start)
                if bad >= 0:
                    raise EngramError(
                        f"{batch.locate(bad)}: token id {int(batch.ids[bad])} is outside the "
                        f"tokenizer's vocab (0..{vocab.source_vocab_size - 1}); use the vocab "
                        "built from the tokenizer that produced these ids"
                    )
                f = plan.files[batch.file_index]
                done = int(done_before[batch.file_index] + batch.file_fraction * f.size)
                if progress is not None:
                    progress(done, plan.bytes_total, counter.documents, counter.tokens)
                if stopped:
                    break
                peak = counter.peak_bytes(largest_head_rows=largest_rows, threads=plan.threads)
                if peak > plan.max_memory:
                    stopped = "max-memory"
                    warnings.add("max_memory", f"after {counter.tokens:,} tokens")
                    break
                if stop():
                    stopped = "interrupted"
                    break
        finally:
            batches.close()
    return counter, warnings, stopped, done if stopped else plan.bytes_total


def finalize(
    counter: NgramCounter, layout: EngramLayout, layer_ids, sweep=(), *, threads: int = 1
) -> tuple:
    """``(layers, sweep points)``: every figure of the layout's layers and each sweep size."""
    entries = {n: counter.entries(n) for n in range(2, layout.max_ngram + 1)}
    sizes = [layout.with_ngram_vocab([size] * (layout.max_ngram - 1)) for size in sweep]
    largest = max(
        int(lay.head_rows(layer).max()) for lay in [layout, *sizes] for layer in layer_ids
    )
    scratch = [np.zeros(largest, dtype=np.uint8) for _ in range(threads)]  # reused, kept all zero

    def layers_of(lay: EngramLayout, histograms: bool) -> dict:
        result = {}
        for layer in layer_ids:
            multipliers, rows = lay.multipliers(layer), lay.head_rows(layer)
            result[layer] = {
                n: order_stats(
                    *entries[n],
                    multipliers[:n],
                    rows[(n - 2) * lay.heads : (n - 1) * lay.heads],
                    order=n,
                    histograms=histograms,
                    threads=threads,
                    scratch=scratch,
                )
                for n in entries
            }
        return result

    layers = layers_of(layout, True)
    points = []
    for swept in sizes:
        points.append(SweepPoint(tuple(swept.ngram_vocab), layers_of(swept, False)))
    return layers, tuple(points)


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
    if plan.needs_tokenizer and tokenizer is None:
        raise UsageError("text input needs a tokenizer; pass --tokenizer")
    started = time.perf_counter()
    counter, warnings, stopped, bytes_read = count_corpus(
        plan,
        vocab=vocab,
        tokenizer=tokenizer,
        progress=progress,
        should_stop=should_stop,
    )
    return build_report(plan, counter, warnings, stopped, bytes_read, started)


def build_report(
    plan: HashStatsPlan,
    counter: NgramCounter,
    warnings: CorpusWarnings,
    stopped: str,
    bytes_read: int,
    started: float,
) -> HashStatsReport:
    """Finalize the counts of a whole pass (here, with ``plan.threads``) into the report."""
    if counter.tokens == 0 and not stopped:
        names = ", ".join(str(f.path) for f in plan.files[:3])
        raise EngramError(f"the corpus holds no tokens ({names}); nothing to count")
    layers, sweep = finalize(counter, plan.layout, plan.layer_ids, plan.sweep, threads=plan.threads)
    layout_dict = plan.layout.to_dict()
    layout_dict["analysed_layers"] = list(plan.layer_ids)
    return HashStatsReport(
        tokens=counter.tokens,
        documents=counter.documents,
        partial=bool(stopped),
        layout=layout_dict,
        layers=layers,
        sweep=sweep,
        files=tuple(str(f.path) for f in plan.files),
        bytes_read=bytes_read,
        seconds=time.perf_counter() - started,
        memory_estimate_bytes=plan.memory_estimate,
        stopped_reason=stopped,
        warnings=warnings.counts,
    )
