"""cache-plan speed and memory: the deepseek-v4.1 layout over a real pre-tokenized workload.

The workload is ``sample_data/corpus/train.jsonl`` tokenized once into a flat ``.npy`` of token
ids (a pre-tokenized stream), cut as ``eval`` cuts it (windows of 512, batches of 16). Each
measurement runs in its own process so peak RSS is its own:

- ``plan``: the whole plan (read, hash, trace, lru + pager + static) with 4 sizes, and again with
  64 sizes: lookups/s and tokens/s, and the time ratio 64/4 (target < 1.2: one pass serves every
  size). Times are CPU seconds of the process (the machine may be shared; wall time is shown too);
- ``lru``: the one-pass LRU alone on the layer's trace, streamed batch by batch as the plan runs
  it (window compactions included): accesses/s on one core (target >= 5M); the in-memory kernel
  beside it;
- ``opt``: Belady per size, for scale (it is one simulation per size);
- peak RSS of the V4.1 plan against the same plan on a small layout (1/1000 of the rows): the
  plan's memory follows the rows touched, not the table;
- ``rss``: peak RSS of the whole plan (all four policies, opt's trace spilled to disk) on the
  workload and on the workload repeated 4 times (4x the accesses, the same distinct rows), and of
  the in-memory trace (``build_traces``) of both for contrast: the plan's memory follows the
  distinct rows, not the length.

    python benchmarks/bench_cache_plan.py [--tokens 400000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ_LEN, BATCH = 512, 16


def make_workload(root: Path, tokens: int) -> Path:
    """sample_data's training corpus as a flat .npy token stream (pre-tokenized)."""
    from engramctl.corpus.stream import read_corpus_stream
    from engramctl.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer("deepseek-v4")
    ids = read_corpus_stream(REPO / "sample_data/corpus/train.jsonl", tokenizer).ids[:tokens]
    path = root / "train_tokens.npy"
    np.save(path, ids.astype(np.uint32))
    np.save(root / "train_tokens_x4.npy", np.tile(ids.astype(np.uint32), 4))
    return path


def child(args) -> dict:
    """One measurement in this process; prints a JSON line."""
    from engramctl import CanonicalVocab, EngramLayout
    from engramctl.cacheplan.lru import lru_histogram
    from engramctl.cacheplan.opt import opt_hits
    from engramctl.cacheplan.plan import plan_workload
    from engramctl.cacheplan.trace import build_traces, read_workload
    from engramctl.hashing import NgramHasher
    from engramctl.tokenizer import load_tokenizer

    vocab = CanonicalVocab.load(args.vocab)
    if args.layout == "v4.1":
        layout = EngramLayout.from_preset("deepseek-v4.1", vocab_size=vocab.canonical_vocab_size)
    else:  # the same shape with 1/1000 of the rows per head
        layout = EngramLayout.from_preset(
            "deepseek-v4.1", vocab_size=vocab.canonical_vocab_size, ngram_vocab=(16000,) * 3
        )
    common = dict(paths=[args.workload], vocab=vocab, layout=layout, dim=256, dtype="fp8",
                  batch=BATCH, seq_len=SEQ_LEN, warmup_fraction=0.1)  # fmt: skip
    if args.what == "plan":
        # Warm numba's caches (compiled once per machine) outside the timing.
        plan_workload(**{**common, "sizes": [1000]}, policies=("lru", "pager"))
        out = {}
        for count in (4, 64):
            sizes = np.unique(np.geomspace(1 << 12, 1 << 25, count).astype(np.int64)).tolist()
            t0, c0 = time.perf_counter(), time.process_time()
            plan = plan_workload(**common, sizes=sizes, policies=("lru", "pager", "static"))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            lookups = plan.positions * layout.heads_per_layer * len(plan.layers)
            out[count] = {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "sizes": len(sizes),
                "largest": sizes[-1],
                "tokens_per_s": plan.positions / cpu,
                "lookups_per_s": lookups / cpu,
                "lru_seconds": sum(lp.seconds["lru"] for lp in plan.layers.values()),
                "accesses": sum(lp.accesses for lp in plan.layers.values()),
                "distinct": sum(lp.distinct_rows for lp in plan.layers.values()),
                "hit_rate_at_largest": plan.layers[1].curves["lru"][-1].hit_rate,
            }
        return {"plan": out, "positions": plan.positions, "peak_rss_mib": peak_rss_mib()}
    if args.what == "rss":
        plan = plan_workload(**common, sizes=[1 << 16, 1 << 20, 1 << 22, 1 << 24])
        return {
            "positions": plan.positions,
            "accesses": sum(lp.accesses for lp in plan.layers.values()),
            "distinct": sum(lp.distinct_rows for lp in plan.layers.values()),
            "seconds": plan.seconds,
        }
    tokenizer, _ = load_tokenizer("deepseek-v4")
    workload = read_workload([args.workload], tokenizer=tokenizer, seq_len=SEQ_LEN)
    if args.what == "rss_trace":  # the in-memory trace of both layers (before streaming)
        hasher = NgramHasher(layout, vocab)
        traces = build_traces(workload, hasher, batch=BATCH, layers=layout.layers)
        return {"accesses": sum(len(t.ids) for t in traces.values())}
    trace = build_traces(workload, NgramHasher(layout, vocab), batch=BATCH, layers=(1,))[1]
    lru_histogram(trace.ids[:1000], trace.distinct)  # compile / load
    if args.what == "lru":
        return lru_rates(trace)
    sizes = [1 << 16, 1 << 20, 1 << 22, 1 << 24]
    opt_hits(trace.ids[:1000], trace.distinct, [10])
    t0 = time.process_time()
    opt_hits(trace.ids, trace.distinct, sizes)
    return {"accesses": len(trace.ids), "sizes": len(sizes), "seconds": time.process_time() - t0}


def lru_rates(trace) -> dict:
    """CPU seconds of the LRU pass over one layer's trace: streamed (as the plan runs it) and
    in memory; best of three."""
    from engramctl.cacheplan.lru import lru_histogram
    from engramctl.cacheplan.stream import StackDistances

    batches = [trace.ids[a:b] for a, b in zip(trace.bounds[:-1], trace.bounds[1:], strict=True)]
    batches = [b.astype(np.int64) for b in batches]
    StackDistances(pager=False).add(batches[0], trace.distinct, counting=True)  # compile / load
    streamed = in_memory = float("inf")
    for _ in range(3):
        stack = StackDistances(pager=False)
        t0 = time.process_time()
        for batch in batches:
            stack.add(batch, trace.distinct, counting=True)
        streamed = min(streamed, time.process_time() - t0)
        t0 = time.process_time()
        lru_histogram(trace.ids, trace.distinct)
        in_memory = min(in_memory, time.process_time() - t0)
    assert (stack.histogram(trace.distinct) == lru_histogram(trace.ids, trace.distinct)).all()
    return {"accesses": len(trace.ids), "distinct": trace.distinct, "seconds": streamed,
            "in_memory_seconds": in_memory, "compactions": stack.compactions}  # fmt: skip


def run_child(what: str, layout: str, workload: Path, vocab: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--layout", layout,
           "--workload", str(workload), "--vocab", str(vocab)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what}/{layout} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--child", choices=("plan", "lru", "opt", "rss", "rss_trace"))
    parser.add_argument("--layout", default="v4.1")
    parser.add_argument("--workload")
    parser.add_argument("--vocab")
    args = parser.parse_args()
    if args.child:
        args.what = args.child
        result = child(args)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return 0
    from engramctl import CanonicalVocab

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vocab_path = root / "vocab.parquet"
        CanonicalVocab.from_tokenizer("deepseek-v4").save(vocab_path)
        workload = make_workload(root, args.tokens)
        plan = run_child("plan", "v4.1", workload, vocab_path)
        small = run_child("plan", "small", workload, vocab_path)
        lru = run_child("lru", "v4.1", workload, vocab_path)
        opt = run_child("opt", "v4.1", workload, vocab_path)
        x4 = workload.with_name("train_tokens_x4.npy")
        rss = {}
        for what in ("rss", "rss_trace"):
            for n, path in ((1, workload), (4, x4)):
                rss[(what, n)] = run_child(what, "v4.1", path, vocab_path)
    four, many = plan["plan"]["4"], plan["plan"]["64"]
    print(
        f"workload: sample_data train.jsonl pre-tokenized, {plan['positions']:,} positions "
        f"({SEQ_LEN}-token windows, batch {BATCH}); deepseek-v4.1 layout (2 x 384M rows), fp8"
    )
    print(
        f"trace: {four['accesses']:,} counted accesses, {four['distinct']:,} distinct rows "
        f"(2 layers); LRU hit rate at {many['largest']:,} rows, layer 1: "
        f"{100 * four['hit_rate_at_largest']:.1f}%"
    )
    for label, row in (("4 sizes", four), ("64 sizes", many)):
        print(
            f"plan, {label:>8}: {row['seconds']:6.2f} s wall, {row['cpu_seconds']:6.2f} s CPU; "
            f"{row['tokens_per_s']:,.0f} tokens/s, {row['lookups_per_s']:,.0f} lookups/s "
            f"(CPU time); lru+pager pass {row['lru_seconds']:.2f} s wall"
        )
    ratio = many["cpu_seconds"] / four["cpu_seconds"]
    verdict = "ok" if ratio < 1.2 else "MISSED"
    print(f"CPU time 64 sizes / 4 sizes: {ratio:.3f} (target < 1.2) {verdict}")
    rate = lru["accesses"] / lru["seconds"]
    verdict = "ok" if rate >= 5e6 else "MISSED"
    print(
        f"one-pass LRU, layer 1, streamed batch by batch ({lru['compactions']} window "
        f"compactions): {lru['accesses']:,} accesses in {lru['seconds']:.3f} s CPU = "
        f"{rate / 1e6:.2f}M accesses/s on one core (target >= 5M) {verdict}; in memory "
        f"{lru['accesses'] / lru['in_memory_seconds'] / 1e6:.2f}M/s"
    )
    per = opt["accesses"] * opt["sizes"] / opt["seconds"] / 1e6
    print(
        f"Belady (opt), layer 1: {opt['sizes']} sizes in {opt['seconds']:.2f} s CPU "
        f"({per:.2f}M accesses x sizes/s: one simulation per size)"
    )
    print(
        f"peak RSS of the plan: deepseek-v4.1 (384M rows/layer) {plan['peak_rss_mib']:,.0f} MiB; "
        f"the same shape with 1/1000 of the rows {small['peak_rss_mib']:,.0f} MiB "
        f"(ratio {plan['peak_rss_mib'] / small['peak_rss_mib']:.2f})"
    )
    for what, label in (("rss", "plan (streamed, all 4 policies)"),
                        ("rss_trace", "in-memory trace (before)")):  # fmt: skip
        one, big = rss[(what, 1)], rss[(what, 4)]
        print(
            f"peak RSS, {label}: workload x1 {one['peak_rss_mib']:,.0f} MiB, x4 "
            f"{big['peak_rss_mib']:,.0f} MiB (ratio {big['peak_rss_mib'] / one['peak_rss_mib']:.2f}"
            f"; {big['accesses'] / one['accesses']:.1f}x the accesses)"
        )
    one = rss[("rss", 4)]
    print(
        f"  x4 plan: {one['positions']:,} positions, {one['accesses']:,} accesses, "
        f"{one['distinct']:,} distinct rows (2 layers), {one['seconds']:.1f} s wall"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
