"""build-counts on Dask (``--scheduler local:2``) against one process: time, peak RSS of the
driver, and the two memories compared file by file.

Cases, each in a fresh subprocess (its peak RSS is its own; a LocalCluster's workers are child
processes, not counted in the driver's), after one untimed warm-up of each (numba cache, page
cache), over the sample corpus (JSON Lines text, tokenized in the pass) at the demo-v1 layout
(both layers), best of ``--repeats``, interleaved:

- ``one``: ``build_counts`` in this process (in RAM);
- ``dask``: ``build_counts`` with ``scheduler="local:2"``-equivalent: a LocalCluster of 2
  single-threaded workers started before the clock, shards of ``--shard-kib``, row buckets
  chosen by the build (at least one per worker);
- ``dask 2x``: the same over the corpus twice (the driver's peak RSS should not grow with it).

Every Dask memory is checked identical to the one-process memory of the same corpus (every array
file byte for byte, the metadata but its time). On a 2-core machine expect no speed-up: the
point is bounded memory per task and bit-identity.

Usage: ``python benchmarks/bench_counts_dask.py [--repeats 2] [--shard-kib 512]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mib, run_json_case

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"


def build(workdir: Path, inputs: list[str], out: Path, dask: bool, shard_kib: int) -> dict:
    from engramctl import CanonicalVocab
    from engramctl.counts import BuildCountsJob, build_counts
    from engramctl.layout import LayoutRequest, resolve_layout

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = resolve_layout(LayoutRequest(preset="demo-v1"), vocab=vocab, source=None,
                            pick_layers=True)  # fmt: skip
    job = BuildCountsJob(inputs=tuple(inputs), out=out, overwrite=True)
    if not dask:
        started = time.perf_counter()
        report = build_counts(job=job, vocab=vocab, layout=layout)
        seconds = time.perf_counter() - started
    else:
        from engramctl.cluster import open_client
        from engramctl.counts.build_dask import build_counts_dask

        with open_client("local:2") as client:
            started = time.perf_counter()
            report = build_counts_dask(job=job, vocab=vocab, layout=layout, client=client,
                                       shard_bytes=shard_kib << 10)  # fmt: skip
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": report.tokens, "bytes": report.bytes,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def same_memory(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    for name in names:
        if name == "zarr.json":
            meta = [json.loads((d / name).read_text())["attributes"]["engramctl_counts"]
                    for d in (a, b)]  # fmt: skip
            for doc in meta:
                doc.pop("build_seconds")
                doc.pop("meta_sha256")
            if meta[0] != meta[1]:
                return False
        elif (a / name).read_bytes() != (b / name).read_bytes():
            return False
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shard-kib", type=int, default=512)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # one case in this fresh process: print its JSON
        result = build(Path(args.workdir), args.inputs, Path(args.out), args.case == "dask",
                       args.shard_kib)  # fmt: skip
        print(json.dumps(result))
        return result
    from engramctl import CanonicalVocab

    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        CanonicalVocab.from_tokenizer("deepseek-v4").save(workdir / "vocab.parquet")
        twice = workdir / "twice"
        twice.mkdir()
        for copy in (0, 1):
            shutil.copy(SAMPLE / "train.jsonl", twice / f"train{copy}.jsonl")
        corpora = {"1x": [str(SAMPLE / "train.jsonl")], "2x": [str(twice)]}

        def run(case, corpus, name):
            return run_json_case(script, "--case", case, "--workdir", str(workdir), "--out",
                                 str(workdir / name), "--shard-kib", str(args.shard_kib),
                                 *corpora[corpus])  # fmt: skip

        for case in ("one", "dask"):  # warm-up: numba cache, page cache
            run(case, "1x", f"warm-{case}.zarr")
        runs = {"one": [], "dask": []}
        for _ in range(args.repeats):
            for case in runs:
                runs[case].append(run(case, "1x", f"{case}.zarr"))
        best = {case: min(r, key=lambda x: x["seconds"]) for case, r in runs.items()}
        best["one 2x"] = run("one", "2x", "one2.zarr")
        best["dask 2x"] = run("dask", "2x", "dask2.zarr")
        identical = {"1x": same_memory(workdir / "one.zarr", workdir / "dask.zarr"),
                     "2x": same_memory(workdir / "one2.zarr", workdir / "dask2.zarr")}  # fmt: skip
        print(f"corpus: sample train.jsonl, {best['one']['tokens']:,} tokens (text, tokenized "
              f"in the pass), demo-v1 layout, both layers; shards of {args.shard_kib} KiB; "
              f"best of {args.repeats} (2x: one run)")  # fmt: skip
        for case, r in best.items():
            label = "one process" if case.startswith("one") else "dask local:2"
            size = "2x corpus" if case.endswith("2x") else "1x corpus"
            print(f"  {label:12s} {size}: {r['seconds']:7.2f} s  driver peak RSS "
                  f"{r['peak_rss_mib']:6.0f} MiB  memory "
                  f"{r['bytes'] / 2**20:,.0f} MiB")  # fmt: skip
        ratio = best["dask"]["seconds"] / best["one"]["seconds"]
        print(f"  dask local:2 / one process: {ratio:.2f}x the time (1x corpus)")
        print(f"  memories identical to one process's: 1x {identical['1x']}, 2x "
              f"{identical['2x']}")  # fmt: skip
        result = {"best": best, "ratio": ratio, "identical": identical}
        if not all(identical.values()):
            print("  MISMATCH: the Dask memory differs from one process's", file=sys.stderr)
            sys.exit(1)
        return result


if __name__ == "__main__":
    main()
