"""``hash-stats --partitions K --scheduler``: shards and key-space partitions spread over Dask.

The task graph, built with plain ``client.submit`` futures (Dask moves every intermediate result
from worker to worker itself; nothing here transports data):

1. **count** each shard (:func:`engramctl.stats.run_dask.count_shard`, as without partitions);
2. **shuffle**: each shard's counter is split into its K key-space partitions
   (:meth:`NgramCounter.split`, one task per shard), and partition j's pieces of every shard are
   merged in a tree (:func:`engramctl.cluster.tree_reduce` of
   :func:`~engramctl.stats.run_dask.merge_counts`), so partition j's exact counts end up on one
   worker, holding about 1/K of the distinct n-grams;
3. **look 1**, per target (table size, layer, order) and partition: the per-row loads of the
   target's heads (:func:`engramctl.stats.partition.partition_loads`), summed in a tree
   (:func:`~engramctl.stats.partition.add_loads`), then turned into per-head figures and
   "collided row" bitmaps (:func:`~engramctl.stats.partition.loads_figures`);
4. **look 2**, per target and partition: colliding occurrences against the bitmaps
   (:func:`~engramctl.stats.partition.partition_collisions`), and one small task per target that
   adds them up into its :class:`OrderStats`: only those travel to the client.

Every step adds integers, so the report is the single pass's, figure for figure. A killed
worker's futures are recomputed by Dask from their inputs (its partitions from the shards); no
task ever adds into one of its inputs, so a re-run counts nothing twice. Targets are finalized a
few at a time (one per worker in flight) so the per-row loads of every target never all exist at
once.
"""

from __future__ import annotations

import operator

from ..cluster import tree_reduce
from ..corpus.files import CorpusWarnings, estimate_tokens
from ..errors import EngramError
from .counter import count_maps_memory
from .partition import (
    add_loads,
    assemble,
    loads_figures,
    order_stats_of,
    partition_collisions,
    partition_loads,
    partition_memory,
    partition_share,
    targets,
)
from .passes import make_report
from .report import SweepPoint


def split_counts(counts, parts: int) -> tuple:
    """Runs on a worker: a shard's counts in ``parts`` key-space partitions (warnings, tokens and
    documents go with partition 0, so merging the partitions back gives the shard's counts)."""
    pieces = counts.counter.split(parts)
    same = type(counts)  # run_dask.ShardCounts
    return tuple(same(p, counts.warnings if j == 0 else {}) for j, p in enumerate(pieces))


def _loads(counts, target):
    grams, _ = counts.counter.entries(target.order)
    return partition_loads(target, grams)


def _collisions(counts, target, heads):
    grams, found = counts.counter.entries(target.order)
    return partition_collisions(target, grams, found, heads)


def _order_stats(target, heads, *found):
    total = found[0]
    for part in found[1:]:
        total = total + part
    return order_stats_of(target, heads, total)


def _totals(counts):
    return counts.counter.tokens, counts.counter.documents, counts.warnings


def partitioned_worker_memory(plan, shards) -> int:
    """Bytes a worker may need: a shard task and its split (the shard's maps twice), the last
    merge of a partition (its maps twice), or finalizing one target of one partition
    (:func:`engramctl.stats.partition.partition_memory`) while the summed loads of the target
    are merged (two targets' loads, one byte a row per head)."""
    layout = plan.layout

    def maps(tokens: int) -> int:
        total, largest = count_maps_memory(
            tokens=tokens, max_ngram=layout.max_ngram, canonical_vocab_size=layout.vocab_size
        )
        return total + largest // 2

    task = 2 * maps(max(estimate_tokens([s], plan.options) for s in shards))
    merge = 2 * maps(partition_share(plan.tokens_estimate, plan.partitions))
    largest_rows = max(
        max(t.head_rows) for t in targets(plan.layout, plan.layer_ids, plan.sweep)
    )  # fmt: skip
    finalize = partition_memory(
        tokens=plan.tokens_estimate,
        parts=plan.partitions,
        max_ngram=layout.max_ngram,
        canonical_vocab_size=layout.vocab_size,
        heads=layout.heads,
        largest_head_rows=largest_rows,
    )
    return max(task, merge, finalize + 2 * layout.heads * largest_rows)


def partitioned_tasks(client, shard_futures, plan, run: str, merge_counts):
    """Submit the shuffle (pieces merged with ``merge_counts``) and both looks.

    Returns ``(figures, totals, held)``: a callable that submits the looks target by target and
    waits for every target's :class:`OrderStats` (the report's layers and sweep points), the
    future of partition 0's ``(tokens, documents, warnings)``, and the futures to cancel on
    failure."""
    parts = int(plan.partitions)
    splits = [
        client.submit(split_counts, f, parts, key=f"engramctl-stats-split-{run}-{i}")
        for i, f in enumerate(shard_futures)
    ]
    merged = []
    for j in range(parts):
        pieces = [
            client.submit(operator.getitem, s, j, key=f"engramctl-stats-piece-{run}-{i}-{j}")
            for i, s in enumerate(splits)
        ]
        merged.append(tree_reduce(client, pieces, merge_counts, fanin=4))
    totals = client.submit(_totals, merged[0], key=f"engramctl-stats-totals-{run}")
    all_targets = targets(plan.layout, plan.layer_ids, plan.sweep)
    held = [*splits, *merged, totals]

    def submit(index: int, target):
        loads = [
            client.submit(_loads, m, target, key=f"engramctl-stats-loads-{run}-{index}-{j}")
            for j, m in enumerate(merged)
        ]
        summed = tree_reduce(client, loads, add_loads, fanin=4)
        heads = client.submit(loads_figures, summed, key=f"engramctl-stats-heads-{run}-{index}")
        found = [
            client.submit(
                _collisions, m, target, heads, key=f"engramctl-stats-coll-{run}-{index}-{j}"
            )
            for j, m in enumerate(merged)
        ]
        stats = client.submit(
            _order_stats, target, heads, *found, key=f"engramctl-stats-order-{run}-{index}"
        )
        held.extend([*loads, summed, heads, *found, stats])
        return stats

    def figures() -> tuple[dict, tuple]:
        window = max(1, len(client.scheduler_info().get("workers", {})))
        results, pending = {}, []
        for index, target in enumerate(all_targets):
            pending.append((target, submit(index, target)))
            if len(pending) >= window:
                target_done, future = pending.pop(0)
                results[target_done] = future.result()
        for target_done, future in pending:
            results[target_done] = future.result()
        points = assemble(results, 1 + len(plan.sweep))
        sizes = [
            plan.layout.with_ngram_vocab([s] * (plan.layout.max_ngram - 1)) for s in plan.sweep
        ]
        sweep = tuple(
            SweepPoint(tuple(lay.ngram_vocab), layers)
            for lay, layers in zip(sizes, points[1:], strict=True)
        )
        return points[0], sweep

    return figures, totals, held


def finish_report(plan, figures, totals, started: float):
    """Wait for the figures and the totals; the report (``seconds`` is the caller's to set)."""
    layers, sweep = figures()
    tokens, documents, warnings = totals.result()
    if tokens == 0:
        names = ", ".join(str(f.path) for f in plan.files[:3])
        raise EngramError(f"the corpus holds no tokens ({names}); nothing to count")
    return make_report(
        plan, layers, sweep, tokens=tokens, documents=documents,
        warnings=CorpusWarnings(warnings), stopped="", bytes_read=plan.bytes_total,
        started=started,
    )  # fmt: skip
