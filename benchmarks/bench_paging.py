"""Paging cost: eval tokens/s with Engram rows paged from an on-disk table vs a resident table.

Side by side in one run, alternating, on the same batches of held-out text and the same model:

- ``resident``: every row decoded on the device (``--resident``);
- ``paged``: rows hashed, deduplicated and gathered from the table one batch ahead on a background
  thread, copied into a device LRU cache (pinned buffers and a side stream on CUDA).

The table is a real zarr table made with ``engramctl init-table`` when that command exists, else a
memory-mapped ``.npy`` file with the same ``gather`` interface (the script says which). The target
is paged >= 0.95x resident tokens/s. Runs on CUDA with ``--device auto`` when one is present.

Two modes (``--mode``):

- ``prefill`` (default): whole windows per batch, the next batch's rows prefetched;
- ``decode``: one new token per sequence per step for ``--batch`` sequences (``engramctl
  generate``'s regime): each step hashes the new tokens with the n-gram context carried
  (``HashStream``), pages their rows with no prefetch (the next token is unknown until the step
  ends) and runs the model on them with its key/value cache (``generate``'s decode step).
  tokens/s counts new tokens.

    python benchmarks/bench_paging.py [--device auto|cpu|cuda] [--batches 12] [--repeats 3]
        [--mode prefill|decode]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class MemmapTable:
    """Fallback table: one ``.npy`` per layer on disk, gathered through a memory map."""

    dtype = "float32"

    def __init__(self, root: Path, layout, dim: int, fingerprint: str, seed: int = 0):
        from types import SimpleNamespace

        self.layout, self.dim, self.layers = layout, dim, tuple(layout.layers)
        self.info = SimpleNamespace(vocab_fingerprint=fingerprint)
        rng = np.random.default_rng(seed)
        self.arrays = {}
        for layer in self.layers:
            path = root / f"layer_{layer}.npy"
            rows = layout.layer_rows(layer)
            np.save(path, (rng.standard_normal((rows, dim)) * 0.02).astype(np.float32))
            self.arrays[layer] = np.load(path, mmap_mode="r")

    def gather(self, layer_id, row_ids, out=None):
        return np.take(self.arrays[layer_id], row_ids, axis=0, out=out)


def make_table(root: Path, vocab_path: Path, vocab, layout, dim: int):
    """A zarr table via ``engramctl init-table`` if available, else a memmap table."""
    table_path = root / "bench.zarr"
    cmd = [
        sys.executable,
        "-m",
        "engramctl",
        "init-table",
        str(table_path),
        "--vocab",
        str(vocab_path),
        "--ngram-vocab",
        ",".join(map(str, layout.ngram_vocab)),
        "--max-ngram",
        str(layout.max_ngram),
        "--heads",
        str(layout.heads),
        "--layers",
        ",".join(map(str, layout.layers)),
        "--pad-id",
        str(layout.pad_id),
        "--dim",
        str(dim),
        "--dtype",
        "float32",
        "--init",
        "normal",
        "--overwrite",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode == 0:
        from engramctl.table.sources.table import open_table

        return open_table(table_path, mode="r"), "zarr (engramctl init-table)"
    missing = "No such command" in done.stderr
    reason = "no init-table command yet" if missing else f"init-table failed: {done.stderr[-200:]}"
    return MemmapTable(root, layout, dim, vocab.fingerprint), f"memmap .npy ({reason})"


def tokens_per_s(model, source, batches, device) -> float:
    import torch

    start = time.perf_counter()
    for batch, rows in source.iterate(batches):
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device), rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del logits
    return sum(b.size for b in batches) / (time.perf_counter() - start)


def decode_tokens_per_s(model, source, batches, device, steps: int) -> float:
    """New tokens/s decoding each batch [B, >= steps] one column per step (one ``iterate``, so
    the cache's LRU clock runs on; each batch's sequences start from pad context)."""
    import torch

    from engramctl.hashing import HashStream
    from engramctl.model.transformer import DecodeCache

    hasher = source.hasher

    def columns():
        for windows in batches:
            source.hasher = HashStream(hasher, batch=windows.shape[0])  # context carried
            for t in range(steps):
                yield np.ascontiguousarray(windows[:, t : t + 1])

    start = time.perf_counter()
    try:
        for step, (batch, rows) in enumerate(source.iterate(columns())):
            if step % steps == 0:  # a new batch of sequences: an empty key/value cache
                cache = DecodeCache(model.config.n_layer)
            with torch.inference_mode():
                logits = model(torch.from_numpy(batch).to(device), rows, cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        source.hasher = hasher
    del logits
    return sum(b.shape[0] for b in batches) * steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ngram-vocab", default="20000,20000")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--cache-rows", type=int, default=1 << 18)
    parser.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    import torch

    from engramctl.hashing import NgramHasher
    from engramctl.layout import EngramLayout
    from engramctl.model.data import read_corpus_stream, text_windows
    from engramctl.model.device import resolve_device
    from engramctl.model.serve.paging import ResidentRows, RowPager
    from engramctl.model.transformer import EngramLM, ModelConfig
    from engramctl.tokenizer import load_tokenizer
    from engramctl.vocab import CanonicalVocab

    device = resolve_device(args.device)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="bench_paging_"))
    try:
        vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
        vocab_path = root / "vocab.parquet"
        vocab.save(vocab_path)
        layout = EngramLayout(
            ngram_vocab=[int(v) for v in args.ngram_vocab.split(",")],
            max_ngram=3,
            heads=args.heads,
            layers=(1,),
            seed=0,
            pad_id=2,
            vocab_size=vocab.canonical_vocab_size,
        )
        table, table_kind = make_table(root, vocab_path, vocab, layout, args.dim)
        tokenizer, _ = load_tokenizer("deepseek-v4")
        stream = read_corpus_stream(REPO / "sample_data/corpus/heldout.jsonl", tokenizer).ids
        windows = text_windows(stream, args.seq_len)[:, :-1]
        need = args.batches * args.batch
        windows = np.resize(windows, (max(need, 1), args.seq_len))
        batches = [windows[i : i + args.batch] for i in range(0, need, args.batch)]
        config = ModelConfig(
            vocab_size=vocab.source_vocab_size,
            output_vocab_size=8000,
            n_layer=args.depth,
            n_embd=args.width,
            n_head=4,
            block_size=args.seq_len,
            engram_layers=layout.layers,
            engram_heads=layout.heads_per_layer,
            engram_dim=args.dim,
            max_ngram=3,
            engram_value_zero_init=False,
        )
        model = EngramLM(config).to(device).eval()
        hasher = NgramHasher(layout, vocab)
        hasher.hash(batches[0])  # compile outside the timings
        prefetch = args.mode == "prefill"
        resident = ResidentRows(table, hasher, device=device, prefetch=prefetch)
        tokens_per_s(model, resident, batches[:2], device)  # warm-up
        runs = {"resident": [], "paged": []}
        stats = None
        for _ in range(args.repeats):
            pager = RowPager(
                table, hasher, device=device, cache_rows=args.cache_rows, prefetch=prefetch
            )
            if args.mode == "prefill":
                runs["paged"].append(tokens_per_s(model, pager, batches, device))
                runs["resident"].append(tokens_per_s(model, resident, batches, device))
            else:  # --batch sequences at a time, --seq-len steps each, every batch in turn
                for source, name in ((pager, "paged"), (resident, "resident")):
                    runs[name].append(
                        decode_tokens_per_s(model, source, batches, device, args.seq_len)
                    )
            stats = pager.stats.to_dict()
        best = {k: max(v) for k, v in runs.items()}
        result = {
            "mode": args.mode,
            "device": str(device),
            "table": table_kind,
            "rows": layout.total_rows,
            "dim": args.dim,
            "batches": args.batches,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "tokens_per_s": runs,
            "best_tokens_per_s": best,
            "paged_vs_resident": best["paged"] / best["resident"],
            "median_ratio": float(np.median(np.array(runs["paged"]) / np.array(runs["resident"]))),
            "target": 0.95 if args.mode == "prefill" else None,
            "paging_stats_last_cold_run": stats,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"bench_paging ({args.mode}) on {result['device']}, table: {result['table']}, "
            f"{result['rows']:,} rows x {args.dim}"
        )
        for name, values in runs.items():
            print(f"  {name:9s} tokens/s: " + ", ".join(f"{v:,.0f}" for v in values))
        s = stats
        print(
            f"  paged (cold cache, last run): hit rate {s['hit_rate']:.1%}, "
            f"{s['bytes_read'] / 2**20:.1f} MiB read, waited {s['wait_seconds']:.3f}s, "
            f"background prepare {s['prepare_seconds']:.3f}s"
        )
        if args.mode == "prefill":
            ok = "OK" if result["paged_vs_resident"] >= 0.95 else "BELOW TARGET"
            target = f"target >= 0.95) {ok}"
        else:  # nothing to overlap a step's gather with: no target yet, the ratio is reported
            target = "decode: no prefetch, no target)"
        print(
            f"  paged / resident (best of {args.repeats}): {result['paged_vs_resident']:.3f}x "
            f"(median of pairs {result['median_ratio']:.3f}x; {target}"
        )
    return result


if __name__ == "__main__":
    main()
