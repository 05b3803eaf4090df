"""One streaming pass of ``hash-stats`` and the report it makes: the pieces every mode shares.

:func:`count_corpus` streams a plan's files through a counter (an exact
:class:`~engramctl.stats.counter.NgramCounter`, one partition of one, or an
:class:`~engramctl.stats.sketch.NgramSketch`): Ctrl-C (SIGINT) or a true ``should_stop()`` stops
reading after the current batch. :func:`finalize` turns an exact counter into every figure;
:func:`make_report` wraps figures into the :class:`~engramctl.stats.report.HashStatsReport`.
:mod:`engramctl.stats.run` plans and dispatches; the partitioned, estimating and Dask drivers
build on these.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..corpus.files import CorpusWarnings
from ..corpus.readers import read_batches
from ..corpus.tokenize import TextTokenizer, tokenized_batches
from ..errors import EngramError
from ..layout import EngramLayout
from .counter import NgramCounter
from .figures import order_stats
from .report import HashStatsReport, SweepPoint


def largest_rows(layout: EngramLayout, layer_ids, sweep) -> int:
    """Rows of the largest head of the layout's ``layer_ids`` and of the sweep sizes."""
    largest = max(int(layout.head_rows(layer).max()) for layer in layer_ids)
    # the next primes above a sweep size are well within 1% (plus a little for tiny sizes)
    return max([largest, *(int(s * 1.01) + 1000 for s in sweep)])


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
    plan,  # a HashStatsPlan (engramctl.stats.run)
    *,
    vocab,
    tokenizer: TextTokenizer | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    counter: NgramCounter | None = None,
    on_batch: Callable | None = None,
) -> tuple[NgramCounter, CorpusWarnings, str, int]:
    """The streaming pass: ``(counter, warnings, stopped_reason, bytes read)``.

    ``counter`` (default: a new one) is counted into; its ``carry`` is the context of the first
    piece (a token-stream shard that starts inside a document). ``on_batch(counter)`` is called
    after each batch is counted (and ``on_batch(counter, end=True)`` at the end).
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
    largest = largest_rows(layout, plan.layer_ids, plan.sweep)
    stopped = ""
    done = 0
    with _StopFlag(should_stop) as stop:
        limit = None if plan.limit_tokens is None else plan.limit_tokens - counter.tokens
        batches = tokenized_batches(
            read_batches(plan.files, plan.options, warnings), tokenizer, limit=limit
        )
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
                if plan.options.dead_rule is not None:
                    batch.ids = plan.options.dead_rule.mark(batch.ids)
                bad = counter.add(batch.ids, batch.offsets, batch.doc_start)
                if bad >= 0:
                    raise EngramError(
                        f"{batch.locate(bad)}: token id {int(batch.ids[bad])} is outside the "
                        f"tokenizer's vocab (0..{vocab.source_vocab_size - 1}); use the vocab "
                        "built from the tokenizer that produced these ids (or --dead-ids, if "
                        "it marks an image position)"
                    )
                if on_batch is not None:
                    on_batch(counter)
                f = plan.files[batch.file_index]
                done = int(done_before[batch.file_index] + batch.file_fraction * f.size)
                if progress is not None:
                    progress(done, plan.bytes_total, counter.documents, counter.tokens)
                if stopped:
                    break
                peak = counter.peak_bytes(largest_head_rows=largest, threads=plan.threads)
                if peak > plan.max_memory:
                    stopped = "max-memory"
                    warnings.add("max_memory", f"after {counter.tokens:,} tokens")
                    break
                if stop():
                    stopped = "interrupted"
                    break
        finally:
            batches.close()
    if on_batch is not None:
        on_batch(counter, end=True)
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


def build_report(
    plan,  # a HashStatsPlan (engramctl.stats.run)
    counter: NgramCounter,
    warnings: CorpusWarnings,
    stopped: str,
    bytes_read: int,
    started: float,
    **extra,
) -> HashStatsReport:
    """Finalize the counts of a whole pass (here, with ``plan.threads``) into the report."""
    if counter.tokens == 0 and not stopped:
        names = ", ".join(str(f.path) for f in plan.files[:3])
        raise EngramError(f"the corpus holds no tokens ({names}); nothing to count")
    layers, sweep = finalize(counter, plan.layout, plan.layer_ids, plan.sweep, threads=plan.threads)
    return make_report(
        plan, layers, sweep, tokens=counter.tokens, documents=counter.documents,
        warnings=warnings, stopped=stopped, bytes_read=bytes_read, started=started, **extra,
    )  # fmt: skip


def make_report(
    plan,  # a HashStatsPlan (engramctl.stats.run)
    layers: dict,
    sweep: tuple[SweepPoint, ...],
    *,
    tokens: int,
    documents: int,
    warnings: CorpusWarnings,
    stopped: str,
    bytes_read: int,
    started: float,
    **extra,
) -> HashStatsReport:
    """The report of a pass's figures (``extra``: more :class:`HashStatsReport` fields)."""
    layout_dict = plan.layout.to_dict()
    layout_dict["analysed_layers"] = list(plan.layer_ids)
    return HashStatsReport(
        tokens=tokens,
        documents=documents,
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
        **extra,
    )
