"""The count memory's row directory (``counts/locate.py``): today's fine directory against the
one capped in RAM, on the sample's memory in RAM and on a synthetic 200M-row memory mapped.

Target (issue 23 follow-up): lookups >= 0.8x today's speed on the sample-sized memory; the
directory's RAM bounded on the large one (64 MiB by default, whatever the size).

Variants, each built in its own fresh process for its build time, RAM and peak RSS; then all
built in one process and timed in turn (a 128 MiB buffer read between calls, so no variant
finds the caches warmed by another: each lookup starts cold, as in ``eval`` where the model's
work runs between batches), best of ``--repeats`` calls on one batch of 67,584 rows (a demo-v1
batch: 2,048 positions x 33 columns), after one untimed call each, each checked equal to
``locate_reference``:

- ``today``: main's directory before this change (6575b10, copied below): int64 entries, about
  two ids a bucket whatever the size, a binary search inside the bucket;
- ``capped``: :class:`engramctl.counts.locate.RowLocator` as shipped (64 MiB cap);
- ``capped-binary``: the same directory searched row by row by today's binary search (what the
  coarse directory's passes and interpolated guess buy; the same as ``capped`` where the
  directory is fine);
- ``capped-8MiB``, ``capped-128MiB``: the shipped lookups under another cap (the RAM-vs-reads
  trade).

Scales: (a) the memory ``build-counts`` makes of the sample's ``train.jsonl`` at demo-v1 (its
``row_ids`` read into RAM), queried with the held-out file's first 2,048 positions' rows
(``CountsModel.context_rows``: realistic) and with uniform random row ids below the top id;
(b) ``--big`` sorted ids (default 200M: 1.6 GB, ``np.memmap`` written in chunks, deleted after;
a dense 129,280-id column, then half of each id up to ~2x the count), memory-mapped, queried
with uniform random ids (half absent) and with stored ids (all hits). The big file is freshly
written, so its pages are in the page cache: the lookups are warm-cache figures.

Usage: ``python benchmarks/bench_locate.py [--rounds 2] [--repeats 20] [--big 200000000]``
(``BENCH_TMP`` chooses where the big file goes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import run_json_case

from engramctl._numba import njit, prange

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"
SENTINEL = np.iinfo(np.int64).max
BATCH = 67_584  # 2,048 positions x 33 columns (demo-v1)
VARIANTS = ("today", "capped", "capped-binary", "capped-8MiB", "capped-128MiB")
SCRATCH_BYTES = 128 << 20  # read between timed calls: 4x the L3 cache


# -- today's directory (engramctl/counts/locate.py at 6575b10), the baseline ----------------
@njit(cache=True)
def _today_directory(ids, shift, starts):
    j = 0
    n = ids.shape[0]
    for b in range(starts.shape[0]):
        bound = np.int64(b) << shift
        while j < n and ids[j] < bound:
            j += 1
        starts[b] = j


@njit(cache=True, parallel=True)
def _binary_kernel(ids, starts, shift, absent, rows, out):
    buckets = starts.shape[0] - 1
    for j in prange(rows.shape[0]):
        r = rows[j]
        out[j] = absent
        if r < 0:
            continue
        b = r >> shift
        if b >= buckets:
            continue
        lo, hi = np.int64(starts[b]), np.int64(starts[b + 1])
        end = hi
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and ids[lo] == r:
            out[j] = lo


def today_build(row_ids):
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    stored = row_ids[:-1]
    n = stored.shape[0]
    top = int(stored[-1]) + 1 if n else 1
    shift = max(0, (top // max(1, n // 2)).bit_length() - 1)
    starts = np.empty((top >> shift) + 2, dtype=np.int64)
    _today_directory(stored, np.int64(shift), starts)
    return row_ids, starts, shift


class Binary:
    """A directory searched by today's binary search."""

    def __init__(self, row_ids, starts, shift):
        self.row_ids, self.starts, self.shift = row_ids, starts, shift
        self.nbytes = int(starts.nbytes)

    def __call__(self, rows):
        out = np.empty(rows.shape[0], np.int64)
        absent = np.int64(self.row_ids.shape[0] - 1)
        _binary_kernel(self.row_ids, self.starts, np.int64(self.shift), absent, rows, out)
        return out


def build_variant(variant: str, row_ids):
    from engramctl.counts.locate import RowLocator

    if variant == "today":
        return Binary(*today_build(row_ids))
    if variant == "capped":
        return RowLocator.build(row_ids)
    if variant.endswith("MiB"):  # capped-<N>MiB
        return RowLocator.build(row_ids, max_bytes=int(variant[7:-3]) << 20)
    capped = RowLocator.build(row_ids)
    return Binary(capped.row_ids, capped.starts, capped.shift)


def rss_mib() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(line.split()[1]) / 1024
    return fields


# -- the cases, each in a fresh process -------------------------------------------------------
def load_scale(workdir: Path, scale: str):
    """The ids (in RAM at (a), mapped at (b)) and the query batches."""
    if scale == "a":
        row_ids = np.load(workdir / "small.npy")
        queries = {"held-out": np.load(workdir / "heldout_rows.npy").reshape(-1)}
    else:
        row_ids = np.load(workdir / "big.npy", mmap_mode="r")
        queries = {"stored": np.load(workdir / "big_stored.npy")}
    top = int(row_ids[-2]) + 1
    queries["random"] = np.random.default_rng(7).integers(0, top, size=BATCH, dtype=np.int64)
    return row_ids, queries


def compile_untimed(variant: str) -> None:
    warm = np.append(np.arange(0, 3000, 3, dtype=np.int64), SENTINEL)
    build_variant(variant, warm)(np.arange(10, dtype=np.int64))


def case_memory(workdir: Path, scale: str, variant: str) -> dict:
    """One variant alone: its build time, the RAM the build adds, and the peak RSS after one
    lookup of each batch."""
    compile_untimed(variant)
    row_ids, queries = load_scale(workdir, scale)
    before = rss_mib()
    started = time.perf_counter()
    locator = build_variant(variant, row_ids)
    build_s = time.perf_counter() - started
    built = rss_mib()
    for rows in queries.values():
        locator(rows)
    after = rss_mib()
    return {
        "nbytes": locator.nbytes, "ids_per_bucket": (row_ids.shape[0] - 1) / locator.starts.size,
        "build_s": build_s, "anon_build_mib": built["RssAnon"] - before["RssAnon"],
        "file_build_mib": built["RssFile"] - before["RssFile"], "anon_end_mib": after["RssAnon"],
        "file_end_mib": after["RssFile"], "peak_rss_mib": after["VmHWM"],
        "rows": int(row_ids[-2]) + 1, "stored": int(row_ids.shape[0] - 1),
    }  # fmt: skip


def case_time(workdir: Path, scale: str, repeats: int, threads: int) -> dict:
    """Every variant built in one process and timed in turn, ``repeats`` times round (so a
    change in this shared machine's load hits all alike); each batch's best, and each checked
    against :func:`~engramctl.counts.locate.locate_reference`."""
    from engramctl._numba import set_num_threads
    from engramctl.counts.locate import locate_reference

    if threads:
        set_num_threads(threads)
    row_ids, queries = load_scale(workdir, scale)
    locators = {}
    for variant in VARIANTS:
        compile_untimed(variant)
        locators[variant] = build_variant(variant, row_ids)
    best = {v: dict.fromkeys(queries, float("inf")) for v in VARIANTS}
    for rows in queries.values():  # one untimed call each (pages, caches)
        for locator in locators.values():
            locator(rows)
    scratch = np.ones(SCRATCH_BYTES // 8, np.int64)
    for _ in range(repeats):
        for name, rows in queries.items():
            for variant, locator in locators.items():
                scratch.sum()  # out of the caches: what the previous variant left there
                t = time.perf_counter()
                locator(rows)
                best[variant][name] = min(best[variant][name], time.perf_counter() - t)
    for rows in queries.values():  # held to the specification (untimed)
        want = locate_reference(row_ids, rows)
        for locator in locators.values():
            np.testing.assert_array_equal(locator(rows), want)
    return best


# -- the inputs ------------------------------------------------------------------------------
def prepare_small(workdir: Path) -> None:
    """The sample's memory (demo-v1) and a held-out batch of its rows."""
    import json as _json

    from engramctl import CanonicalVocab
    from engramctl.counts import BuildCountsJob, build_counts
    from engramctl.counts.query import CountsModel
    from engramctl.counts.store import open_counts
    from engramctl.layout import LayoutRequest, resolve_layout
    from engramctl.stats.run import load_matching_tokenizer

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    layout = resolve_layout(LayoutRequest(preset="demo-v1"), vocab=vocab, source=None,
                            pick_layers=True)  # fmt: skip
    tokenizer = load_matching_tokenizer("deepseek-v4", vocab)
    out = workdir / "c.zarr"
    job = BuildCountsJob(inputs=(str(SAMPLE / "train.jsonl"),), out=out)
    build_counts(job=job, vocab=vocab, layout=layout, tokenizer=tokenizer)
    store = open_counts(out)
    np.save(workdir / "small.npy", np.asarray(store.row_ids))
    model = CountsModel(store, vocab)
    texts = [_json.loads(line)["text"] for line in (SAMPLE / "heldout.jsonl").open()]
    ids, offsets = tokenizer.encode(texts[:200])
    rows, have = [], 0
    for d in range(offsets.shape[0] - 1):  # whole documents until the batch is full
        doc = ids[offsets[d] : offsets[d + 1]]
        if doc.size:
            rows.append(model.context_rows(doc))
            have += doc.size
        if have >= BATCH // model.columns:
            break
    batch = np.concatenate(rows)[: BATCH // model.columns]
    np.save(workdir / "heldout_rows.npy", batch)


def prepare_big(workdir: Path, count: int) -> None:
    """About ``count`` sorted ids in ``big.npy`` (written in chunks) and a batch of stored ids:
    level 1's dense column, then each id of 16M-id chunks kept with probability 1/2."""
    dense = 129_280  # level 1: every canonical id
    chunk = 1 << 24
    pieces = max(1, -(-(count - dense) // (chunk // 2)))  # ceil: at least ``count`` ids

    def kept(i):  # chunk i's ids (the same on each call)
        mask = np.random.default_rng(i).random(chunk) < 0.5
        return dense + i * chunk + np.flatnonzero(mask)

    sizes = [int((np.random.default_rng(i).random(chunk) < 0.5).sum()) for i in range(pieces)]
    total = dense + sum(sizes) + 1
    arr = np.lib.format.open_memmap(workdir / "big.npy", mode="w+", dtype=np.int64,
                                    shape=(total,))  # fmt: skip
    arr[:dense] = np.arange(dense)
    at = dense
    for i, size in enumerate(sizes):
        arr[at : at + size] = kept(i)
        at += size
    arr[at] = SENTINEL
    arr.flush()
    pos = np.sort(np.random.default_rng(2).integers(0, total - 1, size=BATCH))
    stored = np.asarray(arr[pos])
    np.random.default_rng(3).shuffle(stored)
    np.save(workdir / "big_stored.npy", stored)
    del arr


def report(memory: dict, times: dict, title: str) -> dict:
    print(title)
    names = list(times["today"])
    head = "  ".join(f"{n + ' batch':>14s}" for n in names)
    print(f"  {'variant':14s} {'directory':>10s} {'ids/bucket':>10s} {'build':>7s}  {head}"
          f"  {'anon +build':>11s} {'file +build':>11s} {'peak RSS':>9s} {'(anon':>9s}"
          f" {'file)':>9s}")  # fmt: skip
    for variant, r in memory.items():
        cells = "  ".join(f"{times[variant][n] * 1e3:11.2f} ms" for n in names)
        mib = [round(r[k]) for k in ("anon_build_mib", "file_build_mib", "peak_rss_mib",
                                     "anon_end_mib", "file_end_mib")]  # fmt: skip
        print(
            f"  {variant:14s} {r['nbytes'] / 2**20:6.1f} MiB {r['ids_per_bucket']:10.1f} "
            f"{r['build_s']:5.2f} s  {cells}  {mib[0]:7d} MiB {mib[1]:7d} MiB {mib[2]:5d} MiB "
            f"{mib[3]:5d} MiB {mib[4]:5d} MiB"
        )
    print("  (peak RSS: the variant's own process, after one lookup of each batch; then its")
    print("  anonymous and file-backed RSS: libraries, and at (b) the mapped ids' pages touched)")
    ratios = {}
    for variant in memory:
        if variant != "today":
            ratios[variant] = {n: times["today"][n] / times[variant][n] for n in names}
            cells = ", ".join(f"{n} {ratios[variant][n]:.2f}x" for n in names)
            print(f"  lookups, speed vs today: {variant}: {cells}")
    return ratios


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="numba threads (0: all)")
    parser.add_argument("--big", type=int, default=200_000_000)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--scale", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case == "prepare":  # the inputs, in a process of their own (the build's RSS)
        prepare_small(Path(args.workdir))
        if args.big:
            prepare_big(Path(args.workdir), args.big)
        result = {}
    elif args.case == "time":
        result = case_time(Path(args.workdir), args.scale, args.repeats, args.threads)
    elif args.case:
        result = case_memory(Path(args.workdir), args.scale, args.case)
    if args.case:
        print(json.dumps(result))
        return result
    script = str(Path(__file__).resolve())
    out = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = time.perf_counter()
        run_json_case(script, "--case", "prepare", "--workdir", tmp, "--big", str(args.big))
        print(f"prepared the inputs in {time.perf_counter() - t:.1f} s", flush=True)
        for scale in ("a", "b") if args.big else ("a",):
            base = ("--scale", scale, "--workdir", tmp)
            memory = {v: run_json_case(script, "--case", v, *base) for v in VARIANTS}
            times = run_json_case(script, "--case", "time", *base, "--repeats",
                                  str(args.repeats), "--threads", str(args.threads))  # fmt: skip
            r = memory["today"]
            where = "the sample's memory, in RAM" if scale == "a" else "synthetic, memory-mapped"
            title = (
                f"({scale}) {where}: {r['stored']:,} stored ids below {r['rows']:,}; batches of "
                f"{BATCH:,} rows, best of {args.repeats}, numba threads "
                f"{args.threads or 'all'}"
            )
            out[scale] = {"memory": memory, "times": times,
                          "ratios": report(memory, times, title)}  # fmt: skip
            sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
