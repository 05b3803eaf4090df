"""``hash-stats --partitions K`` on this machine: K counting passes, spilled n-grams, two looks.

Pass k reads the whole input and counts only the n-grams of key-space partition k
(:class:`~engramctl.stats.counter.NgramCounter` with ``partition=(k, K)``), then writes that
partition's distinct n-grams and counts to the spill directory (``--spill-dir``, default the
system's temporary directory) and frees its maps: counting holds about 1/K of a single pass's
maps. Finalization (:mod:`engramctl.stats.partition`) then takes one target (table size, layer,
order) at a time, reading the K spill files twice: once to sum the per-row loads of its heads,
once to check each n-gram against the merged "collided row" bitmaps. The spill directory is
removed at the end, whatever happens.

K passes read (and, for text, tokenize) the input K times: partitioned counting trades time for
memory. Pre-tokenized input makes the extra passes cheap.

Ctrl-C (or ``should_stop``) during pass 0 stops reading there; the later passes count the same
first tokens (``should_stop`` is not asked again; a Ctrl-C still stops them), so the partial
report covers exactly the tokens read. During a later pass it stops
at once and finalizes the partitions already counted: the report is partial and its figures
cover the n-grams of those partitions only (``partitions_counted`` says how many).
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..corpus.tokenize import TextTokenizer
from ..errors import EngramError, UsageError
from .counter import NgramCounter
from .partition import assemble, target_figures, targets
from .passes import count_corpus, make_report
from .report import HashStatsReport, SweepPoint


def open_spill_dir(parent: str | None) -> Path:
    """A fresh directory for spill files under ``parent`` (default: the temporary directory)."""
    where = Path(parent) if parent else Path(tempfile.gettempdir())
    if not where.is_dir():
        raise UsageError(f"--spill-dir {where} is not a directory; create it or pick another")
    try:
        return Path(tempfile.mkdtemp(prefix="engramctl-spill-", dir=where))
    except OSError as exc:
        raise UsageError(
            f"--spill-dir {where} is not writable ({exc.strerror or exc}); pick another"
        ) from None


def _spill(directory: Path, part: int, counter: NgramCounter) -> None:
    """Write a partition's distinct n-grams (int32 tuples) and counts, one order a file pair."""
    for n in counter.maps:
        grams, counts = counter.entries(n)
        for name, array in ((f"p{part}-n{n}-grams.npy", grams.astype(np.int32)),
                            (f"p{part}-n{n}-counts.npy", counts)):  # fmt: skip
            try:
                np.save(directory / name, array)
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                raise EngramError(
                    f"cannot write spill files to {directory.parent} "
                    f"({'the disk is full' if full else exc.strerror or exc}); free space or "
                    "pass another --spill-dir (nothing was reported)"
                ) from None


def _spilled(directory: Path, parts: int, order: int):
    """A callable giving each partition's ``(grams, counts)`` of ``order``, memory-mapped."""

    def read():
        for part in range(parts):
            grams = np.load(directory / f"p{part}-n{order}-grams.npy", mmap_mode="r")
            counts = np.load(directory / f"p{part}-n{order}-counts.npy", mmap_mode="r")
            yield grams, counts

    return read


@dataclass(frozen=True)
class _FirstPass:
    """What pass 0 read (every later pass reads the same tokens): the report's totals."""

    tokens: int
    documents: int
    warnings: dict
    stopped: str  # "" (the whole input), "limit-tokens", "interrupted", ...
    bytes_read: int


def run_partitioned(
    plan,  # a HashStatsPlan with partitions
    *,
    vocab,
    tokenizer: TextTokenizer | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HashStatsReport:
    """The report of :func:`engramctl.stats.run.run_hash_stats`, counted in ``plan.partitions``
    key-space partitions one after another (identical figures, about 1/K of the memory)."""
    if plan.needs_tokenizer and tokenizer is None:
        raise UsageError("text input needs a tokenizer; pass --tokenizer")
    started = time.perf_counter()
    checkpoints = None
    if plan.extrapolate is not None:
        from .extrapolate import Checkpoints

        checkpoints = Checkpoints(range(2, plan.layout.max_ngram + 1))
    spill = open_spill_dir(plan.spill_dir)
    try:
        first, counted = _count_partitions(
            plan, spill, vocab=vocab, tokenizer=tokenizer, progress=progress,
            should_stop=should_stop, checkpoints=checkpoints,
        )  # fmt: skip
        if first.tokens == 0 and not first.stopped:
            names = ", ".join(str(f.path) for f in plan.files[:3])
            raise EngramError(f"the corpus holds no tokens ({names}); nothing to count")
        figures = {
            target: target_figures(target, _spilled(spill, counted, target.order))
            for target in targets(plan.layout, plan.layer_ids, plan.sweep)
        }
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return _report(plan, figures, first, counted, checkpoints, started)


def _count_partitions(
    plan, spill: Path, *, vocab, tokenizer, progress, should_stop, checkpoints
) -> tuple[_FirstPass, int]:
    """Pass k counts partition k and spills it; returns what pass 0 read and the number of
    partitions counted (fewer than K when a later pass was stopped)."""
    parts = int(plan.partitions or 1)
    first, counted = None, 0
    for part in range(parts):
        if checkpoints is not None:
            checkpoints.restart()
        pass_plan = plan
        if part and first.stopped:  # pass 0 stopped early: count the same first tokens
            pass_plan = replace(plan, limit_tokens=first.tokens)
        counter = NgramCounter(
            vocab,
            max_ngram=plan.layout.max_ngram,
            pad=plan.layout.pad_canonical_id(vocab),
            threads=plan.threads,
            partition=(part, parts),
        )
        counter, warnings, stopped, bytes_read = count_corpus(
            pass_plan,
            vocab=vocab,
            tokenizer=tokenizer,
            progress=_pass_progress(progress, part, parts),
            should_stop=should_stop if part == 0 or not first.stopped else None,
            counter=counter,
            on_batch=checkpoints,
        )
        if part == 0:  # the totals, not the maps
            first = _FirstPass(counter.tokens, counter.documents, warnings, stopped, bytes_read)
        elif stopped not in ("", "limit-tokens"):
            break  # stopped in a later pass: finalize the partitions counted so far
        _spill(spill, part, counter)
        counted += 1
        del counter  # free this partition's maps before the next pass builds its own
    if counted < parts and not first.stopped:
        first = replace(first, stopped="interrupted")
    return first, counted


def _pass_progress(progress, part: int, parts: int):
    """Pass ``part``'s progress as a share of all ``parts`` passes."""

    def step(done, total, docs, tokens):
        if progress is not None:
            progress(part * total + done, parts * total, docs, tokens)

    return step


def _report(plan, figures, first: _FirstPass, counted: int, checkpoints, started: float):
    """The report from the figures of every target (partial if ``counted`` < K)."""
    parts = int(plan.partitions or 1)
    points = assemble(figures, 1 + len(plan.sweep))
    sizes = [plan.layout.with_ngram_vocab([s] * (plan.layout.max_ngram - 1)) for s in plan.sweep]
    sweep = tuple(
        SweepPoint(tuple(lay.ngram_vocab), layers)
        for lay, layers in zip(sizes, points[1:], strict=True)
    )
    extra = {}
    if checkpoints is not None:
        from .extrapolate import extrapolation

        extra["extrapolation"] = (
            extrapolation(plan, checkpoints, first.tokens)
            if counted == parts
            else {"tokens": plan.extrapolate, "error": "stopped before every partition counted"}
        )
    return make_report(
        plan, points[0], sweep, tokens=first.tokens, documents=first.documents,
        warnings=first.warnings, stopped=first.stopped, bytes_read=first.bytes_read,
        started=started, partitions_counted=counted if counted < parts else 0, **extra,
    )  # fmt: skip
