"""A full-size DeepSeek-V4.1 checkpoint in bounded memory: link, info, verify, gather, page.

Builds a *sparse* checkpoint at V4.1's real shapes (layers 1 and 14: 384,006,168 and
384,016,682 rows of 256 e4m3 values + 8 ue8m0 scales, ~203 GB apparent) whose shards hold data
only at the rows a chosen text hashes to plus a few hundred random rows (a few MB on disk), then
runs each step in its own process and prints its wall time and peak RSS
(``resource.getrusage``): ``import --link``, ``info``, ``verify``, gathering the text's rows
through the table (compared with the bytes written) and paging them through the RowPager with a
1M-row cache (compared with the dequantized bytes). Then the streamed paths on a dense checkpoint
of ~0.5 GB (2 layers x ~1M rows; 203 GB would not fit this disk): a copy import, ``verify
--deep`` of a link to it (its chunk checksums must equal the copy's) and ``export --format
deepseek``, with their throughput. Every step must stay under 1 GiB of RSS.
Skips with a message on a file system without sparse files.

    python benchmarks/bench_checkpoint.py [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT = "Alexander the Great was tutored by Aristotle until the age of 16."
RANDOM_ROWS = 300
CACHE_ROWS = 1_000_000
RSS_LIMIT = 2**30
DENSE_NGRAM_VOCAB = (40_000, 40_000, 40_000)  # ~1M rows per layer: the streamed paths


def v41_config() -> dict:
    from engramctl.model_config import PUBLISHED_CONFIGS

    return {"text_config": PUBLISHED_CONFIGS["deepseek-v4.1"]}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cli(*args) -> str:
    """Run an engramctl command in this process; its stdout."""
    import contextlib
    import io

    from engramctl.cli import app

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            app([str(a) for a in args], standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    return out.getvalue()


def text_ids(vocab):
    from engramctl.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer("deepseek-v4")
    return np.array(tokenizer.encode(TEXT, add_special_tokens=False).ids, dtype=np.int64)


# ------------------------------------------------------------------------------ the steps
def step_build(work: Path) -> str:
    from engramctl.hashing import NgramHasher
    from engramctl.model_config import read_model_config
    from engramctl.vocab import CanonicalVocab
    from tests.table.ckpt_util import random_fp8_rows, write_sparse_checkpoint

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    vocab.save(work / "vocab.parquet")
    (work / "config.json").write_text(json.dumps(v41_config()))
    layout = read_model_config(work / "config.json").layout(vocab_size=vocab.canonical_vocab_size)
    hashed = NgramHasher(layout, vocab).hash(text_ids(vocab), table_rows=True)
    rng = np.random.default_rng(0)
    written, rows_of = {}, {}
    for layer_id in layout.layers:
        rows_of[layer_id] = layout.layer_rows(layer_id)
        extra = rng.integers(0, rows_of[layer_id], size=RANDOM_ROWS)
        targets = np.unique(np.concatenate([hashed[layer_id].reshape(-1), extra]))
        written[layer_id] = (targets, random_fp8_rows(rng, targets.size, 256))
    write_sparse_checkpoint(work / "ckpt", v41_config(), rows_of, written)
    np.savez(
        work / "written.npz",
        **{f"ids_{k}": v[0] for k, v in written.items()},
        **{f"rows_{k}": v[1] for k, v in written.items()},
    )
    files = list((work / "ckpt").iterdir())
    apparent = sum(f.stat().st_size for f in files)
    disk = sum(f.stat().st_blocks * 512 for f in files)
    rows = sum(v[0].size for v in written.values())
    return f"{apparent / 1e9:.1f} GB apparent, {disk / 1e6:.1f} MB on disk, {rows} rows written"


def step_link(work: Path) -> str:
    shutil.rmtree(work / "v41.zarr", ignore_errors=True)
    doc = json.loads(
        cli(
            "import",
            work / "ckpt",
            work / "v41.zarr",
            "--link",
            "--vocab",
            work / "vocab.parquet",
            "--json",
        )  # fmt: skip
    )
    size = sum(f.stat().st_size for f in (work / "v41.zarr").rglob("*") if f.is_file())
    return f"{doc['logical_bytes'] / 1e9:.1f} GB of rows linked, {size / 1e3:.1f} kB written"


def step_info(work: Path) -> str:
    doc = json.loads(cli("info", work / "v41.zarr", "--json"))
    rows = [doc["layers"][k]["rows"] for k in ("1", "14")]
    return f"rows {rows}, {len(doc['sources']['files'])} source files"


def step_verify(work: Path) -> str:
    doc = json.loads(cli("verify", work / "v41.zarr", "--vocab", work / "vocab.parquet", "--json"))
    assert doc["ok"], doc["problems"]
    return "ok (sizes and header hashes of the linked shards)"


def step_gather(work: Path) -> str:
    from engramctl.hashing import NgramHasher
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.load(work / "vocab.parquet")
    written = np.load(work / "written.npz")
    with open_table(work / "v41.zarr", vocab=vocab) as table:
        hashed = NgramHasher(table.layout, vocab).hash(text_ids(vocab), table_rows=True)
        checked = 0
        for layer_id in table.layers:
            ids, rows = written[f"ids_{layer_id}"], written[f"rows_{layer_id}"]
            np.testing.assert_array_equal(table.gather(layer_id, ids), rows)
            text_rows = hashed[layer_id].reshape(-1)
            expected = rows[np.searchsorted(ids, text_rows)]
            np.testing.assert_array_equal(table.gather(layer_id, text_rows), expected)
            checked += ids.size + text_rows.size
    return f"{checked} rows equal the bytes written"


def step_pager(work: Path) -> str:
    import torch

    from engramctl.hashing import NgramHasher
    from engramctl.model.serve.paging import RowPager
    from engramctl.table.core.dtypes import decode_rows
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.load(work / "vocab.parquet")
    written = np.load(work / "written.npz")
    ids = text_ids(vocab)[None, :]
    with open_table(work / "v41.zarr", vocab=vocab) as table:
        hasher = NgramHasher(table.layout, vocab)
        pager = RowPager(table, hasher, device=torch.device("cpu"), cache_rows=CACHE_ROWS)
        batches = [ids, ids]  # the second time every row is a cache hit
        for batch, rows in pager.iterate(batches):
            hashed = hasher.hash(batch, table_rows=True)
            for layer_id, paged in rows.items():
                stored, raw = written[f"ids_{layer_id}"], written[f"rows_{layer_id}"]
                flat = hashed[layer_id].reshape(-1)
                expected = decode_rows(raw[np.searchsorted(stored, flat)], "float8_e4m3fn", 256)
                got = paged.reshape(-1, 256).numpy()
                np.testing.assert_array_equal(got, expected)
        stats = pager.stats
    return (
        f"{stats.batches} batches, {stats.unique_rows} unique rows, hit rate "
        f"{stats.hit_rate:.2f}, cache {stats.cache_rows:,} rows: paged rows equal the bytes"
    )


def step_dense(work: Path) -> str:
    """A dense checkpoint of 2 layers x ~1M rows (random valid fp8), written in blocks."""
    import os

    from engramctl.layout import EngramLayout
    from engramctl.model_config import EngramModelConfig
    from engramctl.table.formats.checkpoint_export import safetensors_header
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.load(work / "vocab.parquet")
    layout = EngramLayout(
        ngram_vocab=DENSE_NGRAM_VOCAB, max_ngram=4, heads=8, layers=(1, 14), seed=0, pad_id=2,
        vocab_size=vocab.canonical_vocab_size,
    )  # fmt: skip
    dense = work / "dense"
    dense.mkdir(exist_ok=True)
    config = EngramModelConfig.from_layout(layout, head_dim=256).to_dict()
    (dense / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(1)
    weight_map, total = {}, 0
    for i, layer_id in enumerate(layout.layers):
        rows = layout.layer_rows(layer_id)
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        parts = [(f"layers.{layer_id}.engram.embed.weight", "F8_E4M3", 256),
                 (f"layers.{layer_id}.engram.embed.scale", "F8_E8M0", 8)]  # fmt: skip
        with open(dense / name, "wb") as handle:
            handle.write(safetensors_header([(n, d, [rows, w], rows * w) for n, d, w in parts]))
            for tensor, _, width in parts:
                for start in range(0, rows, 1 << 16):
                    n = min(rows, start + (1 << 16)) - start
                    if width == 256:
                        block = rng.integers(0, 256, size=(n, width), dtype=np.uint8)
                        block[(block & 0x7F) == 0x7F] = 0x11
                    else:
                        block = rng.integers(110, 135, size=(n, width), dtype=np.uint8)
                    handle.write(block.tobytes())
                weight_map[tensor] = name
            total += handle.tell()
        os.sync()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dense / "model.safetensors.index.json").write_text(json.dumps(index))
    rows = [layout.layer_rows(layer) for layer in layout.layers]
    return f"{total / 1e9:.2f} GB, rows {rows}"


def step_copy(work: Path) -> str:
    shutil.rmtree(work / "dense.zarr", ignore_errors=True)
    started = time.perf_counter()
    doc = json.loads(
        cli(
            "import",
            work / "dense",
            work / "dense.zarr",
            "--vocab",
            work / "vocab.parquet",
            "--json",
        )  # fmt: skip
    )
    rate = doc["logical_bytes"] / (time.perf_counter() - started) / 1e9
    return f"{doc['logical_bytes'] / 1e9:.2f} GB copied into chunks, {rate:.2f} GB/s"


def step_deep(work: Path) -> str:
    shutil.rmtree(work / "dense-link.zarr", ignore_errors=True)
    cli("import", work / "dense", work / "dense-link.zarr", "--link", "--vocab",
        work / "vocab.parquet", "--json")  # fmt: skip
    started = time.perf_counter()
    doc = json.loads(cli("verify", work / "dense-link.zarr", "--deep", "--json"))
    assert doc["ok"], doc["problems"]
    copied = json.loads((work / "dense.zarr" / "zarr.json").read_text())["attributes"]
    linked = json.loads((work / "dense-link.zarr" / "zarr.json").read_text())["attributes"]
    crc = {k: {c: e[0] for c, e in v.items()} for k, v in copied["engramctl_manifest"].items()}
    crc_link = {k: {c: e[0] for c, e in v.items()} for k, v in linked["engramctl_manifest"].items()}
    assert crc == crc_link, "the link's chunk checksums differ from the copy's"
    rate = doc["bytes_checked"] / (time.perf_counter() - started) / 1e9
    return f"{doc['chunks_checked']} chunk checksums of the link = the copy's, {rate:.2f} GB/s"


def step_export(work: Path) -> str:
    shutil.rmtree(work / "dense-out", ignore_errors=True)
    started = time.perf_counter()
    doc = json.loads(
        cli(
            "export",
            work / "dense.zarr",
            work / "dense-out",
            "--format",
            "deepseek",
            "--max-shard-size",
            "200MB",
            "--json",
        )  # fmt: skip
    )
    rate = doc["bytes"] / (time.perf_counter() - started) / 1e9
    return f"{len(doc['shards'])} shards, {doc['bytes'] / 1e9:.2f} GB, {rate:.2f} GB/s"


STEPS = {
    "build": step_build,
    "import --link": step_link,
    "info": step_info,
    "verify": step_verify,
    "gather": step_gather,
    "pager (1M-row cache)": step_pager,
    "build dense (~0.5 GB)": step_dense,
    "import (copy)": step_copy,
    "link + verify --deep": step_deep,
    "export --format deepseek": step_export,
}


def run_step(name: str, work: Path) -> None:
    started = time.perf_counter()
    note = STEPS[name](work)
    print(json.dumps({"step": name, "seconds": time.perf_counter() - started,
                      "peak_rss": peak_rss(), "note": note}))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, args.dir)
        return 0
    from tests.table.ckpt_util import sparse_files_supported

    work = args.dir or Path(tempfile.mkdtemp(prefix="engram-v41-"))
    work.mkdir(parents=True, exist_ok=True)
    if not sparse_files_supported(work):
        print(f"skipped: {work}'s file system does not keep sparse files (203 GB would be real)")
        return 0
    print(f"sparse DeepSeek-V4.1 checkpoint in {work}; text: {TEXT!r}")
    print(f"{'step':<22} {'seconds':>8} {'peak RSS':>10}  result")
    failed = False
    try:
        for name in STEPS:
            proc = subprocess.run(
                [sys.executable, __file__, "--step", name, "--dir", str(work)],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            if proc.returncode:
                print(f"{name:<22} FAILED\n{proc.stderr[-3000:]}")
                return 1
            doc = json.loads(proc.stdout.strip().splitlines()[-1])
            rss = doc["peak_rss"]
            flag = "" if rss < RSS_LIMIT else "  OVER 1 GiB"
            failed |= bool(flag)
            print(f"{name:<22} {doc['seconds']:8.2f} {rss / 2**20:7.0f} MiB  {doc['note']}{flag}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print("every step under 1 GiB peak RSS" if not failed else "a step went over 1 GiB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
