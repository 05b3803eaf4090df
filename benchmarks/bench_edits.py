"""Commits on a full-size linked DeepSeek-V4.1 table: write throughput, disk per row, peak RSS,
the checkpoint untouched, and gather through commits against the same table without them.

Builds a *sparse* V4.1 checkpoint (layers 1 and 14: 384,006,168 and 384,016,682 fp8 rows of
264 bytes, ~203 GB apparent, a few MB on disk), links two tables to it (``import --link``), then
in fresh processes (each its own peak RSS):

- write: 1,000,000 random rows (float32 values encoded to fp8, half per layer) as 10 commits of
  100,000 rows into one table: rows/s, segment bytes on disk per row written (target <= 3 x 264
  B), peak RSS (target < 1 GiB), the shards' sizes and mtimes and the SHA-256 of the byte ranges
  of the rows written (read from the base, under the commits) unchanged;
- gather: 1,000,000 ids per layer, half of them rows the commits hold, page-cached (a warm-up
  read first; best of 5): rows/s through 10 commits, after ``compact`` (one segment per layer),
  and of the other linked table without commits (the baseline; target >= 0.8x).

Row ids are drawn from the first 4M rows of each layer, so the base rows a gather reads stay in
the page cache (the 203 GB checkpoint does not fit this machine's RAM, and a fault on a mapped
hole brings in 64 KB around it); where the ids fall does not change the write path, which never
reads the base. Peak RSS counts the mapped shard pages a gather touched (file-backed, shared
with the page cache), so the write case hashes the base in processes of its own.

For contrast, ``Table.write_rows`` before commits rewrote whole chunks: 31 rows/s and 528 KB of
disk writes per 264-byte row on a lazy 20M-row fp8 table (issue 21), and could not write a
linked table at all.

    python benchmarks/bench_edits.py [--dir DIR] [--keep] [--rows N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

COMMITS = 10
WINDOW = 4_000_000  # ids come from the first WINDOW rows of each layer (see the docstring)
REPEATS = 5
RSS_LIMIT_MIB = 1024


def v41_config() -> dict:
    from engramctl.model_config import PUBLISHED_CONFIGS

    return {"text_config": PUBLISHED_CONFIGS["deepseek-v4.1"]}


def build(work: Path) -> dict:
    from engramctl.model_config import read_model_config
    from engramctl.table.formats.checkpoint_import import import_checkpoint
    from engramctl.vocab import CanonicalVocab
    from tests.table.ckpt_util import random_fp8_rows, write_sparse_checkpoint

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    (work / "config.json").write_text(json.dumps(v41_config()))
    layout = read_model_config(work / "config.json").layout(vocab_size=vocab.canonical_vocab_size)
    rng = np.random.default_rng(0)
    rows_of = {layer: layout.layer_rows(layer) for layer in layout.layers}
    written = {}
    for layer, n in rows_of.items():
        ids = np.unique(rng.integers(0, n, size=300))
        written[layer] = (ids, random_fp8_rows(rng, ids.size, 256))
    write_sparse_checkpoint(work / "ckpt", v41_config(), rows_of, written)
    for name in ("edited.zarr", "plain.zarr"):
        import_checkpoint(work / "ckpt", work / name, vocab=vocab, link=True)
    files = list((work / "ckpt").iterdir())
    return {
        "apparent_gb": round(sum(f.stat().st_size for f in files) / 1e9, 1),
        "disk_mb": round(sum(f.stat().st_blocks * 512 for f in files) / 1e6, 1),
        "rows": {str(k): v for k, v in rows_of.items()},
    }


def shard_state(work: Path) -> dict:
    return {
        f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in sorted((work / "ckpt").iterdir())
    }


def base_digest(table, ids_of: dict) -> str:
    """SHA-256 of the base's bytes at the rows written (read under the commits)."""
    digest = hashlib.sha256()
    for layer, ids in sorted(ids_of.items()):
        out = np.empty((ids.size, table.row_width), dtype=table.meta.storage_dtype)
        digest.update(table.source.gather(layer, ids, out).tobytes())
    return digest.hexdigest()


def written_ids(rows: dict, total: int) -> dict:
    rng = np.random.default_rng(1)
    per_layer = total // len(rows)
    return {
        int(k): np.sort(rng.choice(min(n, WINDOW), size=per_layer, replace=False))
        for k, n in rows.items()
    }


def case_write(work: Path, total: int) -> dict:
    from _common import peak_rss_mib

    from engramctl.table.sources.table import open_table

    info = json.loads((work / "build.json").read_text())
    ids_of = written_ids(info["rows"], total)
    rng = np.random.default_rng(2)
    parts = {layer: np.array_split(rng.permutation(ids), COMMITS) for layer, ids in ids_of.items()}
    seconds = 0.0
    with open_table(work / "edited.zarr", mode="r+") as table:
        for c in range(COMMITS):
            values = {  # the input, made outside the timing
                layer: rng.standard_normal((p[c].size, 256), dtype=np.float32) * 0.02
                for layer, p in parts.items()
            }
            started = time.perf_counter()
            with table.edit(f"bench {c}") as block:
                for layer, p in parts.items():
                    block.write_rows(layer, p[c], values[layer])
            seconds += time.perf_counter() - started
            del values
        segments = sum(f.stat().st_size for f in (work / "edited.zarr/edits").rglob("*"))
    rows = sum(ids.size for ids in ids_of.values())
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "disk_bytes_per_row": round(segments / rows, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def case_digest(work: Path, total: int) -> dict:
    """The shards' sizes and mtimes, and the SHA-256 of the base's bytes at the rows written."""
    from engramctl.table.sources.table import open_table

    info = json.loads((work / "build.json").read_text())
    with open_table(work / "edited.zarr") as table:
        digest = base_digest(table, written_ids(info["rows"], total))
    return {"files": shard_state(work), "sha256": digest}


def timed_gather(table, ids_of: dict) -> float:
    outs = {
        layer: np.empty((ids.size, table.row_width), dtype=table.meta.storage_dtype)
        for layer, ids in ids_of.items()
    }
    best = float("inf")
    for _ in range(REPEATS + 1):  # the first is the warm-up (page cache, index, maps)
        started = time.perf_counter()
        for layer, ids in ids_of.items():
            table.gather(layer, ids, out=outs[layer])
        best = min(best, time.perf_counter() - started)
    return best


def case_gather(work: Path, total: int, name: str) -> dict:
    from _common import peak_rss_mib

    from engramctl.table.sources.table import open_table

    info = json.loads((work / "build.json").read_text())
    written = written_ids(info["rows"], total)
    rng = np.random.default_rng(3)
    ids_of = {}
    for layer, ids in written.items():
        n = min(int(info["rows"][str(layer)]), WINDOW)
        half = rng.choice(ids, size=ids.size // 2, replace=False)
        other = rng.integers(0, n, size=ids.size - half.size)
        ids_of[layer] = rng.permutation(np.concatenate([half, other]))
    with open_table(work / name) as table:
        seconds = timed_gather(table, ids_of)
        commits = len(table.commits)
    rows = sum(ids.size for ids in ids_of.values())
    return {
        "table": name,
        "commits": commits,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows written (all layers)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # one case in this (fresh) process
        work = args.dir
        if args.case == "write":
            doc = case_write(work, args.rows)
        elif args.case == "digest":
            doc = case_digest(work, args.rows)
        elif args.case == "compact":
            from engramctl.table.commits import compact_table

            doc = compact_table(work / "edited.zarr").to_dict()
        else:
            doc = case_gather(work, args.rows, args.case)
        print(json.dumps(doc))
        return 0
    from _common import run_json_case

    from tests.table.ckpt_util import sparse_files_supported

    work = args.dir or Path(tempfile.mkdtemp(prefix="engram-bench-edits-"))
    work.mkdir(parents=True, exist_ok=True)
    if not sparse_files_supported(work):
        print(f"skipped: {work} keeps no sparse files (the checkpoint would take 203 GB)")
        return 0
    try:
        started = time.perf_counter()
        built = build(work)
        (work / "build.json").write_text(json.dumps(built))
        took = time.perf_counter() - started
        print(
            f"sparse V4.1 checkpoint: {built['apparent_gb']} GB apparent, {built['disk_mb']} MB "
            f"on disk, rows {built['rows']}; two linked tables ({took:.1f}s)"
        )
        me, rows = str(Path(__file__).resolve()), str(args.rows)
        common = ["--dir", str(work), "--rows", rows]
        before = run_json_case(me, "--case", "digest", *common)
        write = run_json_case(me, "--case", "write", *common)
        write["checkpoint_unchanged"] = before == run_json_case(me, "--case", "digest", *common)
        print(
            f"write: {write['rows']:,} rows in {COMMITS} commits, {write['seconds']}s = "
            f"{write['rows_per_s']:,} rows/s (target >= 50,000); "
            f"{write['disk_bytes_per_row']} B on disk per row (target <= {3 * 264}); "
            f"peak RSS {write['peak_rss_mib']} MiB (target < {RSS_LIMIT_MIB}); "
            f"checkpoint unchanged: {write['checkpoint_unchanged']}"
        )
        plain = run_json_case(me, "--case", "plain.zarr", *common)
        edited = run_json_case(me, "--case", "edited.zarr", *common)
        run_json_case(me, "--case", "compact", *common)
        compacted = run_json_case(me, "--case", "edited.zarr", *common)
        for label, doc in (
            ("without commits (baseline)", plain),
            (f"through {edited['commits']} commits", edited),
            ("through 1 compacted commit", compacted),
        ):
            ratio = doc["rows_per_s"] / plain["rows_per_s"]
            print(
                f"gather {label}: {doc['rows']:,} rows (half written) best of {REPEATS} "
                f"{doc['seconds']}s = {doc['rows_per_s']:,} rows/s, {ratio:.2f}x "
                f"(target >= 0.8x); peak RSS {doc['peak_rss_mib']} MiB"
            )
        ok = write["checkpoint_unchanged"] and write["peak_rss_mib"] < RSS_LIMIT_MIB
        return 0 if ok else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
