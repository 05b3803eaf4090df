"""hash-stats on Dask: tokens/s of the single-process pass and of LocalClusters of 1 and 2 workers,
and the merge time, measured side by side in one run on the same corpus.

The corpus is a flat uint32 token stream (Zipf-distributed ids, 1,000-token documents ended by a
separator id; most 3-grams distinct, a pessimistic load for the count maps), cut into shards of
``--shard-mib``. Figures:

- ``single``: ``run_hash_stats`` (one counting thread, like one Dask worker thread);
- ``dask N``: ``run_hash_stats_dask`` on a LocalCluster of N single-threaded workers (started
  before the clock; numba's cache is warm), end to end, and its counting phase alone (until the
  last shard task finished);
- ``merge``: the tree merge of every shard's counter (``merge_counts``, fan-in 4) on one core, the
  finalization alone, and the Dask run's tail (last shard counted -> report: the merges left,
  moving counters between workers, finalizing on the worker, sending the report back).

Every report is checked identical (timing keys aside) to the single-process one.
``docs/scale-out.md`` turns the per-worker figure into workers needed for a corpus.

Usage: python benchmarks/bench_hash_stats_dask.py [--tokens 4000000] [--shard-mib 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SEP = 1


def make_corpus(path: Path, tokens: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.2, tokens), 120_000).astype(np.uint32) + 1
    ids[ids == SEP] = SEP + 1
    ids[999::1000] = SEP
    ids.tofile(path)


def figures(report) -> dict:
    data = json.loads(report.to_json())
    return {k: v for k, v in data.items() if k not in ("seconds", "tokens_per_second")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4_000_000)
    parser.add_argument("--shard-mib", type=float, default=2.0)
    parser.add_argument("--preset", default="demo-v1")
    args = parser.parse_args()

    import distributed

    from engramctl import CanonicalVocab, EngramLayout
    from engramctl.corpus.files import CorpusOptions
    from engramctl.corpus.shards import split_files
    from engramctl.stats.run import finalize, plan_hash_stats, run_hash_stats
    from engramctl.stats.run_dask import ShardSetup, count_shard, merge_counts, run_hash_stats_dask

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    layout = EngramLayout.from_preset(args.preset, vocab_size=vocab.canonical_vocab_size)
    shard_bytes = int(args.shard_mib * 2**20)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "stream.u32"
        make_corpus(corpus, args.tokens)
        options = CorpusOptions(doc_sep_id=SEP)
        plan = plan_hash_stats([corpus], layout=layout, layer_ids=layout.layers[:1],
                               options=options, threads=1)  # fmt: skip
        make_corpus(Path(scratch) / "warm.u32", 5000)
        warm = replace(plan, files=plan_hash_stats([Path(scratch) / "warm.u32"], layout=layout,
                                                   options=options).files)  # fmt: skip
        run_hash_stats(warm, vocab=vocab)  # numba cache

        started = time.perf_counter()
        single = run_hash_stats(plan, vocab=vocab)
        results = {"single process": (time.perf_counter() - started, None)}

        setup = ShardSetup(vocab, None, replace(plan, files=[], max_memory=2**62))
        shards = split_files(plan.files, plan.options, shard_bytes)
        parts = [count_shard(s, setup) for s in shards]
        started = time.perf_counter()
        while len(parts) > 1:
            parts = [merge_counts(*parts[i : i + 4]) for i in range(0, len(parts), 4)]
        merge_s = time.perf_counter() - started
        started = time.perf_counter()
        finalize(parts[0].counter, layout, plan.layer_ids, plan.sweep, threads=plan.threads)
        finalize_s = time.perf_counter() - started

        identical = True
        tails = {}
        for workers in (1, 2):
            with (
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # no connection chatter at close
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                run_hash_stats_dask(warm, vocab=vocab, client=client)  # workers' numba cache
                counted = []

                def progress(done, total, documents, tokens, counted=counted):
                    if done == total:
                        counted.append(time.perf_counter())

                started = time.perf_counter()
                report = run_hash_stats_dask(
                    plan,
                    vocab=vocab,
                    client=client,
                    progress=progress,
                    shard_bytes=shard_bytes,
                )
                ended = time.perf_counter()
                results[f"dask {workers} worker(s)"] = (ended - started, counted[0] - started)
                tails[workers] = ended - counted[0]
                identical &= figures(report) == figures(single)

    tokens = single.tokens
    print(
        f"hash-stats of {tokens:,} tokens ({args.preset}, {len(shards)} shards of "
        f"{args.shard_mib:g} MiB), {os.cpu_count()} cores"
    )
    base = tokens / results["single process"][0]
    for name, (seconds, counting) in results.items():
        line = f"  {name:<18} {seconds:6.2f} s  {tokens / seconds / 1e6:6.2f} M tok/s"
        line += f"  {tokens / seconds / base:5.2f}x single"
        if counting is not None:
            line += f"  (counting phase {tokens / counting / 1e6:.2f} M tok/s)"
        print(line)
    one, two = results["dask 1 worker(s)"][0], results["dask 2 worker(s)"][0]
    print(f"  2 workers / 1 worker: {one / two:.2f}x")
    print(f"  tree merge of {len(shards)} shard counters on one core: {merge_s:.2f} s")
    print("  dask tail (last shard counted -> report): " + ", ".join(
        f"{w} worker(s) {t:.2f} s" for w, t in tails.items()))  # fmt: skip
    print(f"  finalization alone ({plan.threads} thread): {finalize_s:.2f} s")
    print(f"  reports identical: {identical}")
    if not identical:
        raise SystemExit("the Dask reports differ from the single-process report")


if __name__ == "__main__":
    main()
