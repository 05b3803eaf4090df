"""build-counts against hash-stats, and eval with a count memory against eval without one.

Targets (issue 23): build-counts <= 1.5x the time of ``hash-stats`` on the same corpus and
layout; eval with ``--counts`` >= 0.8x the tokens/s of eval without; peak RSS of build-counts
flat in corpus size when the row summaries spill to disk.

Cases, each in a fresh subprocess (its peak RSS is its own), after one untimed warm-up run (numba
cache, page cache); each times the pass only (the vocab, layout and tokenizer are loaded before
the clock starts, the same for both):

- ``hash-stats`` and ``build-counts`` over the sample corpus (JSON Lines text, tokenized in the
  pass) at the demo-v1 layout (both layers), best of ``--repeats``, interleaved;
- ``build-counts`` spilled (``max_memory`` 1 byte: every pair goes to a row bucket on disk, each
  bucket counted on its own) over 1x and 2x the corpus: peak RSS (VmHWM, file-backed pages
  included) and anonymous RSS at the end;
- ``eval`` of a tiny trained model (2 blocks, width 64, a 20k-row table) on the held-out file
  with and without ``--counts``, best of ``--repeats``.

Usage: ``python benchmarks/bench_counts.py [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mib, run_json_case

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def layout_of(vocab, preset="demo-v1"):
    from engramctl.layout import LayoutRequest, resolve_layout

    return resolve_layout(LayoutRequest(preset=preset), vocab=vocab, source=None, pick_layers=True)


def case_hash_stats(workdir: Path, inputs: list[str]) -> dict:
    from engramctl import CanonicalVocab
    from engramctl.stats import run as hash_stats

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = layout_of(vocab)
    tokenizer = hash_stats.load_matching_tokenizer("deepseek-v4", vocab)
    plan = hash_stats.plan_hash_stats(inputs, layout=layout.layout, layer_ids=layout.layer_ids)
    started = time.perf_counter()
    report = hash_stats.run_hash_stats(plan, vocab=vocab, tokenizer=tokenizer)
    return {"seconds": time.perf_counter() - started, "tokens": report.tokens,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def case_build_counts(
    workdir: Path, inputs: list[str], max_memory: int | None = None, limit: int | None = None
) -> dict:
    from engramctl import CanonicalVocab
    from engramctl.counts import BuildCountsJob, build_counts
    from engramctl.stats.run import load_matching_tokenizer

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = layout_of(vocab)
    tokenizer = load_matching_tokenizer("deepseek-v4", vocab)  # loaded untimed, as hash-stats's
    out = workdir / f"c-{time.perf_counter_ns()}.zarr"
    job = BuildCountsJob(inputs=tuple(inputs), out=out, max_memory=max_memory, limit_tokens=limit)
    started = time.perf_counter()
    report = build_counts(job=job, vocab=vocab, layout=layout, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    anon = rss_anon_mib()
    import shutil

    from engramctl.counts.store import read_metadata

    occupied = read_metadata(out)["occupied_rows"]
    shutil.rmtree(out)
    return {"seconds": seconds, "tokens": report.tokens, "bytes": report.bytes,
            "occupied_rows": occupied, "peak_rss_mib": peak_rss_mib(),
            "rss_anon_end_mib": anon}  # fmt: skip


def case_eval(workdir: Path, with_counts: bool) -> dict:
    from engramctl.model.serve.eval_run import EvalRequest, run_eval
    from engramctl.table.sources.table import open_table

    request = EvalRequest(
        model=workdir / "m", benchmark=SAMPLE / "heldout.jsonl", table=workdir / "t.zarr",
        device="cpu", batch=16, cache_rows=1 << 20, resident=True, explain=None,
        lm_eval_tasks=None, limit=None, tokenizer=None, report=None, overwrite=False,
        strict_table=False, counts=workdir / "tc.zarr" if with_counts else None,
    )  # fmt: skip
    started = time.perf_counter()
    doc = run_eval(request, open_table=lambda path, mode="r", vocab=None: open_table(path)).doc
    return {"seconds": time.perf_counter() - started, "tokens_per_s": doc["tokens_per_s"],
            "metrics": doc["metrics"], "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "engramctl", *map(str, args)], check=True,
                   capture_output=True, cwd=REPO)  # fmt: skip


def prepare(workdir: Path) -> None:
    from engramctl import CanonicalVocab

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    vocab.save(workdir / "vocab.parquet")
    twice = workdir / "twice"
    twice.mkdir()
    for copy in (0, 1):
        (twice / f"train{copy}.jsonl").write_bytes((SAMPLE / "train.jsonl").read_bytes())
    layout = ["--ngram-vocab", "10007,10007", "--max-ngram", "3", "--heads", "2", "--layers", "1"]
    cli("init-table", workdir / "t.zarr", "--vocab", workdir / "vocab.parquet",
        "--dim", 16, *layout)  # fmt: skip
    cli("train", "--corpus", SAMPLE / "train.jsonl", "--heldout", SAMPLE / "heldout.jsonl",
        "--out", workdir / "m", "--table", workdir / "t.zarr", "--vocab", workdir / "vocab.parquet",
        "--steps", 20, "--depth", 2, "--width", 64, "--attn-heads", 2, "--seq-len", 128,
        "--batch", 8, "--device", "cpu")  # fmt: skip
    cli("build-counts", SAMPLE / "train.jsonl", "--vocab", workdir / "vocab.parquet", "--like",
        workdir / "t.zarr", "--out", workdir / "tc.zarr")  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--max-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # one case in this fresh process: print its JSON
        workdir = Path(args.workdir)
        if args.case == "hash-stats":
            result = case_hash_stats(workdir, args.inputs)
        elif args.case == "build-counts":
            result = case_build_counts(workdir, args.inputs, args.max_memory, args.limit_tokens)
        else:
            result = case_eval(workdir, args.case == "eval-counts")
        print(json.dumps(result))
        return result
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir)
        once = [str(SAMPLE / "train.jsonl")]
        base = ("--workdir", str(workdir))
        for case in ("hash-stats", "build-counts"):  # warm-up: numba cache, page cache
            run_json_case(script, "--case", case, *base, *once)
        times = {"hash-stats": [], "build-counts": [], "fixed": []}
        for _ in range(args.repeats):
            for case in times:
                if case == "fixed":  # the same build over 20,000 tokens: what the corpus
                    # does not pay for (start-up, vocab, layout)
                    extra = ("--case", "build-counts", "--limit-tokens", "20000")
                else:
                    extra = ("--case", case)
                times[case].append(run_json_case(script, *extra, *base, *once))
        best = {case: min(runs, key=lambda r: r["seconds"]) for case, runs in times.items()}
        ratio = best["build-counts"]["seconds"] / best["hash-stats"]["seconds"]
        print(
            f"corpus: sample train.jsonl, {best['hash-stats']['tokens']:,} tokens (text, "
            f"tokenized in the pass), demo-v1 layout, both layers; best of {args.repeats}"
        )
        fixed = best.pop("fixed")
        for case, r in best.items():
            print(f"  {case:13s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB")
        print(f"  build-counts / hash-stats: {ratio:.2f}x (target <= 1.5x)")
        r = best["build-counts"]
        print(
            f"  memory {r['bytes'] / 2**20:,.0f} MiB: {r['bytes'] / r['tokens']:,.1f} B per corpus "
            f"token, {r['occupied_rows']:,} occupied rows, "
            f"{r['bytes'] / r['occupied_rows']:,.1f} B per occupied row"
        )
        per_corpus = best["build-counts"]["seconds"] - fixed["seconds"]
        print(
            f"  of it, the same build over {fixed['tokens']:,} tokens: {fixed['seconds']:.2f} s "
            f"(start-up; its memory {fixed['bytes'] / 2**20:,.1f} MiB); the rest, "
            f"{per_corpus:.2f} s, is {per_corpus / best['hash-stats']['seconds']:.2f}x hash-stats"
        )
        mapped = {}
        for name, inputs in (("1x", once), ("2x", [str(workdir / "twice")])):
            mapped[name] = run_json_case(script, "--case", "build-counts", *base,
                                         "--max-memory", "1", *inputs)  # fmt: skip
            r = mapped[name]
            print(
                f"  build-counts spilled, {name} corpus ({r['tokens']:,} tokens): "
                f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB (file pages "
                f"included), anonymous RSS at the end {r['rss_anon_end_mib']:.0f} MiB, memory "
                f"{r['bytes'] / 2**20:.0f} MiB on disk"
            )
        evals = {"eval": [], "eval-counts": []}
        for _ in range(args.repeats):
            for case in evals:
                evals[case].append(run_json_case(script, "--case", case, *base))
        fast = {case: max(runs, key=lambda r: r["tokens_per_s"]) for case, runs in evals.items()}
        eval_ratio = fast["eval-counts"]["tokens_per_s"] / fast["eval"]["tokens_per_s"]
        metrics = fast["eval-counts"]["metrics"]
        print(
            f"eval of a tiny model (2 blocks, width 64, 20 steps) on heldout.jsonl, best of "
            f"{args.repeats}:"
        )
        for case, r in fast.items():
            print(
                f"  {case:11s} {r['tokens_per_s']:9,.0f} tokens/s  peak RSS "
                f"{r['peak_rss_mib']:6.0f} MiB"
            )
        print(
            f"  with / without counts: {eval_ratio:.2f}x (target >= 0.8x); losses: model "
            f"{metrics['model_loss']:.3f}, counts {metrics['counts_loss']:.3f}, mixed "
            f"{metrics['mixed_loss']:.3f}, mean λ {metrics['mean_lambda']:.3f}"
        )
        return {"build_ratio": ratio, "eval_ratio": eval_ratio, "best": best, "mapped": mapped,
                "eval": fast}  # fmt: skip


if __name__ == "__main__":
    main()
