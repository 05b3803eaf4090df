"""build-counts at DeepSeek V4.1's layout, spilled: is peak RSS flat in corpus size?

Target (issue 23): peak RSS of build-counts at V4.1's layout flat in corpus size. The layout is
the ``deepseek-v4.1`` preset, both Engram layers (2 x ~384M rows; level 1 and 2 layers x 3
orders x 8 heads = 49 columns), K = 8, ``max_memory`` 64 MiB (the row summaries spill to row
buckets on disk at once). Two series over the sample corpus (JSON Lines text, tokenized in the
pass), each build in a fresh subprocess after one untimed warm-up (numba cache, page cache):

- *slices*: the first 1/4, 1/2 and all of ``train.jsonl``: new text, so the occupied rows and
  the memory grow with the corpus;
- *repeats*: the whole file 1x, 2x, 4x (``--scale``): the same rows, more pairs: what the pass
  holds per corpus token.

For each: tokens, seconds, peak RSS (VmHWM: file-backed pages included), the anonymous RSS
before the build (imports, vocab, layout) and the largest anonymous and file-backed RSS sampled
every 20 ms (with the phase each peaked in: the pass, the buckets' write-out, the gate's fit,
the commit), the row-bucket scratch written (the
accumulator's count) and the most disk the output's directory took (sampled), the disk the
build projected before the pass (:mod:`engramctl.counts.disk`), the memory's bytes and
occupied rows. Then, on the largest memory: what opening it costs in RSS (``open_counts``,
:class:`~engramctl.counts.CountsModel`, scoring a held-out stream), ``info`` and ``verify``.

Usage: ``python benchmarks/bench_counts_v41.py [--scale 4] [--max-memory 64M]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from _common import peak_rss_mib, run_json_case

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"


def proc_status() -> dict:
    """RssAnon, RssFile and VmRSS of this process (MiB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


def disk_bytes(root: Path) -> int:
    """Bytes allocated under ``root`` (sparse files count what they hold)."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass  # removed while walking
    return total


class Sampler:
    """Samples RSS every 20 ms and the output directory's disk every 0.25 s, by phase."""

    def __init__(self, root: Path):
        self.root, self.phase, self.stop = root, "pass", threading.Event()
        self.peak = {"RssAnon": (0.0, ""), "RssFile": (0.0, ""), "VmRSS": (0.0, "")}
        self.disk = (0, "")
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        tick = 0
        while not self.stop.wait(0.02):
            for key, value in proc_status().items():
                if value > self.peak[key][0]:
                    self.peak[key] = (value, self.phase)
            tick += 1
            if tick % 12 == 0:
                used = disk_bytes(self.root)
                if used > self.disk[0]:
                    self.disk = (used, self.phase)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _phased(sampler: Sampler, module, name: str, phase: str, after: str):
    """Wrap ``module.name`` so the sampler knows which phase runs."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        sampler.phase = phase
        try:
            return inner(*args, **kwargs)
        finally:
            sampler.phase = after

    setattr(module, name, wrapper)


def case_build(workdir: Path, inputs: list[str], max_memory: int) -> dict:
    from engramctl import CanonicalVocab
    from engramctl.counts import BuildCountsJob, accumulate, build, build_counts
    from engramctl.counts.store import read_metadata
    from engramctl.layout import LayoutRequest, resolve_layout

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    layout = resolve_layout(LayoutRequest(preset="deepseek-v4.1"), vocab=vocab, source=None,
                            pick_layers=True)  # fmt: skip
    root = workdir / f"out-{time.perf_counter_ns()}"
    root.mkdir()
    out = root / "c.zarr"
    job = BuildCountsJob(inputs=tuple(inputs), out=out, max_memory=max_memory)
    import numba  # noqa: F401 (loaded by the build anyway: not the build's own RSS)

    at_start = proc_status()
    sampler = Sampler(root)
    _phased(sampler, accumulate.PairAccumulator, "finish", "write-out", "gate")
    _phased(sampler, build, "write_metadata", "commit", "done")
    started = time.perf_counter()
    with sampler:
        report = build_counts(job=job, vocab=vocab, layout=layout)
    seconds = time.perf_counter() - started
    meta = read_metadata(out)
    return {"seconds": seconds, "tokens": report.tokens, "held": report.heldout_pairs,
            "bytes": report.bytes,
            "occupied_rows": meta["occupied_rows"], "scratch_bytes": report.scratch_bytes,
            "disk_peak": sampler.disk, "rss_peak": sampler.peak, "vmhwm_mib": peak_rss_mib(),
            "estimate": report.disk, "out": str(out), "start": at_start}  # fmt: skip


def case_open(workdir: Path, path: str) -> dict:
    """What opening a V4.1 memory costs in RSS, step by step; info and verify on it."""
    import numpy as np

    from engramctl import CanonicalVocab
    from engramctl.corpus.files import CorpusOptions, CorpusWarnings, discover_files
    from engramctl.corpus.readers import read_batches
    from engramctl.corpus.tokenize import tokenized_batches
    from engramctl.counts import CountsModel, open_counts
    from engramctl.counts.store import describe_counts, verify_counts
    from engramctl.tokenizer import load_checked_tokenizer

    vocab = CanonicalVocab.load(workdir / "vocab.parquet")
    from engramctl.corpus.tokenize import TextTokenizer

    tok = TextTokenizer(load_checked_tokenizer("deepseek-v4", sha256=vocab.source_sha256)[0])
    files = discover_files([str(SAMPLE / "heldout.jsonl")])
    ids = np.concatenate([b.ids for b in tokenized_batches(
        read_batches(files, CorpusOptions(), CorpusWarnings()), tok)])[:50_000]  # fmt: skip
    steps = {"start": proc_status()}
    started = time.perf_counter()
    store = open_counts(path)
    steps["open_counts"] = proc_status()
    model = CountsModel(store, vocab)
    steps["CountsModel"] = proc_status()
    scores = model.score_stream(ids)
    steps[f"score {ids.shape[0]:,} tokens"] = proc_status()
    seconds = {"open+model+score": time.perf_counter() - started}
    t = time.perf_counter()
    describe_counts(path)
    seconds["info"] = time.perf_counter() - t
    steps["info"] = proc_status()
    t = time.perf_counter()
    problems = verify_counts(path)
    seconds["verify"] = time.perf_counter() - t
    steps["verify"] = proc_status()
    return {"steps": steps, "seconds": seconds, "problems": problems,
            "loss": float(-np.log(scores[:, 0]).mean()), "vmhwm_mib": peak_rss_mib()}  # fmt: skip


def prepare(workdir: Path, scale: int) -> dict:
    """The vocab and the corpora: slices (new text) and repeats (the same text)."""
    from engramctl import CanonicalVocab

    CanonicalVocab.from_tokenizer("deepseek-v4").save(workdir / "vocab.parquet")
    data = (SAMPLE / "train.jsonl").read_bytes()
    corpora = {}
    for name, part in (("slice 1/4", 4), ("slice 1/2", 2)):  # the first lines, by bytes
        path = workdir / f"slice{part}.jsonl"
        path.write_bytes(data[: data.index(b"\n", len(data) // part) + 1])
        corpora[name] = [str(path)]
    copies = 1
    while copies <= scale:
        folder = workdir / f"x{copies}"
        folder.mkdir()
        for copy in range(copies):
            (folder / f"train{copy}.jsonl").write_bytes(data)
        corpora[f"repeat {copies}x"] = [str(folder)]
        copies *= 2
    return corpora


def main(argv=None) -> dict:
    from engramctl._system import parse_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4, help="repeats up to this many copies")
    parser.add_argument("--max-memory", default="64M", help="the builds' --max-memory")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = parse_memory(args.max_memory)
    if args.case:  # one case in this fresh process: print its JSON
        workdir = Path(args.workdir)
        if args.case == "build":
            result = case_build(workdir, args.inputs, budget)
        else:
            result = case_open(workdir, args.inputs[0])
        print(json.dumps(result))
        return result
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        workdir = Path(tmp)
        corpora = prepare(workdir, args.scale)
        base = ("--workdir", str(workdir), "--max-memory", args.max_memory)
        run_json_case(script, "--case", "build", *base, *corpora["slice 1/4"])  # warm-up
        print(f"build-counts, deepseek-v4.1 layout (both layers, 49 columns), K 8, "
              f"--max-memory {args.max_memory}: spilled; one build per line, each in a fresh "
              "process")  # fmt: skip
        print(f"  {'corpus':12s} {'tokens':>10s} {'held':>8s} {'s':>7s} {'VmHWM':>7s} "
              f"{'anon':>19s} "
              f"{'file':>16s} {'scratch':>8s} {'disk peak':>18s} {'projected':>17s} "
              f"{'memory':>8s} {'rows':>11s}")  # fmt: skip
        results = {}
        for name, inputs in corpora.items():
            r = run_json_case(script, "--case", "build", *base, *inputs)
            results[name] = r
            anon, file = r["rss_peak"]["RssAnon"], r["rss_peak"]["RssFile"]
            e = r["estimate"]
            print(
                f"  {name:12s} {r['tokens']:10,} {r['held']:8,} {r['seconds']:7.1f} "
                f"{r['vmhwm_mib']:6.0f}M "
                f"{r['start']['RssAnon']:4.0f}->{anon[0]:4.0f}M {anon[1]:>7s} "
                f"{file[0]:5.0f}M {file[1]:>10s} "
                f"{r['scratch_bytes'] / 2**20:7.0f}M {r['disk_peak'][0] / 2**20:7.0f}M "
                f"{r['disk_peak'][1]:>10s} {e['spill'] / 2**20:6.0f}M+{e['memory'] / 2**20:6.0f}M"
                f" {r['bytes'] / 2**20:7.0f}M {r['occupied_rows']:11,}"
            )
        largest = max(results.values(), key=lambda r: r["occupied_rows"])
        opened = run_json_case(script, "--case", "open", "--workdir", str(workdir),
                               largest["out"])  # fmt: skip
        print(f"opening the memory of {largest['occupied_rows']:,} occupied rows "
              f"({largest['bytes'] / 2**20:,.0f} MiB), RSS after each step (MiB):")  # fmt: skip
        for step, s in opened["steps"].items():
            print(f"  {step:24s} VmRSS {s['VmRSS']:6.0f}  anon {s['RssAnon']:6.0f}  "
                  f"file {s['RssFile']:6.0f}")  # fmt: skip
        print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in opened["seconds"].items())
              + f"; verify: {opened['problems'] or 'intact'}; held-out loss "
              f"{opened['loss']:.3f} nats/token")  # fmt: skip
        return {"builds": results, "open": opened}


if __name__ == "__main__":
    main()
