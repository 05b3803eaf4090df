"""Serving tiers: ``eval`` and ``generate`` tokens/s with the table cold vs warm vs ``--resident``,
with and without the host tier (``--host-cache``; LRU, or static: ``--host-static``) and
read-ahead (``--prefetch-depth``).

The benchmark trains a small Engram model of its own (``engramctl train``, a few steps: the
weights do not matter to speed) on a real zarr table made larger than the model needs
(``--ngram-vocab``, float32 rows of ``--dim``), plans its cache with ``cache-plan``'s library call
on the benchmark text (the device cache a little above the pager's minimum, the host tier a share
of the rows the workload touches) and prints the plan's two-tier prediction beside what ``eval``
counted. The static host tier's rows are the top rows of another text's warm-up (the sample
training corpus, ``cache-plan --host-static-out``), the same host bytes.
Every case runs in a fresh interpreter (its peak RSS is its own); a *cold* case drops
the table's pages from the page cache first (``posix_fadvise(DONTNEED)`` per file, as
``bench_cold.py``). Cases alternate within a repeat; tokens/s is the best of ``--repeats``, ratios
are against ``resident`` of the same command in the same run.

    python benchmarks/bench_serve_tiers.py [--device cpu] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCH = REPO / "sample_data" / "bench" / "lm_heldout.jsonl"
PROMPT = "def read_config(path):\n    with open(path) as handle:\n        return json.load(handle)"


def engramctl(*args) -> None:
    cmd = [sys.executable, "-m", "engramctl", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed: {done.stderr[-400:]}")


def drop_pages(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_case(args) -> dict:
    """One case in this (fresh) interpreter: the command's tokens/s, counters and peak RSS."""
    import resource

    from engramctl.model.serve.evaluate import evaluate
    from engramctl.model.serve.generate import generate
    from engramctl.model.serve.opening import ModelSpec, open_model_table
    from engramctl.rowcache.tiers import TierConfig

    tiers = TierConfig.from_options(
        cache_rows=args.cache_rows,
        host_cache=args.host_cache,
        prefetch_depth=args.prefetch_depth,
        host_static=args.host_static,
    )
    with open_model_table(Path(args.model), Path(args.table)) as opened:
        spec = ModelSpec(
            Path(args.model), opened.table, args.device, args.cache_rows, args.resident,
            tiers=None if args.resident else tiers,
        )  # fmt: skip
        # Warm-up on other text (numba's kernels load, torch's first passes), outside the timing;
        # then the pages it read are dropped too for a cold case.
        warmup = Path(args.model).parent / "warmup.jsonl"
        if args.case == "eval":
            evaluate(model=spec, benchmark=warmup, batch=args.batch)
        else:
            generate(model=spec, prompt="class Config:\n", max_tokens=4)
        if args.cold:
            drop_pages(Path(args.table))
        if args.case == "eval":
            doc = evaluate(model=spec, benchmark=BENCH, batch=args.batch).to_dict()
        else:
            doc = generate(model=spec, prompt=PROMPT, max_tokens=args.max_tokens).to_dict()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": doc["tokens_per_s"], "paging": doc["paging"], "peak_rss_mib": peak}


def case_json(model, table, command, name, opts, device, batch, max_tokens) -> dict:
    cmd = [
        sys.executable, __file__, "--case", command, "--model", model, "--table", table,
        "--device", device, "--batch", batch, "--max-tokens", max_tokens, *opts,
    ]  # fmt: skip
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"case {command} {name} failed: {done.stderr[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plan(model: Path, table: Path, batch: int, seq_len: int):
    """The workload's pager minimum and distinct rows, and a function giving the two-tier view."""
    from engramctl.cacheplan.plan import plan_workload
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    with open_table(table) as t:
        layout, dim, dtype = t.layout, t.dim, t.dtype
    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")

    def run(tiers=None, *, paths=(BENCH,), warmup=0.0, out=None):
        return plan_workload(
            paths=list(paths), vocab=vocab, layout=layout, dim=dim, dtype=dtype, batch=batch,
            seq_len=seq_len, sizes=(1,), warmup_fraction=warmup, policies=("pager",), tiers=tiers,
            host_static_out=out,
        )  # fmt: skip

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--ngram-vocab", default="200000,200000")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    # one case (the script runs itself with these)
    parser.add_argument("--case", choices=("eval", "generate"))
    parser.add_argument("--model")
    parser.add_argument("--table")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--resident", action="store_true")
    parser.add_argument("--cache-rows", type=int, default=1 << 18)
    parser.add_argument("--host-cache")
    parser.add_argument("--prefetch-depth", type=int, default=0)
    parser.add_argument("--host-static")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args)))
        return 0

    from engramctl.rowcache.tiers import TierConfig

    root = Path(tempfile.mkdtemp(prefix="bench_serve_tiers_"))
    try:
        vocab, table, model = root / "vocab.parquet", root / "engram.zarr", root / "model"
        engramctl("build-vocab", "--tokenizer", "deepseek-v4", "--out", vocab)
        held = json.loads((REPO / "sample_data/corpus/heldout.jsonl").read_text().splitlines()[-1])
        held["text"] = held["text"][:2000]
        (root / "warmup.jsonl").write_text(json.dumps(held) + "\n")
        engramctl(
            "init-table", table, "--vocab", vocab, "--ngram-vocab", args.ngram_vocab,
            "--max-ngram", 3, "--heads", args.heads, "--layers", 1, "--pad-id", 2, "--dim",
            args.dim, "--dtype", "float32", "--init", "normal", "--std", 0.02,
        )  # fmt: skip
        engramctl(
            "train", "--corpus", REPO / "sample_data/corpus/train.jsonl", "--table", table,
            "--vocab", vocab, "--out", model, "--steps", 4, "--depth", 2, "--width", 64,
            "--attn-heads", 2, "--seq-len", args.seq_len, "--batch", 4, "--device", "cpu",
        )  # fmt: skip
        planner = plan(model, table, args.batch, args.seq_len)
        layer = next(iter(planner().layers.values()))
        device_rows = int(layer.pager_min_rows * 1.25)
        host_rows = device_rows + (layer.distinct_rows - device_rows) // 2
        row_nbytes = args.dim * 4 + 64
        host_cache = str(host_rows * row_nbytes)
        tiers = TierConfig(device_rows, int(host_cache), prefetch_depth=2)
        predicted = planner(tiers).tiers["all_layers"]
        rows = root / "static.npz"  # the top rows of another text's warm-up
        planner(tiers, paths=[REPO / "sample_data/corpus/train.jsonl"], warmup=0.5, out=rows)
        static_tiers = replace(tiers, host_static=str(rows))
        predicted_static = planner(static_tiers).tiers["all_layers"]
        table_mib = sum(f.stat().st_size for f in table.rglob("*") if f.is_file()) / 2**20
        base = ["--cache-rows", device_rows]
        host = ["--host-cache", host_cache]
        static = [*host, "--host-static", rows]
        cases = {
            "eval": {
                "resident": ["--resident"],
                "warm": [*base],
                "warm+host": [*base, *host],
                "warm+static": [*base, *static],
                "cold": [*base, "--cold"],
                "cold+ahead2": [*base, "--cold", "--prefetch-depth", 2],
                "cold+host+ahead2": [*base, *host, "--cold", "--prefetch-depth", 2],
                "cold+static+ahead2": [*base, *static, "--cold", "--prefetch-depth", 2],
            },
            "generate": {
                "resident": ["--resident"],
                "warm": [*base],
                "warm+host": [*base, *host],
                "warm+static": [*base, *static],
                "cold": [*base, "--cold"],
                "cold+host": [*base, *host, "--cold"],
            },
        }
        runs = {cmd: {name: [] for name in named} for cmd, named in cases.items()}
        for _ in range(args.repeats):
            for command, named in cases.items():
                for name, opts in named.items():
                    runs[command][name].append(
                        case_json(
                            model,
                            table,
                            command,
                            name,
                            opts,
                            args.device,
                            args.batch,
                            args.max_tokens,
                        )  # fmt: skip
                    )
        result = {
            "device": args.device, "table_mib": table_mib, "dim": args.dim,
            "device_rows": device_rows, "host_rows": host_rows, "host_cache_bytes": host_cache,
            "predicted": predicted, "predicted_static": predicted_static, "commands": {},
        }  # fmt: skip
        for command, named in runs.items():
            best = {n: max(r["tokens_per_s"] for r in rs) for n, rs in named.items()}
            result["commands"][command] = {
                n: {
                    "tokens_per_s": [round(r["tokens_per_s"], 1) for r in rs],
                    "best": best[n],
                    "vs_resident": best[n] / best["resident"],
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                    "paging": rs[-1]["paging"],
                }  # fmt: skip
                for n, rs in named.items()
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"bench_serve_tiers on {result['device']}: table {table_mib:,.0f} MiB (float32 x "
        f"{args.dim}); device cache {device_rows:,} rows, host tier {host_rows:,} rows "
        f"({int(host_cache) / 2**20:,.1f} MiB); best of {args.repeats}"
    )
    for mode, p in (("LRU", predicted), ("static", result["predicted_static"])):
        print(
            f"  cache-plan predicts for eval, {mode} host tier: device "
            f"{p['device_fraction']:.1%}, host {p['host_fraction']:.1%}, storage "
            f"{p['storage_fraction']:.1%} ({p['device_hits']:,} / {p['host_hits']:,} / "
            f"{p['storage_reads']:,}); storage->host "
            f"{p['storage_to_host_bytes_per_token']:,.0f} B/token, host->device "
            f"{p['host_to_device_bytes_per_token']:,.0f} B/token"
        )
    for command, named in result["commands"].items():
        print(f"  {command}:")
        for name, r in named.items():
            paging = r["paging"] or {}
            counted = ""
            if paging.get("mode") == "paged":
                counted = (
                    f"  device {paging['cache_hits']:,} host {paging['host_hits']:,} "
                    f"storage {paging['storage_reads']:,} ahead {paging['prefetch_rows']:,}"
                )
            print(
                f"    {name:17s} {r['best']:9,.0f} tokens/s  {r['vs_resident']:5.2f}x resident  "
                f"peak RSS {r['peak_rss_mib']:,.0f} MiB{counted}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
