"""hash-stats at scale: peak memory of partitioned exact counting (K = 1, 2, 4) and the speed and
accuracy of --estimate, side by side on the same pre-tokenized input in one run.

Targets (issue 12): partitioned peak RSS about 1/K of the single pass's count maps, with reports
identical to it; ``--estimate`` at least 3x the exact pass; estimated distinct within 2% of exact.

Each case runs in a fresh subprocess so its peak RSS (``resource.getrusage``) is its own; each
first runs the same pipeline on 5,000 tokens (numba's cache, imports) and records the RSS then as
its baseline, so "above baseline" is what the counting itself took. Input: a flat uint32 stream of
Zipf ids (1,000-token documents; most 4-grams distinct, the count maps' worst case), the
deepseek-v4.1 layout's layer 1 (orders 2-4, 8 heads each) with 1M rows per head so that the
count maps, not the per-row loads, dominate.

Usage: ``python benchmarks/bench_hash_stats_scale.py [--tokens 4000000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mib, run_json_case, write_zipf_corpus

ROWS = 1_000_000
CASES = ("exact", "partitions-1", "partitions-2", "partitions-4", "estimate", "extrapolate")


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(workdir: Path, case: str) -> dict:
    from engramctl import CanonicalVocab, EngramLayout
    from engramctl.corpus.files import CorpusOptions
    from engramctl.stats.run import plan_hash_stats, run_hash_stats

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = EngramLayout.from_preset("deepseek-v4.1", vocab_size=vocab.canonical_vocab_size)
    layout = layout.with_ngram_vocab([ROWS] * (layout.max_ngram - 1))
    kw = {"estimate": case == "estimate"}
    if case.startswith("partitions-"):
        kw["partitions"] = int(case.split("-")[1])
    if case == "extrapolate":
        kw["extrapolate"] = 1e12

    def plan(limit=None):
        return plan_hash_stats(
            [str(workdir / "zipf.u32")], layout=layout, layer_ids=(1,),
            options=CorpusOptions(doc_sep_id=0), sweep=(4 * ROWS,), limit_tokens=limit,
            max_memory=2**40, spill_dir=str(workdir), **{k: v for k, v in kw.items()
                                                          if k != "extrapolate" or not limit},
        )  # fmt: skip

    run_hash_stats(plan(5000), vocab=vocab)  # warm numba's cache and the page cache
    baseline = current_rss_mib()
    started = time.perf_counter()
    report = run_hash_stats(plan(), vocab=vocab)
    total = time.perf_counter() - started
    data = json.loads(report.to_json())
    for key in ("seconds", "tokens_per_second", "memory_estimate_bytes", "files"):
        data.pop(key)
    return {
        "case": case,
        "total_s": total,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "report": data,
    }


def run_case(workdir: Path, case: str) -> dict:
    """One case in a subprocess (case ``passes``: :func:`passes_only`); its JSON result."""
    return run_json_case(__file__, "--case", case, "--workdir", str(workdir))


def passes_only(workdir: Path) -> dict:
    from engramctl import CanonicalVocab, EngramLayout
    from engramctl.corpus.files import CorpusOptions
    from engramctl.stats.run import count_corpus, plan_hash_stats
    from engramctl.stats.sketch import new_sketch

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = EngramLayout.from_preset("deepseek-v4.1", vocab_size=vocab.canonical_vocab_size)
    plan = plan_hash_stats(
        [str(workdir / "zipf.u32")], layout=layout, layer_ids=(1,),
        options=CorpusOptions(doc_sep_id=0), max_memory=2**40,
    )  # fmt: skip
    best = {"exact": float("inf"), "estimate": float("inf")}
    for _ in range(2):
        for name in best:
            counter = new_sketch(plan, vocab) if name == "estimate" else None
            started = time.perf_counter()
            counter, _, _, _ = count_corpus(plan, vocab=vocab, counter=counter)
            best[name] = min(best[name], time.perf_counter() - started)
            tokens = counter.tokens
            del counter
    return {"tokens": tokens, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4_000_000, help="tokens of the zipf stream")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        workdir = Path(args.workdir)
        result = passes_only(workdir) if args.case == "passes" else run_one(workdir, args.case)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_zipf_corpus(workdir, args.tokens)
        results = {case: run_case(workdir, case) for case in CASES}
        exact = results["exact"]
        report = exact["report"]
        distinct = [o["distinct"] for o in report["layers"]["1"]["orders"].values()]
        print(
            f"hash-stats scale-out, {report['tokens']:,} Zipf tokens, deepseek-v4.1 layer 1 "
            f"(orders 2-4, 8 heads of ~{ROWS:,} rows), --sweep {4 * ROWS:,}; distinct {distinct}"
        )
        print("  case            wall      peak RSS   above baseline   report == single pass")
        for case in CASES[:4]:
            r = results[case]
            above = r["peak_rss_mib"] - r["baseline_rss_mib"]
            same = r["report"] == exact["report"]
            print(
                f"  {case:<14} {r['total_s']:6.1f}s  {r['peak_rss_mib']:8,.0f} MiB  "
                f"{above:10,.0f} MiB     {same}"
            )
        base = results["exact"]["peak_rss_mib"] - results["exact"]["baseline_rss_mib"]
        for k in (2, 4):
            r = results[f"partitions-{k}"]
            print(
                f"  K={k}: {(r['peak_rss_mib'] - r['baseline_rss_mib']) / base:.2f}x the single "
                f"pass's memory above baseline (1/K = {1 / k:.2f})"
            )
        est = results["estimate"]
        rates = run_case(workdir, "passes")  # the counting passes alone, best of 2
        print(
            f"  estimate       {est['total_s']:6.1f}s  {est['peak_rss_mib']:8,.0f} MiB  "
            f"{est['peak_rss_mib'] - est['baseline_rss_mib']:10,.0f} MiB\n"
            f"  --estimate end to end: {exact['total_s'] / est['total_s']:.1f}x the exact run "
            f"(target >= 3x); counting pass alone (best of 2): exact {rates['exact']:.2f}s, "
            f"sketch {rates['estimate']:.2f}s = {rates['exact'] / rates['estimate']:.1f}x"
        )
        orders = report["layers"]["1"]["orders"]
        got = est["report"]["layers"]["1"]["orders"]
        for n, o in orders.items():
            e = got[n]
            col = max(
                abs(a["colliding_distinct_fraction"] - b["colliding_distinct_fraction"])
                for a, b in zip(o["heads"], e["heads"], strict=True)
            )
            occ = max(
                abs(a["colliding_occurrence_fraction"] - b["colliding_occurrence_fraction"])
                for a, b in zip(o["heads"], e["heads"], strict=True)
            )
            print(
                f"    {n}-grams: distinct {o['distinct']:,} exact, {e['distinct']:,} estimated "
                f"({100 * (e['distinct'] / o['distinct'] - 1):+.2f}%); per-head colliding distinct "
                f"fraction off by <= {100 * col:.2f} pp, colliding occurrence fraction <= "
                f"{100 * occ:.2f} pp"
            )
        section = results["extrapolate"]["report"]["extrapolation"]
        print(f"  --extrapolate 1e12 (fitted on {section['fitted_on_tokens']:,} tokens):")
        for n, entry in section["orders"].items():
            check = entry.get("check", {})
            error = 100 * check.get("relative_error", 0)
            print(
                f"    {n}-grams: k {entry['k']:.3g}, beta {entry['beta']:.3f}, predicted "
                f"{entry['distinct']:,}; fit on first {check.get('fitted_on_tokens', 0):,} tokens "
                f"predicts {check.get('predicted_distinct', 0):,} for the whole, found "
                f"{check.get('actual_distinct', 0):,} ({error:+.1f}%)"
            )


if __name__ == "__main__":
    main()
