"""Compaction of many written rows: streaming ``compact`` against the in-RAM merge it replaced,
and ``compact --into-base``, each in a fresh process (its own peak RSS).

A lazy fp8 table of ``--table-rows`` rows (dim 256: 264-byte rows, 15,872 rows per 4 MiB chunk)
gets ``--rows`` written rows as ``--commits`` commits of random ids (they overlap), then three
copies of it are compacted:

- ``in-RAM merge`` (the baseline: what ``compact`` did before) holds every layer's merged rows
  at once and writes them with one ``write_segment``;
- ``streaming compact`` writes each layer's segment by id range, 16 MiB of rows at a time;
- ``compact --into-base`` rewrites each touched chunk once and drops the commits.

Reported: seconds, peak RSS (``ru_maxrss``, which also counts the segment and chunk pages the
process mapped and touched: file-backed, shared with the page cache) and the rows' bytes for
scale. The two segment merges must write byte-identical files (their CRC-32s are compared), and
the table compacted into its base must read what the commits read (a sample of rows).

    python benchmarks/bench_compact.py [--rows N] [--commits K] [--table-rows N] [--dir DIR]
"""

from __future__ import annotations

import argparse
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

from _common import layout_with_rows, peak_rss_mib, run_json_case  # noqa: E402


def build(path: Path, table_rows: int, rows: int, commits: int) -> dict:
    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table

    create_table(
        path, layout=layout_with_rows(table_rows), vocab_fingerprint="sha256:bench", dim=256,
        dtype="float8_e4m3fn", init="normal", std=0.02, lazy=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with open_table(path, "r+") as table:
        n = table.meta.layer(1).rows
        per = rows // commits
        for _ in range(commits):
            ids = rng.integers(0, n, size=per)
            values = rng.standard_normal((per, table.dim), dtype=np.float32)
            table.write_rows(1, ids, values)
    with open_table(path) as table:
        distinct = int(np.asarray(table.overlay.written_ids(1)).size)
        return {
            "table_rows": n,
            "written": per * commits,
            "distinct": distinct,
            "row_bytes": table.row_width,
            "commit_bytes": table.edit_log.bytes,
            "seconds": time.perf_counter() - started,
        }


def case_in_ram(path: Path) -> dict:
    """The merge before streaming: every written row of the layer in RAM, one write."""
    from engramctl.table.edits.segment import write_segment
    from engramctl.table.sources.table import open_table

    started = time.perf_counter()
    with open_table(path) as table:
        ids = np.asarray(table.overlay.written_ids(1))
        rows = np.empty((ids.size, table.row_width), dtype=table.meta.storage_dtype)
        table.overlay.apply(1, ids, rows)
        record = write_segment(path.parent / "in-ram.seg", 1, ids, rows)
    return {"seconds": time.perf_counter() - started, "rss": peak_rss_mib(), "crc": record.crc32}


def case_streaming(path: Path) -> dict:
    from engramctl.table.commits import compact_table, table_history

    started = time.perf_counter()
    compact_table(path)
    seconds = time.perf_counter() - started
    (commit,) = table_history(path).commits
    return {"seconds": seconds, "rss": peak_rss_mib(), "crc": commit.layers[1].crc32}


def case_into_base(path: Path) -> dict:
    from engramctl.table.intobase import compact_into_base

    started = time.perf_counter()
    result = compact_into_base(path)
    return {
        "seconds": time.perf_counter() - started,
        "rss": peak_rss_mib(),
        "chunks": result.chunks.get(1, 0),
        "bytes_written": result.bytes_written,
    }


def sample(path: Path) -> dict:
    """A digest of 200,000 random rows as the table reads them."""
    import hashlib

    from engramctl.table.sources.table import open_table

    with open_table(path) as table:
        ids = np.random.default_rng(1).integers(0, table.meta.layer(1).rows, 200_000)
        return {"sha256": hashlib.sha256(table.gather(1, ids).tobytes()).hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--commits", type=int, default=4)
    parser.add_argument("--table-rows", type=int, default=20_000_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--case", default=None)
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    if args.case == "build":
        print(json.dumps(build(Path(args.path), args.table_rows, args.rows, args.commits)))
        return 0
    if args.case:
        cases = {"in-ram": case_in_ram, "streaming": case_streaming, "into-base": case_into_base}
        print(json.dumps((cases | {"sample": sample})[args.case](Path(args.path))))
        return 0
    me = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_compact_") as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        sizes = ["--rows", str(args.rows), "--commits", str(args.commits)]
        sizes += ["--table-rows", str(args.table_rows)]
        # every case in a child: Linux carries a parent's peak RSS into its children's ru_maxrss
        built = run_json_case(me, "--case", "build", "--path", str(work / "a" / "t.zarr"), *sizes)
        print(
            f"table: {built['table_rows']:,} fp8 rows of {built['row_bytes']} B, lazy; "
            f"{built['written']:,} rows written as {args.commits} commits "
            f"({built['distinct']:,} distinct, {built['commit_bytes'] / 2**20:,.0f} MiB of "
            f"segments) in {built['seconds']:.1f}s"
        )
        want = run_json_case(me, "--case", "sample", "--path", str(work / "a" / "t.zarr"))
        for name in ("b", "c"):
            shutil.copytree(work / "a", work / name)
        merged_mib = built["distinct"] * built["row_bytes"] / 2**20
        ref = run_json_case(me, "--case", "in-ram", "--path", str(work / "a" / "t.zarr"))
        new = run_json_case(me, "--case", "streaming", "--path", str(work / "b" / "t.zarr"))
        base = run_json_case(me, "--case", "into-base", "--path", str(work / "c" / "t.zarr"))
        print(f"merged rows: {merged_mib:,.0f} MiB")
        print(f"in-RAM merge (baseline): {ref['seconds']:.1f}s, peak RSS {ref['rss']:,.0f} MiB")
        speed = ref["seconds"] / new["seconds"]
        print(
            f"streaming compact:       {new['seconds']:.1f}s ({speed:.2f}x the baseline's "
            f"speed), peak RSS {new['rss']:,.0f} MiB "
            f"({new['rss'] / ref['rss']:.2f}x); same file: {new['crc'] == ref['crc']}"
        )
        equal = run_json_case(me, "--case", "sample", "--path", str(work / "c" / "t.zarr")) == want
        print(
            f"compact --into-base:     {base['seconds']:.1f}s, {base['chunks']:,} chunks rewritten "
            f"once ({base['bytes_written'] / 2**20:,.0f} MiB), peak RSS {base['rss']:,.0f} MiB; "
            f"reads equal: {equal}"
        )
        return 0 if new["crc"] == ref["crc"] and equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
