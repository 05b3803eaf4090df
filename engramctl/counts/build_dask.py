"""``build-counts --scheduler``: the pass on Dask workers, the memory bit for bit one process's.

The corpus is cut into shards as ``hash-stats --scheduler`` cuts it
(:func:`engramctl.corpus.shards.split_files`: at document starts, except flat token streams,
cut anywhere: a shard there starts from the context of the tokens before it). Two waves of
tasks (:mod:`.dask_tasks`), with the pairs on a file system the workers share (the output's
temporary directory):

1. **Shard tasks** (``pair_shard``) turn a shard's tokens into (context row, next token) pairs
   with the one-process code (:class:`~.buildparts.PairMaker`) and append them to one file per
   row bucket (``B`` contiguous row ranges), column by column and in order, exactly as a
   spilled one-process build appends them. A shard does not know how many pairs come before it,
   so it cannot tell which of its pairs are held out for the gate; but no pair at or past
   :data:`~.buildparts.HEAD_PAIRS` (2.6M) is, so its first HEAD_PAIRS pairs go first into each
   bucket file with their shard-local pair index beside them (4 bytes an entry).
2. **Bucket tasks** (``count_bucket``), once every shard is done and the driver knows each
   shard's pair offset: bucket ``b`` replays the shards' files in shard order (corpus order),
   sets aside the held-out entries (global index = offset + local index), and counts them last
   through :meth:`~.accumulate.PairAccumulator.finish`, the one-process code (which spills again
   on the worker if the bucket outgrows ``--max-memory``).

Every row sees its continuations in corpus order, whatever the shards and buckets, so the row
summaries are the one-process ones bit for bit (no SpaceSaving merge, which is not
order-independent). The driver concatenates the buckets' arrays in order (the store is sorted by
row id), rebuilds the held-out pairs for the gate's fit, and writes the metadata with the
one-process code (:func:`~.buildparts.memory_meta`).

A task writes under a name of its own and renames it when complete, so a task Dask re-runs
after a worker died starts clean; the driver deletes a bucket's files once it holds the
bucket's result. ``--append``: each bucket task starts from the memory's rows of its range, and
the commit is the one-process one (:func:`~.append.in_place`). Scratch disk: the spilled pairs
(12 bytes per pair and column, as a spilled one-process build) plus the store once more until
the buckets are concatenated.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._system import format_bytes, parse_memory
from ..errors import EngramError
from .accumulate import MAX_BUCKETS, SENTINEL, WRITE_ROWS, NpyAppender, Snapshot
from .dask_tasks import BucketResult, DaskSetup, ShardResult, count_bucket, pair_shard

log = logging.getLogger(__name__)
ROW_ARRAYS = ("row_ids", "tokens", "counts", "totals")
ROW_DTYPES = (np.int64, np.int32, np.uint32, np.uint64)


@dataclass
class PassTotals:
    """The shards' results added up in the driver (warnings kept per shard, merged in order)."""

    unigram: np.ndarray
    pairs: list  # per shard
    warnings: list  # per shard
    tokens: int = 0
    documents: int = 0


# ------------------------------------------------------------------------------- the driver
def missing_directory(path: str) -> list[str]:
    """Runs on a worker: ``[path]`` if this worker cannot write into directory ``path``."""
    return [] if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK) else [path]


def _files_missing(paths: list[str]) -> list[str]:
    """Runs on a worker: the corpus files this worker cannot see."""
    return [p for p in paths if not os.path.exists(p)]


def choose_buckets(partitions: int, workers: int, total_rows: int, columns: int,
                   tokens: int, top_k: int, budget: int) -> int:  # fmt: skip
    """Row buckets: ``partitions`` when given (>= 2); else enough that a bucket's summaries fit
    half the budget if every pair reached a new row (at most the layout's rows), and at least
    one per worker."""
    if partitions >= 2:
        return min(MAX_BUCKETS, partitions)
    rows = min(total_rows, max(1, tokens) * columns)
    table = rows * (16 + 8 * top_k) / 0.7 * 2  # load factor, one doubling of slack
    return int(min(MAX_BUCKETS, max(2, workers, -(-int(table) // max(1, budget // 2)))))


def build_counts_dask(*, job, vocab, layout, tokenizer=None, progress=None, client=None,
                      shard_bytes: int | None = None):  # fmt: skip
    """:func:`engramctl.counts.build_counts` on Dask workers (``job.scheduler``, or ``client``):
    the same memory, bit for bit in every array and every metadata figure but the time.

    Parameters
    ----------
    job : a :class:`~.build.BuildCountsJob` (``limit_tokens`` refused).
    vocab, layout, tokenizer, progress : as for ``build_counts``; ``progress`` is called as shard
        tasks finish.
    client : an open ``distributed.Client`` to use instead of opening ``job.scheduler``.
    shard_bytes : about how many bytes of a file one shard task reads (default 64 MiB).

    Returns
    -------
    BuildCountsReport
    """
    from ..cluster import open_client

    job.check()
    if client is None:
        with open_client(job.scheduler) as opened:
            return build_counts_dask(job=job, vocab=vocab, layout=layout, tokenizer=tokenizer,
                                     progress=progress, client=opened,
                                     shard_bytes=shard_bytes)  # fmt: skip
    from .._files import atomic_directory
    from ..corpus.files import estimate_tokens
    from ..corpus.shards import DEFAULT_SHARD_BYTES, split_files
    from .buildparts import heldout_block, start_pass

    begun = start_pass(job, vocab, layout, tokenizer)
    started, lay, layer_ids = begun.started, begun.layout, begun.layer_ids
    files, tokenizer, bases, rows = begun.files, begun.tokenizer, begun.bases, begun.rows
    starts, store, suffix, top_k = begun.starts, begun.store, begun.suffix, begun.top_k
    resolved = [replace(f, path=f.path.resolve()) for f in files]  # workers may run elsewhere
    shards = split_files(resolved, job.corpus, shard_bytes or DEFAULT_SHARD_BYTES)
    budget = _task_budget(client, job, starts.shape[0])
    initial = None
    if job.append:
        from .append import in_place

        initial = {name: str(Path(job.out).resolve() / store.meta["manifest"][name]["file"])
                   for name in ROW_ARRAYS}  # fmt: skip
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    estimated = estimate_tokens(files, job.corpus)  # (+ the memory's rows, per column)
    estimated += int(store.meta["occupied_rows"]) // starts.shape[0] if store else 0
    buckets = choose_buckets(job.partitions, workers, rows, starts.shape[0], estimated,
                             top_k, budget)  # fmt: skip
    _check_sees(client, _files_missing, [str(f.path) for f in resolved], "the corpus files",
                "the corpus must be on a file system every worker mounts at the same "
                "path")  # fmt: skip
    place = in_place(Path(job.out), store.meta["manifest"]) if job.append else \
        atomic_directory(Path(job.out), label="building", replace=job.overwrite)  # fmt: skip
    with place as tmp:
        tmp = tmp.resolve()
        scratch = tmp / ".spill-dask"  # (an interrupted append's is removed as a stray)
        scratch.mkdir(parents=True)
        _check_sees(client, missing_directory, str(scratch), "the output's temporary directory",
                    "--scheduler needs --out on a file system every worker mounts at the same "
                    "path (the workers write their pairs there)")  # fmt: skip
        setup = DaskSetup(vocab, tokenizer, lay, layer_ids, bases, starts, int(rows),
                          job.corpus, buckets, top_k, budget, str(scratch), initial)  # fmt: skip
        log.info("%d shards, %d row buckets, %s of row summaries per bucket task", len(shards),
                 buckets, format_bytes(budget))  # fmt: skip
        run = uuid.uuid4().hex[:12]  # fresh task keys: never reuse a result of an earlier run
        totals, buckets = _run(client, setup, shards, files, heldout_block(files, job.corpus),
                               progress, run)  # fmt: skip
        log.info("pairs of %d shards written; counting %d row buckets on the workers",
                 len(shards), len(buckets))  # fmt: skip
        try:
            parts = _concatenate(tmp, scratch, setup, buckets, suffix)
        except BaseException as exc:
            _give_up(client, buckets, exc, run)
        return _write(job, tmp, setup, files, totals, parts, started, store, suffix)


def _task_budget(client, job, columns: int) -> int:
    """Bytes of row summaries a bucket task holds before it spills: ``--max-memory``, else a
    third of the smallest worker memory limit (25% of this machine's RAM without limits);
    refused when a worker's limit is below it plus a batch of pairs."""
    from ..cluster import check_worker_memory, worker_memory_limits

    limits = [v for v in worker_memory_limits(client).values() if v]
    budget = job.max_memory or (min(limits) // 3 if limits else parse_memory("25%"))
    batch = job.corpus.batch_tokens * (columns * 8 * 4 + 64)  # a batch's pairs, a few copies
    check_worker_memory(client, budget + batch,
                        what=f"build-counts with {format_bytes(budget)} of row summaries",
                        advice="give the workers more memory (dask worker --memory-limit) or "
                        "lower --max-memory")  # fmt: skip
    return int(budget)


def _check_sees(client, missing, arg, what: str, advice: str) -> None:
    from ..cluster import check_workers_see

    check_workers_see(client, missing, arg, what=what, advice=advice)


def _run(client, setup: DaskSetup, shards, files, block: int, progress, run: str):
    """Both waves of tasks; returns the shards' results (in order) and the buckets'."""
    from distributed import as_completed

    from ..cluster import submit_shared

    total_bytes = sum(f.size for f in files)
    with warnings.catch_warnings():  # the vocab and tokenizer are a few MiB, sent once
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        shared = submit_shared(client, setup, key=f"engramctl-counts-setup-{run}")
    futures = {client.submit(pair_shard, i, shard, shared, key=f"engramctl-counts-{run}-s{i}",
                             pure=False): i for i, shard in enumerate(shards)}  # fmt: skip
    pending = list(futures)
    totals = PassTotals(np.zeros(setup.vocab.source_vocab_size, np.uint64), [0] * len(shards),
                        [{}] * len(shards))  # fmt: skip
    try:
        done = 0
        if progress is not None:
            progress(0, total_bytes, 0, 0)
        for future in as_completed(list(futures), loop=client.loop):
            i = futures[future]
            result: ShardResult = future.result()
            future.release()
            totals.unigram += result.unigram
            totals.pairs[i], totals.warnings[i] = result.pairs, result.warnings
            totals.tokens += result.tokens
            totals.documents += result.documents
            done += shards[i].size
            if progress is not None:
                progress(done, total_bytes, totals.documents, totals.tokens)
        from .buildparts import check_counted

        check_counted(files, totals.tokens, sum(totals.pairs))
        offsets = np.concatenate([[0], np.cumsum(totals.pairs)[:-1]]).astype(np.int64).tolist()
        pending = [client.submit(count_bucket, b, shared, offsets, block, pure=False,
                                 key=f"engramctl-counts-{run}-b{b}")
                   for b in range(setup.buckets)]  # fmt: skip
        return totals, pending
    except BaseException as exc:
        _give_up(client, [shared, *pending], exc, run)


def running_tasks(prefix: str, dask_worker=None) -> list[str]:
    """Runs on a worker: the keys starting with ``prefix`` it is still executing (a cancelled
    task runs on until it returns)."""
    return [str(ts.key) for ts in dask_worker.state.executing if str(ts.key).startswith(prefix)]


def _give_up(client, futures, exc, run: str, wait_s: float = 300.0):
    """Cancel the tasks left, wait until none of this run's tasks is still running (so none
    writes into the temporary directory as it is removed), and raise ``exc`` (workers that kept
    dying: one line)."""
    client.cancel(futures)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            running = client.run(running_tasks, f"engramctl-counts-{run}-")
        except Exception:  # the cluster is gone: nothing runs there any more
            break
        if not any(running.values()):
            break
        time.sleep(0.1)
    else:
        log.warning("dask tasks of this build still run after %.0f s; their scratch files "
                    "may be left beside the output", wait_s)  # fmt: skip
    if type(exc).__name__ == "KilledWorker":
        raise EngramError(
            f"dask workers kept dying while building the count memory ({exc}); check their "
            "memory and logs (nothing was written)"
        ) from None
    raise exc


def _concatenate(tmp: Path, scratch: Path, setup: DaskSetup, buckets, suffix: str):
    """The buckets' rows appended to the store in order (each bucket's pairs and files removed
    once its result is here); returns the parts of the snapshot, the counts of counts and the
    held-out entries."""
    G, K = setup.starts.shape[0], setup.top_k
    writers = [NpyAppender(tmp / f"{name}{suffix}.npy", dtype, (K,) if name in ("tokens", "counts")
                           else ())
               for name, dtype in zip(ROW_ARRAYS, ROW_DTYPES, strict=True)]  # fmt: skip
    snap = [[] for _ in ROW_ARRAYS]
    hist = [np.zeros((G, 4), np.int64), np.zeros(G, np.int64), np.zeros((G, 4), np.int64),
            np.zeros(G, np.int64)]  # fmt: skip
    held = [[], [], []]
    full = 0  # rows with all K slots taken
    for b, future in enumerate(buckets):
        part: BucketResult = future.result()
        future.release()
        for directory in scratch.glob("s*"):  # the bucket's pairs: counted
            for name in ("rows", "targets", "index"):
                (directory / f"{name}{b}.bin").unlink(missing_ok=True)
        full += _append_bucket(scratch / f"b{b:03d}", writers)
        log.info("row bucket %d of %d counted: %d rows", b + 1, len(buckets), part.rows - 1)
        for i, array in enumerate(part.snapshot):
            snap[i].append(array)
        for total, array in zip(hist, (part.hist_before, part.occupied_before, part.hist_after,
                                       part.occupied_after), strict=True):  # fmt: skip
            total += array
        for i, array in enumerate(part.held):
            held[i].append(array)
    for writer, value in zip(writers, (SENTINEL, 0, 0, 0), strict=True):
        writer.append(np.full((1, *writer.inner), value, writer.dtype))
        writer.close()
    shutil.rmtree(scratch)
    snap = [np.concatenate([*parts, np.zeros((1, *parts[0].shape[1:]), parts[0].dtype)])
            for parts in snap]  # fmt: skip
    snap[0][-1] = SENTINEL
    before = Snapshot(*snap, hist[0], hist[1])
    rows_h, targets_h = _held_pairs(*(np.concatenate(a) for a in held), setup.starts)
    crcs = {name: w.crc for name, w in zip(ROW_ARRAYS, writers, strict=True) if w.crc}
    return before, hist[2], hist[3], writers[0].rows, rows_h, targets_h, full, crcs


def _write(job, tmp: Path, setup: DaskSetup, files, totals: PassTotals, parts, started, store,
           suffix: str):  # fmt: skip
    """The metadata (one process's code; an append's as one process writes it) and the
    report."""
    from ..corpus.files import CorpusWarnings, corpus_bytes
    from .buildparts import BuildCountsReport, corpus_summary, memory_meta
    from .store import write_metadata

    before, hist, occupied, stored, rows_h, targets_h, full, crcs = parts
    found = CorpusWarnings()
    for shard in totals.warnings:  # the first of each kind in corpus order
        for kind, entry in shard.items():
            found.add(kind, entry["first"], entry["count"])
    pairs, held = sum(totals.pairs), int(rows_h.shape[0])
    corpus = corpus_summary(files, corpus_bytes(files), totals.tokens, totals.documents, pairs,
                            held, found.counts)  # fmt: skip
    if store is not None:
        totals.unigram += np.asarray(store.unigram)
    meta = memory_meta(layout=setup.layout, layer_ids=setup.layer_ids,
                       bases=setup.bases, rows=setup.total_rows, vocab=setup.vocab,
                       tokenizer_name=job.tokenizer, top_k=setup.top_k, unigram=totals.unigram,
                       counted=(before, hist, occupied, stored), held_rows=rows_h,
                       held_targets=targets_h, corpus=corpus, started=started,
                       full=full)  # fmt: skip
    if store is not None:
        from .append import merged_corpus, remove_strays

        meta["corpus"] = merged_corpus(store.meta["corpus"], meta["corpus"])
        meta["generation"] = int(suffix[1:])
        meta["build_seconds"] += float(store.meta.get("build_seconds", 0.0))
    written = write_metadata(tmp, meta, {"unigram": totals.unigram,
                                         "canonical": setup.vocab.canonical_ids},
                             suffix, crcs=crcs)  # the commit  # fmt: skip
    if store is not None:
        remove_strays(tmp, written["manifest"])  # the replaced files
    size = sum(entry["bytes"] for entry in written["manifest"].values())
    return BuildCountsReport(
        path=str(job.out), tokens=totals.tokens, documents=totals.documents, pairs=pairs,
        heldout_pairs=held, rows=int(setup.total_rows), occupied_rows=int(stored - 1),
        top_k=setup.top_k, full_rows=meta["full_rows"], bytes=size,
        seconds=time.perf_counter() - started, discounts=meta["discounts"], gate=meta["gate"],
    )  # fmt: skip


def _append_bucket(directory: Path, writers) -> int:
    """Append a bucket's rows (not its sentinel) to the store's writers; remove its files.
    Returns the rows whose K slots are all taken (counted in the counts as they pass)."""
    full = 0
    for name, writer in zip(ROW_ARRAYS, writers, strict=True):
        path = directory / f"{name}.npy"
        array = np.load(path, mmap_mode="r")
        for lo in range(0, array.shape[0] - 1, WRITE_ROWS):
            block = np.asarray(array[lo : min(lo + WRITE_ROWS, array.shape[0] - 1)])
            writer.append(block)
            if name == "counts":
                full += int(np.count_nonzero(block[:, -1]))
        del array
    shutil.rmtree(directory)
    return full


def _held_pairs(g, rows, targets, starts) -> tuple[np.ndarray, np.ndarray]:
    """The held-out pairs ``(rows (n, G), targets (n,))`` in corpus order, from the buckets'
    entries (one per pair and column)."""
    G = starts.shape[0]
    column = np.searchsorted(starts, rows, side="right") - 1
    order = np.lexsort((column, g))
    if g.shape[0] % G or (column[order].reshape(-1, G) != np.arange(G)).any():
        raise EngramError("the held-out pairs came back incomplete from the workers; build again")
    return rows[order].reshape(-1, G), targets[order][::G].astype(np.int64)


__all__ = ["build_counts_dask", "choose_buckets"]
