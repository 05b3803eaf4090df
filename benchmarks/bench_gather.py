"""Row gather speed: engramctl's mmap gather against np.take in RAM and zarr's own reader.

Target (issue 4): on a 2M-row x 256 float16 table already in the page cache, gathering 49,152
random rows reaches >= 0.8x the throughput of ``np.take`` on a fully in-RAM copy, and >= 30x
zarr's ``get_orthogonal_selection``, measured side by side in one run. Also shows the lazy path
(rows computed from the init recipe) for reference.

Usage: python benchmarks/bench_gather.py [--rows 2000000] [--dim 256] [--n 49152] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import layout_with_rows


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n", type=int, default=49_152)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the table.")
    args = parser.parse_args()

    import zarr

    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table

    layout = layout_with_rows(args.rows)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_gather_") as tmp:
        path = Path(tmp) / "t.zarr"
        start = time.perf_counter()
        create_table(
            path,
            layout=layout,
            vocab_fingerprint="sha256:bench",
            dim=args.dim,
            dtype="float16",
            init="uniform",
            std=0.02,
        )
        init_seconds = time.perf_counter() - start
        lazy_path = Path(tmp) / "lazy.zarr"
        create_table(
            lazy_path,
            layout=layout,
            vocab_fingerprint="sha256:bench",
            dim=args.dim,
            dtype="float16",
            init="normal",
            std=0.02,
            lazy=True,
        )
        table = open_table(path)
        rows = table.info.layers[1].rows
        row_bytes = table.info.row_bytes
        logical = rows * row_bytes
        print(
            f"table: {rows:,} rows x {args.dim} float16 ({logical / 2**30:.2f} GiB), chunk "
            f"{table.info.chunk_rows} rows; full init {init_seconds:.1f}s "
            f"({logical / init_seconds / 1e9:.2f} GB/s); numba threads "
            f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}"
        )

        in_ram = table.gather(1, np.arange(rows))  # maps, checks and pages in every chunk
        rng = np.random.default_rng(0)
        id_sets = [rng.integers(0, rows, args.n) for _ in range(args.repeats)]
        out_take = np.empty((args.n, args.dim), np.float16)
        out_gather = np.empty_like(out_take)
        for ids in id_sets[:2]:  # warm up (numba compile is cached; page in)
            table.gather(1, ids, out=out_gather)
            np.take(in_ram, ids, axis=0, out=out_take)
        assert np.array_equal(out_take, out_gather)

        counter = {"take": 0, "gather": 0}

        def take():
            np.take(in_ram, id_sets[counter["take"] % args.repeats], axis=0, out=out_take)
            counter["take"] += 1

        def gather():
            table.gather(1, id_sets[counter["gather"] % args.repeats], out=out_gather)
            counter["gather"] += 1

        # interleave so that load on the machine hits both alike
        take_times, gather_times = [], []
        for _ in range(3):
            take_times.append(timed(take, args.repeats))
            gather_times.append(timed(gather, args.repeats))
        t_take, t_gather = min(take_times), min(gather_times)

        zarr_array = zarr.open_array(str(path / "layer_1"), mode="r")
        ids = id_sets[0]
        selection = zarr_array.get_orthogonal_selection((ids, slice(None)))
        assert np.array_equal(selection, table.gather(1, ids))
        t_zarr = timed(lambda: zarr_array.get_orthogonal_selection((ids, slice(None))), 2)

        lazy = open_table(lazy_path)
        lazy.gather(1, ids)
        t_lazy = timed(lambda: lazy.gather(1, id_sets[1]), 3)

        nbytes = args.n * row_bytes
        print(
            f"{args.n:,} random rows ({nbytes / 2**20:.1f} MiB) per gather, median of "
            f"{args.repeats}:"
        )
        for name, seconds in [
            ("np.take (in RAM)", t_take),
            ("engramctl gather (mmap)", t_gather),
            ("zarr get_orthogonal_selection", t_zarr),
            ("engramctl gather (lazy: init values)", t_lazy),
        ]:
            print(
                f"  {name:38s} {seconds * 1e3:9.2f} ms  {args.n / seconds / 1e6:8.2f} M rows/s"
                f"  {nbytes / seconds / 1e9:7.2f} GB/s"
            )
        vs_take = t_take / t_gather
        vs_zarr = t_zarr / t_gather
        print(
            f"gather vs np.take: {vs_take:.2f}x throughput (target >= 0.8x): "
            f"{'PASS' if vs_take >= 0.8 else 'FAIL'}"
        )
        print(
            f"gather vs zarr:    {vs_zarr:.1f}x throughput (target >= 30x): "
            f"{'PASS' if vs_zarr >= 30 else 'FAIL'}"
        )
        table.close()
        lazy.close()


if __name__ == "__main__":
    main()
