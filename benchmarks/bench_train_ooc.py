"""Out-of-core training: steps/s against in-memory training, peak RSS against table size, and a
small table against the full-size linked DeepSeek-V4.1 checkpoint.

Three measurements (``--parts``, default all):

- speed, on the demo's table (160,316 rows x 32 float32, ``make demo``'s layout) and the demo's
  model (4 x 128, batch 16 x 128 tokens): ``--steps`` training steps in memory (the table decoded
  to float32) and out of core (rows gathered per step, written back with their moments as
  commits), alternating, best of ``--repeats``. Target: out of core >= 0.8x in memory.
- memory, each in its own process: out-of-core training of ``--rss-steps`` steps on a lazy table
  of 2 GB and of 8 GB (float32, 32 values per row, 1,024-row chunks so that a flush rewrites
  128 KiB per touched chunk). Peak RSS (``ru_maxrss``: anonymous memory plus the table's
  memory-mapped pages the gathers touched) of the two must differ by less than 200 MB.

- full size (``v41``): the same model and steps out of core, with ``--checkpoint-every`` (one
  commit of rows + moments + fp32 master copies per checkpoint), on a small fp8 table of the V4.1
  layout (layers 1 and 14, 24 heads, 256 values; 4,000 rows per head, ~100k rows per layer) and
  on the full-size linked V4.1 checkpoint (a sparse file as ``bench_edits.py`` builds it: 2 x
  ~384M fp8 rows, 203 GB apparent), each in a fresh process, alternating, best of
  ``--repeats``: steps/s, trained rows written per second, peak RSS. Target: full size >= 0.5x
  the small table's steps/s.

Rows written per second (the flushes' ``write_rows`` of rows and their side columns) are reported.

    python benchmarks/bench_train_ooc.py [--steps 30] [--repeats 2] [--rss-steps 8] [--json]
        [--parts speed,rss,v41] [--v41-steps 12]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

GB = 1 << 30


def demo_layout(vocab, rows_per_head: int = 20_000, heads: int = 4):
    from engramctl.layout import EngramLayout

    return EngramLayout(
        ngram_vocab=(rows_per_head, rows_per_head),
        max_ngram=3,
        heads=heads,
        layers=(1,),
        seed=0,
        pad_id=2,
        vocab_size=vocab.canonical_vocab_size,
    )


def training_data(vocab, seq_len: int):
    from engramctl.model.train.loop import prepare_training_data

    return prepare_training_data(
        corpus=REPO / "sample_data/corpus/train.jsonl",
        heldout=None,
        vocab=vocab,
        tokenizer_source="deepseek-v4",
        seq_len=seq_len,
        min_count=5,
    )


def train_once(
    root: Path, table_path: Path, vocab, data, *, steps: int, out_of_core: bool, batch: int = 16
):
    """One run; returns (steps/s of the loop and the final write back, result)."""
    from engramctl.model.train.loop import TrainConfig, train_model
    from engramctl.table.sources.table import open_table

    config = TrainConfig(
        steps=steps, eval_every=0, out_of_core=out_of_core, warmup=min(30, steps), batch=batch
    )
    with open_table(table_path, mode="r+") as table:
        result = train_model(
            windows=data.windows,
            heldout=None,
            model_vocab=data.model_vocab,
            config=config,
            out_dir=root / "model",
            table=table,
            vocab=vocab,
            overwrite=True,
            prior_runs="overwrite",  # each repeat trains the same table again
        )
    return steps / result.seconds, result  # the steps and the rows' write back


def child_rss(args) -> None:
    """Out-of-core training on one table; prints JSON with peak RSS (run as a subprocess)."""
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.load(args.vocab)
    data = training_data(vocab, 128)
    root = Path(args.child_rss).parent
    rate, result = train_once(
        root,
        Path(args.child_rss),
        vocab,
        data,
        steps=args.rss_steps,
        out_of_core=True,
        batch=args.rss_batch,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "peak_rss": peak,
                "steps_per_s": rate,
                "rows_written": result.rows_written,
                "write_seconds": result.write_seconds,
            }
        )
    )


V41_MODEL = {"depth": 15, "width": 32, "attn_heads": 2, "seq_len": 64, "batch": 2}


def small_v41_table(path: Path, layout, vocab, rows_per_head: int = 4000) -> None:
    """An fp8 table of the V4.1 layout's shape (layers, heads, 256 values), small vocab."""
    from engramctl.layout import EngramLayout
    from engramctl.table.build.create import create_table

    small = EngramLayout(
        ngram_vocab=(rows_per_head,) * len(layout.ngram_vocab),
        max_ngram=layout.max_ngram,
        heads=layout.heads,
        layers=layout.layers,
        seed=layout.seed,
        pad_id=layout.pad_id,
        vocab_size=layout.vocab_size,
    )  # fmt: skip (not dataclasses.replace: that would copy the layout's cached row counts)
    create_table(
        path, layout=small, vocab_fingerprint=vocab.fingerprint, dim=256, dtype="float8_e4m3fn"
    )


def child_v41(args) -> None:
    """Out-of-core training of the V4.1-shaped model on one table; prints JSON (a subprocess)."""
    from _common import peak_rss_mib

    from engramctl.model.train.loop import TrainConfig, train_model
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.load(args.vocab)
    data = training_data(vocab, V41_MODEL["seq_len"])
    table_path = Path(args.child_v41)
    config = TrainConfig(steps=args.v41_steps, eval_every=0, warmup=2, out_of_core=True,
                         checkpoint_every=args.v41_every, **V41_MODEL)  # fmt: skip
    with open_table(table_path, mode="r+") as table:
        before = len(table.commits)
        result = train_model(
            windows=data.windows, heldout=None, model_vocab=data.model_vocab, config=config,
            out_dir=table_path.parent / f"model-{table_path.stem}", table=table, vocab=vocab,
            overwrite=True, prior_runs="overwrite",
        )  # fmt: skip
        commits = len(table.commits) - before
        rows = {layer: table.layout.layer_rows(layer) for layer in table.layout.layers}
    doc = {"steps_per_s": args.v41_steps / result.seconds, "rows_written": result.rows_written,
           "write_seconds": result.write_seconds, "commits": commits, "table_rows": rows,
           "peak_rss_mib": peak_rss_mib()}  # fmt: skip
    print(json.dumps(doc))


def run_v41(root: Path, vocab, vocab_path: Path, args) -> dict:
    """The full-size part: a small V4.1-shaped table against the linked V4.1 checkpoint."""
    from bench_edits import build

    from engramctl.table.sources.table import open_table
    from tests.table.ckpt_util import sparse_files_supported

    root.mkdir(parents=True, exist_ok=True)
    if not sparse_files_supported(root):
        return {"skipped": f"{root} keeps no sparse files (the checkpoint would take 203 GB)"}
    built = build(root)  # ckpt/ (sparse) and two linked tables; we train edited.zarr
    with open_table(root / "edited.zarr") as linked:
        small_v41_table(root / "small.zarr", linked.layout, vocab)
    tables = {"small": root / "small.zarr", "full": root / "edited.zarr"}
    runs: dict = {"small": [], "full": []}
    for _ in range(args.repeats):
        for name, path in tables.items():
            cmd = [sys.executable, __file__, "--child-v41", str(path), "--vocab",
                   str(vocab_path), "--v41-steps", str(args.v41_steps),
                   "--v41-every", str(args.v41_every)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {name: max(docs, key=lambda d: d["steps_per_s"]) for name, docs in runs.items()}
    ratio = best["full"]["steps_per_s"] / best["small"]["steps_per_s"]
    return {"checkpoint": built, "runs": runs, "best": best, "full_over_small": ratio,
            "target": 0.5, "ok": ratio >= 0.5}  # fmt: skip


def print_v41(doc: dict, args) -> None:
    if "skipped" in doc:
        print(f"v41: skipped: {doc['skipped']}")
        return
    built = doc["checkpoint"]
    print(f"sparse V4.1 checkpoint: {built['apparent_gb']} GB apparent, {built['disk_mb']} MB "
          f"on disk; model {V41_MODEL}, {args.v41_steps} steps, a commit every "
          f"{args.v41_every}")  # fmt: skip
    for name, runs in doc["runs"].items():
        for d in runs:
            rate = d["rows_written"] / d["write_seconds"] if d["write_seconds"] else 0.0
            print(f"  {name:5s} table ({sum(d['table_rows'].values()):,} rows): "
                  f"{d['steps_per_s']:.3f} steps/s, {d['rows_written']:,} trained rows written "
                  f"in {d['commits']} commits ({rate:,.0f} rows/s), peak RSS "
                  f"{d['peak_rss_mib']:,.0f} MiB")  # fmt: skip
    print(f"full size / small (best of {args.repeats}, steps/s): {doc['full_over_small']:.3f}x "
          f"(target >= 0.5) {'OK' if doc['ok'] else 'MISSED'}")  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-steps", type=int, default=8)
    parser.add_argument("--rss-batch", type=int, default=4, help="windows per step (memory runs)")
    parser.add_argument("--sizes-gb", default="2,8")
    parser.add_argument("--parts", default="speed,rss,v41", help="speed, rss, v41 (any)")
    parser.add_argument("--v41-steps", type=int, default=12)
    parser.add_argument("--v41-every", type=int, default=4, help="--checkpoint-every (v41)")
    parser.add_argument("--child-v41", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rss:
        child_rss(args)
        return {}
    if args.child_v41:
        child_v41(args)
        return {}

    from engramctl.table.build.create import create_table
    from engramctl.vocab import CanonicalVocab

    root = Path(tempfile.mkdtemp(prefix="bench_train_ooc_"))
    try:
        vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
        vocab_path = root / "vocab.parquet"
        vocab.save(vocab_path)
        runs = {"in_memory": [], "out_of_core": []}
        writes, ratio = (0, 0.0), None
        # -- speed on the demo's table
        table_path = root / "demo.zarr"
        layout = demo_layout(vocab)
        create_table(
            table_path, layout=layout, vocab_fingerprint=vocab.fingerprint, dim=32, workers=1
        )
        data = training_data(vocab, 128)
        if "speed" in args.parts:  # warm-up (numba) first
            train_once(root, table_path, vocab, data, steps=2, out_of_core=True)
        for _ in range(args.repeats if "speed" in args.parts else 0):
            for mode in ("in_memory", "out_of_core"):
                rate, result = train_once(
                    root, table_path, vocab, data, steps=args.steps, out_of_core=mode != "in_memory"
                )
                runs[mode].append(rate)
                if mode == "out_of_core":
                    writes = (result.rows_written, result.write_seconds)
        best = {k: max(v) for k, v in runs.items() if v}
        if best:
            ratio = best["out_of_core"] / best["in_memory"]
        # -- peak RSS against table size
        rss = {}
        sizes = [float(s) for s in args.sizes_gb.split(",")] if "rss" in args.parts else []
        for size in sizes:
            rows_per_head = int(size * GB / (32 * 4) / 8)
            big = root / f"big{size:g}.zarr"
            create_table(
                big,
                layout=demo_layout(vocab, rows_per_head),
                vocab_fingerprint=vocab.fingerprint,
                dim=32,
                lazy=True,
                chunk_rows=1024,
            )
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child-rss",
                    str(big),
                    "--vocab",
                    str(vocab_path),
                    "--rss-steps",
                    str(args.rss_steps),
                    "--rss-batch",
                    str(args.rss_batch),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            rss[f"{size:g} GB"] = json.loads(out.stdout.strip().splitlines()[-1])
            shutil.rmtree(big, ignore_errors=True)
        v41 = run_v41(root / "v41", vocab, vocab_path, args) if "v41" in args.parts else None
        peaks = [v["peak_rss"] for v in rss.values()]
        spread = max(peaks) - min(peaks) if peaks else None
        result = {
            "steps": args.steps,
            "runs_steps_per_s": runs,
            "best_steps_per_s": best,
            "out_of_core_over_in_memory": ratio,
            "speed_target": 0.8,
            "speed_ok": ratio is not None and ratio >= 0.8,
            "demo_rows_written": writes[0],
            "demo_rows_written_per_s": writes[0] / writes[1] if writes[1] else None,
            "rss": rss,
            "rss_spread_bytes": spread,
            "rss_target_bytes": 200 * (1 << 20),
            "rss_ok": spread is not None and spread < 200 * (1 << 20),
            "v41": v41,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return result
    for mode, rates in runs.items():
        if rates:
            print(f"{mode:12s} steps/s: " + ", ".join(f"{r:.2f}" for r in rates))
    if ratio is not None:
        print(
            f"out of core / in memory (best of {args.repeats}): {ratio:.3f}x (target >= 0.8) "
            f"{'OK' if result['speed_ok'] else 'MISSED'}"
        )
    if writes[1]:
        print(
            f"demo table: {writes[0]:,} rows written in {writes[1]:.2f}s "
            f"({writes[0] / writes[1]:,.0f} rows/s, rows and moments)"
        )
    for name, doc in rss.items():
        rate = doc["rows_written"] / doc["write_seconds"] if doc["write_seconds"] else 0
        print(
            f"table {name}: peak RSS {doc['peak_rss'] / (1 << 20):,.0f} MiB, "
            f"{doc['steps_per_s']:.2f} steps/s, {doc['rows_written']:,} rows written "
            f"({rate:,.0f} rows/s)"
        )
    if v41 is not None:
        print_v41(v41, args)
    if spread is not None:
        print(
            f"peak RSS spread: {spread / (1 << 20):,.0f} MiB (target < 200 MiB) "
            f"{'OK' if result['rss_ok'] else 'MISSED'}"
        )
    return result


if __name__ == "__main__":
    main()
