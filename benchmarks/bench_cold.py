"""Cold gather: rows of a table whose pages are not in the page cache, against fio on the same disk.

Targets (issue 22), measured side by side in one run:

- a cold uniform gather with default options (``open_table(path)``: checked) reaches >= 0.8x the
  IOPS fio gets from 4 KiB O_DIRECT random reads at queue depth 32 on the same file system
  (QD1/64/128 printed beside it); one row costs one 4 KiB read, so rows/s vs IOPS;
- a page-cached gather is >= 0.8x ``np.take`` on an in-RAM copy of the same rows.

Also printed, same run: the gather as it was before the cold reader (page faults through the
memory map, forced here by pretending every chunk is resident), ``check_chunks=False``, a table
without block checksums (whole 4 MiB chunks checked on first touch) and 64 KiB blocks. Every cold
case runs in a fresh process after the table's pages were dropped (``POSIX_FADV_DONTNEED`` on each
file), best of ``--repeats``; its peak RSS is its own.

Usage: python benchmarks/bench_cold.py [--rows 20000000] [--n 200000] [--table PATH] [--dir DIR]
[--linked PATH]
(``--table`` reuses an fp8 table, e.g. one built by an earlier run with ``--keep``; ``--linked``
adds a table linked to a checkpoint, e.g. ``engramctl export --format deepseek`` of the table,
imported with ``--link``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import layout_with_rows, peak_rss_mib, run_json_case

HERE = Path(__file__).resolve()
FIO_SECONDS = 8


def drop_pages(root: Path) -> None:
    """Evict every file of a table (and of its linked shards) from the page cache (pages mapped
    elsewhere stay)."""
    from engramctl.table.sources.linked import resolve_source
    from engramctl.table.sources.table import open_table

    files = [f for f in root.rglob("*") if f.is_file()]
    with open_table(root) as t:
        if t.meta.linked:
            files += [resolve_source(name, root) for name in t.meta.sources["files"]]
    for file in files:
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def build(path: Path, rows: int) -> float:
    from engramctl.table.build.create import create_table

    start = time.perf_counter()
    create_table(
        path,
        layout=layout_with_rows(rows),
        vocab_fingerprint="sha256:bench",
        dim=256,
        dtype="float8_e4m3fn",
        init="normal",
        std=0.02,
    )
    return time.perf_counter() - start


def set_block_sums(table: Path, kind: str) -> None:
    """``none``: no block checksums; ``4K``/``64K``: recorded at that block size."""
    from engramctl.table.core.blocksums import BLOCKS_NAME, add_block_checksums

    for file in table.glob(f"*/{BLOCKS_NAME}"):
        file.unlink()
    if kind != "none":
        add_block_checksums(table, block_bytes=kind)


# ---------------------------------------------------------------------- one case
def cold_case(table: Path, n: int, check: bool, mmap_only: bool) -> dict:
    """One cold gather of ``n`` uniform rows in this (fresh) process."""
    from engramctl.table.sources import chunked, coldgather, linkedcold
    from engramctl.table.sources.table import open_table

    if mmap_only:  # the gather before the cold reader: every chunk through its memory map,
        coldgather.resident = lambda address, length: True  # with the kernel's readahead
        linkedcold.resident = lambda address, length: True
        chunked.advise_random = linkedcold.advise_random = lambda address, length: None
    drop_pages(table)
    with open_table(table, check_chunks=check) as t:
        ids = np.random.default_rng(int(time.time_ns()) % 2**32).integers(
            0, t.meta.layer(1).rows, n
        )
        start = time.perf_counter()
        t.gather(1, ids)
        seconds = time.perf_counter() - start
        if t.meta.linked:
            counters = {"bytes_read": None, **t.source.cold_layer(1).counters}
        else:
            counters = dict(t.source.cold.counters)
    return {"rows_per_s": n / seconds, "seconds": seconds, "rss": peak_rss_mib(), **counters}


def warm_case(table: Path, n: int, repeats: int) -> dict:
    """Page-cached gather of rows among the first 2M vs np.take on an in-RAM copy of them."""
    from engramctl.table.sources.table import open_table

    with open_table(table) as t:
        span = min(2_000_000, t.meta.layer(1).rows)
        in_ram = t.rows(1, 0, span)  # reads them: now in the page cache too
        rng = np.random.default_rng(0)
        sets = [rng.integers(0, span, n) for _ in range(repeats)]
        out_take = np.empty((n, in_ram.shape[1]), np.uint8)
        out_gather = np.empty_like(out_take)
        t.gather(1, sets[0], out=out_gather)  # loads (and checks) the chunks
        np.take(in_ram, sets[0], axis=0, out=out_take)
        assert np.array_equal(out_take, out_gather)
        take, gather = [], []
        for _ in range(3):  # interleaved, so that machine load hits both alike
            for ids in sets:
                s = time.perf_counter()
                np.take(in_ram, ids, axis=0, out=out_take)
                take.append(time.perf_counter() - s)
                s = time.perf_counter()
                t.gather(1, ids, out=out_gather)
                gather.append(time.perf_counter() - s)
        counters = dict(t.source.cold.counters)
    return {
        "take": n / min(take),
        "gather": n / min(gather),
        "rss": peak_rss_mib(),
        "cold_rows": counters["cold_rows"],
    }


# -------------------------------------------------------------------------- fio
def fio_iops(file: Path, size: int, depths=(1, 32, 64, 128)) -> dict[int, float] | None:
    """4 KiB O_DIRECT random-read IOPS per queue depth (``None`` without fio)."""
    fio = shutil.which("fio")
    if fio is None:
        return None
    result = {}
    for depth in depths:
        for engine in ("io_uring", "libaio"):
            cmd = [
                fio,
                "--name=cold",
                f"--filename={file}",
                f"--size={size}",
                "--rw=randread",
                "--bs=4k",
                "--direct=1",
                f"--ioengine={engine}",
                f"--iodepth={depth}",
                f"--runtime={FIO_SECONDS}",
                "--time_based",
                "--output-format=json",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                doc = json.loads(done.stdout[done.stdout.index("{") :])
                result[depth] = doc["jobs"][0]["read"]["iops"]
                break
    return result


# ------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--table", type=Path, default=None, help="Reuse this fp8 table.")
    parser.add_argument(
        "--linked", type=Path, default=None, help="Also a table linked to a checkpoint."
    )
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the table.")
    parser.add_argument("--keep", action="store_true", help="Keep the table built here.")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--check", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--mmap-only", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case == "cold":
        print(json.dumps(cold_case(args.table, args.n, bool(args.check), bool(args.mmap_only))))
        return
    if args.case == "warm":
        print(json.dumps(warm_case(args.table, args.n, args.repeats * 4)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_cold_", dir=args.dir))
    try:
        table = args.table
        if table is None:
            table = workdir / "t.zarr"
            seconds = build(table, args.rows)
            print(f"built {table} in {seconds:.0f}s")
        size = sum(f.stat().st_size for f in table.rglob("*") if f.is_file())
        print(
            f"table: {size / 2**30:.2f} GiB of fp8 rows (264 B); {args.n:,} uniform random rows "
            f"per cold gather, its pages dropped first; best of {args.repeats}; "
            f"{os.cpu_count()} CPUs"
        )

        def cold(label: str, check=1, mmap_only=0, source=None) -> dict:
            runs = [
                run_json_case(
                    str(HERE),
                    "--case=cold",
                    f"--table={source or table}",
                    f"--n={args.n}",
                    f"--check={check}",
                    f"--mmap-only={mmap_only}",
                )
                for _ in range(args.repeats)
            ]
            best = max(runs, key=lambda r: r["rows_per_s"])
            best["label"] = label
            return best

        fio_file = workdir / "fio.dat"
        fio = fio_iops(fio_file, min(size, 8 << 30))
        results = []
        set_block_sums(table, "4K")
        results.append(cold("default (4K block checksums)"))
        results.append(cold("check_chunks=False", check=0))
        results.append(cold("before: mmap page faults, check_chunks=False", check=0, mmap_only=1))
        set_block_sums(table, "64K")
        results.append(cold("default, 64K block checksums"))
        set_block_sums(table, "none")
        results.append(cold("default, no block checksums (old table)"))
        set_block_sums(table, "4K")
        if args.linked:
            results.append(cold("linked (a checkpoint's shards)", source=args.linked))
            results.append(cold("linked before: mmap page faults", mmap_only=1, source=args.linked))
        warm = run_json_case(str(HERE), "--case=warm", f"--table={table}", "--n=49152")

        if fio is None:
            print("fio: NOT INSTALLED (apt-get install fio): no device baseline in this run")
        else:
            line = ", ".join(f"QD{d} {iops:,.0f}" for d, iops in fio.items())
            print(f"fio 4 KiB O_DIRECT random-read IOPS ({FIO_SECONDS}s each): {line}")
        base = fio.get(32) if fio else None
        for r in results:
            ratio = f"{r['rows_per_s'] / base:5.2f}x fio QD32" if base else ""
            read = f"{r['bytes_read'] / 2**20:7.0f}" if r["bytes_read"] is not None else "      -"
            print(
                f"  {r['label']:48s} {r['rows_per_s']:10,.0f} rows/s {ratio}  "
                f"read {read} MiB  peak RSS {r['rss']:6.0f} MiB"
            )
        if base:
            got = results[0]["rows_per_s"] / base
            print(
                f"cold default gather vs fio QD32: {got:.2f}x (target >= 0.8x): "
                f"{'PASS' if got >= 0.8 else 'FAIL'}"
            )
        ratio = warm["gather"] / warm["take"]
        print(
            f"page-cached gather {warm['gather'] / 1e6:.2f} M rows/s vs np.take in RAM "
            f"{warm['take'] / 1e6:.2f} M rows/s: {ratio:.2f}x (target >= 0.8x): "
            f"{'PASS' if ratio >= 0.8 else 'FAIL'}; cold rows read {warm['cold_rows']}; "
            f"peak RSS {warm['rss']:.0f} MiB"
        )
    finally:
        if args.keep and args.table is None:
            print(f"kept {workdir / 't.zarr'}")
            (workdir / "fio.dat").unlink(missing_ok=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
