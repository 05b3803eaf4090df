"""init-table throughput: the local thread pool against Dask LocalClusters of 1 and 2 workers.

Writes the same table (fp8 rows by default, like DeepSeek-V4.1's) three ways to a local directory,
side by side in one run, and checks that the three tables are identical. The Dask figures exclude
the cluster start-up (a real cluster is started once); they include the scheduler round trips,
which is what chunk-parallel init on Dask costs against the local pool. Prints MB/s per way and
the ratios; ``docs/scale-out.md`` turns the per-worker figure into workers needed for a table.

Usage: python benchmarks/bench_init_dask.py [--rows 1000000] [--dim 256] [--dtype float8_e4m3fn]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from _common import layout_with_rows


def files_of(path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dtype", default="float8_e4m3fn")
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the tables.")
    args = parser.parse_args()

    import distributed

    from engramctl.table.build.create import create_table

    layout = layout_with_rows(args.rows)
    common = dict(layout=layout, vocab_fingerprint="sha256:bench", dim=args.dim, dtype=args.dtype)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        local = create_table(scratch / "local.zarr", workers=os.cpu_count(), **common)
        results["thread pool"] = (time.perf_counter() - start, local.bytes_written)
        for workers in (1, 2):
            with distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster:
                path = scratch / f"dask{workers}.zarr"
                start = time.perf_counter()
                done = create_table(path, scheduler=cluster.scheduler_address, **common)
                results[f"dask {workers} worker(s)"] = (
                    time.perf_counter() - start,
                    done.bytes_written,
                )
        reference = files_of(scratch / "local.zarr")
        identical = all(files_of(scratch / f"dask{w}.zarr") == reference for w in (1, 2))

    rows = layout.layer_rows(1)
    print(f"init-table of {rows:,} rows x {args.dim} {args.dtype}, {os.cpu_count()} cores")
    base = results["thread pool"][1] / results["thread pool"][0]
    for name, (seconds, nbytes) in results.items():
        speed = nbytes / seconds
        print(f"  {name:<18} {seconds:6.2f} s  {speed / 1e6:8.1f} MB/s  {speed / base:5.2f}x pool")
    one = results["dask 1 worker(s)"]
    two = results["dask 2 worker(s)"]
    print(f"  2 workers / 1 worker: {(two[1] / two[0]) / (one[1] / one[0]):.2f}x")
    print(f"  tables identical: {identical}")
    if not identical:
        raise SystemExit("the Dask tables differ from the thread-pool table")


if __name__ == "__main__":
    main()
