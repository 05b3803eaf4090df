"""``hash-stats`` on Dask: shards counted on the workers, count maps merged in a tree.

:func:`run_hash_stats_dask` is what ``hash-stats --scheduler`` runs instead of
:func:`engramctl.stats.run.run_hash_stats`. The corpus is cut into shards
(:func:`engramctl.corpus.shards.split_files`); each shard is one task that counts its n-grams into
an :class:`~engramctl.stats.counter.NgramCounter` on a worker. Counters merge exactly by adding
counts, so :func:`engramctl.cluster.tree_reduce` merges them on the workers in any grouping and the
merged counter is the one a single pass would build. The worker holding it finalizes with the same
code as the single-process path (:func:`finalize_counts`) and only the small report travels back to
the client: it is identical, figure for figure (only its timing differs).

The vocab, layout and tokenizer go to the workers once, as one small task whose result every
shard task shares (a task, not scattered data: if every worker holding it dies, the scheduler
recomputes it). A killed worker's shards are re-run by Dask; counting a shard twice never happens,
because merges add their inputs into new maps, never into an input.

Memory (:func:`worker_memory`): a shard task holds the count maps of its tokens; the last merge
holds the maps of the whole corpus (its inputs and its output), and finalization needs what the
single-process pass needs (``plan.memory_estimate``, which grows with ``--sweep``), on one worker.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..cluster import (
    check_worker_memory,
    check_workers_see,
    open_client,
    submit_shared,
    tree_reduce,
)
from ..corpus.files import CorpusFile, CorpusWarnings, estimate_tokens
from ..corpus.readers import token_context
from ..corpus.shards import DEFAULT_SHARD_BYTES, split_files
from ..errors import EngramError, UsageError
from .counter import NgramCounter, count_maps_memory
from .report import HashStatsReport
from .run import HashStatsPlan, build_report, count_corpus

log = logging.getLogger(__name__)
MERGE_FANIN = 4


@dataclass
class ShardCounts:
    """A task's result: the counts of one or more consecutive shards and their warnings."""

    counter: NgramCounter
    warnings: dict = field(default_factory=dict)  # CorpusWarnings.counts, first in file order


@dataclass(frozen=True)
class ShardSetup:
    """What every shard task needs (:func:`count_shard`'s second argument), sent to the workers
    once."""

    vocab: object
    tokenizer: object
    plan: HashStatsPlan  # files replaced by the shard, one counting thread, no memory stop


def count_shard(shard: CorpusFile, setup: ShardSetup) -> ShardCounts:
    """Runs on a worker: count one shard exactly as the single pass counts those bytes."""
    plan = replace(setup.plan, files=[shard])
    layout = plan.layout
    if plan.estimate:  # a HyperLogLog sketch instead of exact counts (same feeding contract)
        from .sketch import new_sketch

        counter = new_sketch(plan, setup.vocab)
    else:
        counter = NgramCounter(
            setup.vocab, max_ngram=layout.max_ngram, pad=layout.pad_canonical_id(setup.vocab)
        )
    before, _ = token_context(shard, plan.options, layout.max_ngram - 1)
    if plan.options.dead_rule is not None:
        before = plan.options.dead_rule.mark(before)
    dead = np.flatnonzero(before < 0)
    if dead.size:  # a dead position: it and everything older is pad context
        before = before[dead[-1] + 1 :]
    if before.size:  # a token range inside a document: start from the ids before it
        valid = before[before < counter.lut.shape[0]]
        tail = counter.lut[valid] if valid.size == before.size else np.zeros(0, np.int32)
        counter.carry[counter.carry.shape[0] - tail.shape[0] :] = tail
    counter, found, stopped, _ = count_corpus(
        plan, vocab=setup.vocab, tokenizer=setup.tokenizer, counter=counter
    )
    if stopped:  # pragma: no cover - no limit, no memory stop and no SIGINT on a worker
        raise EngramError(f"counting {shard.path} stopped early ({stopped})")
    return ShardCounts(counter, found.counts)


def merge_counts(*parts: ShardCounts) -> ShardCounts:
    """Runs on a worker: add counts (exact, in any grouping); warnings keep the first in order.

    The inputs are left untouched (a re-run merge must not count anything twice): they are added
    into fresh maps sized for the sum of their entries, so no map grows (rehashes) on the way.
    """
    first = parts[0].counter  # an NgramCounter, or an NgramSketch with --estimate
    counter = type(first).sum_of([part.counter for part in parts])
    found = CorpusWarnings()
    for part in parts:
        for kind, entry in part.warnings.items():
            found.add(kind, entry["first"], entry["count"])
    return ShardCounts(counter, found.counts)


def finalize_counts(counts: ShardCounts, plan: HashStatsPlan) -> HashStatsReport:
    """Runs on the worker holding the merged counts: every figure, as the single pass finalizes
    (``plan.threads`` threads); the report's ``seconds`` is the client's to set."""
    found = CorpusWarnings(counts.warnings)
    if plan.estimate:
        from .sketch import sketch_report

        return sketch_report(plan, counts.counter, found, "", plan.bytes_total, time.perf_counter())
    return build_report(plan, counts.counter, found, "", plan.bytes_total, time.perf_counter())


def _summary(part: ShardCounts) -> tuple[int, int]:
    return part.counter.tokens, part.counter.documents


def _files_missing(paths: list[str]) -> list[str]:
    """Runs on a worker: the corpus files this worker cannot see."""
    return [p for p in paths if not os.path.exists(p)]


def worker_memory(plan: HashStatsPlan, shards: list[CorpusFile]) -> int:
    """Bytes a worker may need: the largest of one shard task, the last merge, finalization.

    A shard task holds its counter (bounded by its tokens; growing needs half the largest map
    again) and a batch of ids; the last merge holds the count maps of every token twice (inputs
    and output); finalization holds the merged maps and the arrays of the single-process bound
    (``plan.memory_estimate``: per-n-gram tuples, per-row loads of the largest table of the
    layout and of ``--sweep``). Bounds assume every position is a new n-gram, as
    ``plan_hash_stats`` does.
    """
    layout = plan.layout

    def maps(tokens: int) -> tuple[int, int]:
        return count_maps_memory(
            tokens=tokens,
            max_ngram=layout.max_ngram,
            canonical_vocab_size=layout.vocab_size,
        )

    task_tokens = max(estimate_tokens([s], plan.options) for s in shards)
    task_maps, task_largest = maps(task_tokens)
    batch = plan.options.batch_tokens * (8 + 8 + 4 + 1) * 2  # ids, offsets, ext, flags; prefetch
    total_maps, total_largest = maps(plan.tokens_estimate)
    merge = 2 * total_maps + total_largest // 2
    return max(task_maps + task_largest // 2 + batch, merge, plan.memory_estimate)


def check_hash_stats_memory(client, plan: HashStatsPlan, shards: list[CorpusFile]) -> int:
    """Refuse workers whose memory limit is below :func:`worker_memory`; returns the need."""
    if plan.estimate:  # sketches: the registers and a batch, whatever the corpus size
        needed = plan.memory_estimate * 2
    elif plan.partitions is not None:
        from .partition_dask import partitioned_worker_memory

        needed = partitioned_worker_memory(plan, shards)
    else:
        needed = worker_memory(plan, shards)
    check_worker_memory(
        client,
        needed,
        what=f"hash-stats of about {plan.tokens_estimate:,} tokens",
        advice="give the workers more memory (dask worker --memory-limit), lower --max-ngram, "
        "or count fewer files per run",
    )
    return needed


def run_hash_stats_dask(
    plan: HashStatsPlan,
    *,
    vocab,
    tokenizer=None,
    scheduler: str | None = None,
    client=None,
    progress: Callable[[int, int, int, int], None] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> HashStatsReport:
    """The report of :func:`engramctl.stats.run.run_hash_stats`, counted on Dask workers.

    Parameters
    ----------
    plan : from :func:`engramctl.stats.run.plan_hash_stats` (without ``limit_tokens``).
    vocab, tokenizer : as for ``run_hash_stats``; sent to the workers once.
    scheduler : ``local:N`` or a scheduler address (:func:`engramctl.cluster.open_client`).
    client : an open ``distributed.Client`` to use instead of ``scheduler``.
    progress : called as shard tasks finish with ``(bytes done, bytes total, documents, tokens)``.
    shard_bytes : about how many bytes of a file one task reads.
    """
    if plan.limit_tokens is not None:
        raise UsageError("--limit-tokens counts the first tokens in order; drop --scheduler")
    if plan.extrapolate is not None:
        raise UsageError(
            "--extrapolate fits how distinct n-grams grow as the corpus is read in order; "
            "drop --scheduler"
        )
    if plan.needs_tokenizer and tokenizer is None:
        raise UsageError("text input needs a tokenizer; pass --tokenizer")
    if client is None:
        if not scheduler:
            raise EngramError("run_hash_stats_dask needs a scheduler or a client")
        with open_client(scheduler) as opened:
            return run_hash_stats_dask(
                plan,
                vocab=vocab,
                tokenizer=tokenizer,
                client=opened,
                progress=progress,
                shard_bytes=shard_bytes,
            )
    started = time.perf_counter()
    files = [replace(f, path=f.path.resolve()) for f in plan.files]  # workers may run elsewhere
    shards = split_files(files, plan.options, shard_bytes)
    check_hash_stats_memory(client, plan, shards)
    check_workers_see(
        client,
        _files_missing,
        [str(f.path) for f in files],
        what="the corpus files",
        advice="the corpus must be on a file system every worker mounts at the same path",
    )
    task_plan = replace(plan, files=[], threads=1, limit_tokens=None, max_memory=2**62)
    report = _run_tasks(client, shards, ShardSetup(vocab, tokenizer, task_plan), progress, plan)
    return replace(report, seconds=time.perf_counter() - started)


def _run_tasks(client, shards, setup: ShardSetup, progress, plan: HashStatsPlan) -> HashStatsReport:
    from distributed import as_completed

    run = uuid.uuid4().hex[:12]  # fresh task keys: never reuse a result of an earlier run
    with warnings.catch_warnings():  # the vocab and tokenizer are a few MiB, sent once
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        setup_future = submit_shared(client, setup, key=f"engramctl-stats-setup-{run}")
    futures = [
        client.submit(count_shard, shard, setup_future, key=f"engramctl-stats-{run}-{i}")
        for i, shard in enumerate(shards)
    ]
    summaries = {
        client.submit(_summary, future, key=f"engramctl-stats-sum-{run}-{i}"): shards[i].size
        for i, future in enumerate(futures)
    }
    if plan.partitions is not None:  # shuffled into key-space partitions, finalized in two looks
        from .partition_dask import finish_report, partitioned_tasks

        figures, totals, held = partitioned_tasks(client, futures, plan, run, merge_counts)
        root = None
    else:
        merged = tree_reduce(client, futures, merge_counts, fanin=MERGE_FANIN)
        # finalized where the merged counts are: only the small report travels to the client
        root = client.submit(finalize_counts, merged, plan, key=f"engramctl-stats-report-{run}")
        held = [root, merged]
    started = time.perf_counter()
    done = documents = tokens = 0
    try:
        if progress:
            progress(0, plan.bytes_total, 0, 0)
        for future in as_completed(list(summaries), loop=client.loop):
            shard_tokens, shard_documents = future.result()
            done += summaries[future]
            tokens += shard_tokens
            documents += shard_documents
            if progress:
                progress(done, plan.bytes_total, documents, tokens)
        if root is None:
            return finish_report(plan, figures, totals, started)
        return root.result()
    except BaseException as exc:  # an error in a task, Ctrl-C: stop the rest
        client.cancel([*held, *futures, *summaries])
        if type(exc).__name__ == "KilledWorker":
            raise EngramError(
                f"dask workers kept dying while counting ({exc}); check their memory and logs"
            ) from None
        raise


__all__ = [
    "run_hash_stats_dask",
    "count_shard",
    "merge_counts",
    "worker_memory",
    "check_hash_stats_memory",
    "ShardCounts",
]
