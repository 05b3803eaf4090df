"""Two cliffs of the build's row table found in review, each against its fix in the same run.

- **A row range's rows in whole columns** (a Dask row bucket's accumulator before the fix):
  uniform rows of a fraction (a 4th, a 32nd) of one column of 10**9 rows, ``--rows`` of them in
  batches of 2**17, into a table whose segment is the whole column (``whole``, the old path)
  and into one cut to the range (``cut``, ``PairAccumulator(lo=, hi=)`` now). A ``whole`` case
  past ``--limit`` seconds is stopped and reported as such.
- **The crowd probe limit**: ``--hashed`` uniform rows (hashes) into one segment in batches of
  2**20, with the old fixed limit of 256 records (``fixed-256``) and the limit growing with
  the segment (``64 ln homes``, now): homes, load factor, table bytes.

Each case runs in a fresh subprocess (its peak RSS is its own), best of ``--repeats`` (the
stopped ones once). K = 4 for the ranges, 1 for the hashed rows.

Usage: ``python benchmarks/bench_row_table_cliffs.py [--rows 1000000] [--hashed 24000000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import peak_rss_mib, run_json_case

SPAN = 10**9


def case_range(fraction: int, rows: int, cut: bool) -> dict:
    import numpy as np

    from engramctl.counts.rowtable import RowTable

    hi = SPAN // fraction
    rng = np.random.default_rng(0)
    kw = {"lo": 0, "hi": hi} if cut else {}
    table = RowTable(4, np.zeros(1, np.int64), SPAN, max_bytes=1 << 40, **kw)
    table.add(rng.integers(0, hi, 1000), np.zeros(1000, np.int64))  # compile outside the clock
    started = time.perf_counter()
    for _ in range(0, rows, 1 << 17):
        table.add(rng.integers(0, hi, 1 << 17), rng.integers(0, 50, 1 << 17))
    table.extract()
    return {"seconds": time.perf_counter() - started, "rows": table.occupied,
            "table_mib": table.nbytes / 2**20, "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def case_hashed(rows: int, fixed: bool) -> dict:
    import numpy as np

    from engramctl.counts import rowtable

    if fixed:  # the limit before the fix
        rowtable.max_probe = lambda homes: rowtable.MAX_PROBE
    rng = np.random.default_rng(1)
    table = rowtable.RowTable(1, np.zeros(1, np.int64), 2**40)
    table.add(rng.integers(0, 2**40, 1000), np.zeros(1000, np.int64))
    started = time.perf_counter()
    for _ in range(0, rows, 1 << 20):
        table.add(rng.integers(0, 2**40, 1 << 20), np.zeros(1 << 20, np.int64))
    return {"seconds": time.perf_counter() - started, "rows": table.occupied,
            "homes": table.capacity(0), "table_mib": table.nbytes / 2**20,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def _run(script: str, limit: float, *args: str) -> dict | None:
    try:
        return run_json_case_limited(script, limit, *args)
    except subprocess.TimeoutExpired:
        return None


def run_json_case_limited(script: str, limit: float, *args: str) -> dict:
    if not limit:
        return run_json_case(script, *args)
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True,
                         text=True, timeout=limit).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hashed", type=int, default=24_000_000)
    parser.add_argument("--limit", type=float, default=120.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        if args.case in ("cut", "whole"):
            result = case_range(args.fraction, args.rows, args.case == "cut")
        else:
            result = case_hashed(args.hashed, args.case == "fixed-256")
        print(json.dumps(result))
        return
    script = str(Path(__file__).resolve())
    print(f"rows of a fraction of a 10**9-row column, {args.rows:,} pairs, K=4; best of "
          f"{args.repeats}")  # fmt: skip
    for fraction in (4, 32):
        best = {}
        for case in ("cut", "whole"):
            runs = []
            for _ in range(args.repeats):
                got = _run(script, args.limit if case == "whole" else 0, "--case", case,
                           "--fraction", str(fraction), "--rows", str(args.rows))  # fmt: skip
                runs.append(got)
                if got is None:
                    break
            best[case] = None if None in runs else min(runs, key=lambda r: r["seconds"])
        cut = best["cut"]
        for case, r in best.items():
            if r is None:
                print(f"  1/{fraction:<3} {case:5}: stopped past {args.limit:.0f} s")
                continue
            ratio = r["seconds"] / cut["seconds"]
            print(f"  1/{fraction:<3} {case:5}: {r['seconds']:7.2f} s ({ratio:6.1f}x cut), "
                  f"{r['rows']:,} rows, table {r['table_mib']:.0f} MiB, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB")  # fmt: skip
    print(f"hashed rows into one segment, {args.hashed:,} pairs, K=1; best of {args.repeats}")
    for case in ("limit-64-ln", "fixed-256"):
        runs = [run_json_case(script, "--case", case, "--hashed", str(args.hashed))
                for _ in range(args.repeats)]  # fmt: skip
        r = min(runs, key=lambda r: r["seconds"])
        print(f"  {case:11}: {r['seconds']:6.2f} s, {r['rows']:,} rows in {r['homes']:,} homes "
              f"(load {r['rows'] / r['homes']:.2f}), table {r['table_mib']:.0f} MiB, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
