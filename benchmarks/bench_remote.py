"""Links where the checkpoint lies: gather rows/s from loopback HTTP and S3 servers vs a local link.

Target (issue 22): rows/s from the loopback S3 and HTTP servers against the local link, with and
without ``--cache-dir`` warm. Builds a dense checkpoint (2 layers x ``--rows`` random valid fp8
rows of 264 B), serves it from a Python HTTP server with Range support and from moto's S3 server
(each its own process on 127.0.0.1), links it three ways (``import --link`` of the directory, of
``http://...`` and of ``s3://...``) and gathers ``--n`` uniform random rows of layer 1, best of
``--repeats``, each case in a fresh process (its peak RSS is its own; opening the layer, which
for a URL checks each object's size, ETag and header, is timed apart as ``open s``):

- ``local``: the local link, page-cached (the bar);
- ``http`` / ``s3``: every block fetched by range and checked (a fresh table each repeat);
- ``http+cache`` / ``s3+cache``: the same with ``--cache-dir``, the cache filled by a first
  gather of the same rows (the warm case: blocks read back from local disk and checked).

The servers are Python processes on this machine: their speed (not the network's) bounds the
remote cases; the ratio shows what a gather costs over a fetch path, not what a real S3 gives.

Usage: python benchmarks/bench_remote.py [--rows 250000] [--n 20000] [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from _common import peak_rss_mib, run_json_case

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
BUCKET = "bench"
KEYS = {"key": "bench", "secret": "bench"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_checkpoint(work: Path, rows_per_layer: int):
    """A dense 2-layer checkpoint (one shard per layer) and its vocab file."""
    from engramctl.layout import EngramLayout
    from engramctl.model_config import EngramModelConfig
    from engramctl.table.formats.checkpoint_export import safetensors_header
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    vocab.save(work / "vocab.parquet")
    per_head = max(2, rows_per_layer // 16)
    layout = EngramLayout(
        ngram_vocab=(per_head, per_head), max_ngram=3, heads=8, layers=(1, 2), seed=0, pad_id=2,
        vocab_size=vocab.canonical_vocab_size,
    )  # fmt: skip
    ckpt = work / "ckpt"
    ckpt.mkdir()
    config = EngramModelConfig.from_layout(layout, head_dim=256).to_dict()
    (ckpt / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(1)
    weight_map = {}
    for i, layer_id in enumerate(layout.layers):
        rows = layout.layer_rows(layer_id)
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        parts = [(f"layers.{layer_id}.engram.embed.weight", "F8_E4M3", 256),
                 (f"layers.{layer_id}.engram.embed.scale", "F8_E8M0", 8)]  # fmt: skip
        with open(ckpt / name, "wb") as handle:
            handle.write(safetensors_header([(n, d, [rows, w], rows * w) for n, d, w in parts]))
            for tensor, _, width in parts:
                if width == 256:
                    block = rng.integers(0, 256, size=(rows, width), dtype=np.uint8)
                    block[(block & 0x7F) == 0x7F] = 0x11
                else:
                    block = rng.integers(110, 135, size=(rows, width), dtype=np.uint8)
                handle.write(block.tobytes())
                weight_map[tensor] = name
    index = {"metadata": {}, "weight_map": weight_map}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return layout


def serve_http(root: str, port: int) -> None:
    """The loopback HTTP server (Range, ETag), until killed."""
    from functools import partial
    from http.server import ThreadingHTTPServer

    sys.path.insert(0, str(REPO))
    from tests.table.sources.test_remote_link import RangeHandler

    class KeepAlive(RangeHandler):
        protocol_version = "HTTP/1.1"  # connections reused, as real servers do

    server = ThreadingHTTPServer(("127.0.0.1", port), partial(KeepAlive, directory=root))
    server.ignore_range = False
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()


def wait_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error: the server answers
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server at {url} did not start") from None
            time.sleep(0.2)


def gather_case(table: str, n: int, repeats: int, warm_first: bool, seed: int) -> dict:
    """Best-of-``repeats`` rows/s of a uniform gather of ``n`` rows of layer 1 (fresh process)."""
    from engramctl.table.sources.table import open_table

    os.environ.setdefault("AWS_ACCESS_KEY_ID", KEYS["key"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", KEYS["secret"])
    with open_table(table) as t:
        rows = t.meta.layer(1).rows
    ids = np.random.default_rng(seed).integers(0, rows, n)
    if warm_first:  # the cache (or page cache) filled by one gather of the same rows
        with open_table(table) as t:
            t.gather(1, ids)
    best, opened, digest = float("inf"), float("inf"), None
    for _ in range(repeats):
        with open_table(table) as t:
            started = time.perf_counter()
            t.source.layer(1)  # open: a remote link checks each object's size, ETag and header
            opened = min(opened, time.perf_counter() - started)
            started = time.perf_counter()
            got = t.gather(1, ids)
            best = min(best, time.perf_counter() - started)
        digest = int(np.bitwise_xor.reduce(got.view(np.uint64), axis=None))
    return {"rows_per_s": n / best, "seconds": best, "open_s": opened, "peak_rss_mib": hwm_mib(),
            "xor": digest}  # fmt: skip


def hwm_mib() -> float:
    """This process's peak RSS (``VmHWM``: reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent that forked it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000, help="rows per layer")
    parser.add_argument("--n", type=int, default=20_000, help="rows per gather")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--case", nargs=3, metavar=("TABLE", "WARM", "SEED"), help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-http", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_http:
        return serve_http(args.serve_http[0], int(args.serve_http[1]))
    if args.case:
        table, warm, seed = args.case
        print(json.dumps(gather_case(table, args.n, args.repeats, warm == "1", int(seed))))
        return None
    try:
        import moto  # noqa: F401
        import s3fs
    except ImportError:
        print("bench_remote: moto and s3fs are needed (pip install moto[server] s3fs); skipped")
        return None

    from engramctl.table.formats.checkpoint_import import import_checkpoint
    from engramctl.vocab import CanonicalVocab

    work = Path(tempfile.mkdtemp(prefix="engram-remote-", dir=args.dir))
    procs = []
    try:
        build_checkpoint(work, args.rows)
        vocab = CanonicalVocab.load(work / "vocab.parquet")
        size = sum(f.stat().st_size for f in (work / "ckpt").iterdir())
        http_port, s3_port = free_port(), free_port()
        procs.append(
            subprocess.Popen([sys.executable, str(HERE), "--serve-http", str(work), str(http_port)])
        )
        log = open(work / "moto.log", "wb")  # noqa: SIM115
        moto_cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
        procs.append(subprocess.Popen(moto_cmd, stdout=log, stderr=subprocess.STDOUT))
        http, endpoint = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{s3_port}"
        wait_up(f"{http}/ckpt/config.json", procs[0])
        wait_up(endpoint, procs[1])
        options = {**KEYS, "endpoint_url": endpoint}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        fs.put(str(work / "ckpt"), f"{BUCKET}/ckpt", recursive=True)
        links = {}
        for name, source, extra in (
            ("local", work / "ckpt", {}),
            ("http", f"{http}/ckpt", {}),
            ("http+cache", f"{http}/ckpt", {"cache_dir": work / "cache-http"}),
            ("s3", f"s3://{BUCKET}/ckpt", {"storage_options": options}),
            ("s3+cache", f"s3://{BUCKET}/ckpt",
             {"storage_options": options, "cache_dir": work / "cache-s3"}),
        ):  # fmt: skip
            started = time.perf_counter()
            import_checkpoint(source, work / f"{name}.zarr", vocab=vocab, link=True, **extra)
            links[name] = time.perf_counter() - started
        print(
            f"checkpoint: 2 layers x {args.rows:,} rows, {size / 2**20:.0f} MiB; gather of "
            f"{args.n:,} uniform rows of layer 1, best of {args.repeats}, fresh process per case"
        )
        print(
            f"{'case':<12}{'link s':>8}{'open s':>8}{'rows/s':>12}{'vs local':>10}{'peak RSS':>11}"
        )
        base = None
        digests = set()
        for name in links:
            warm = name == "local" or name.endswith("+cache")
            table = str(work / f"{name}.zarr")
            doc = run_json_case(str(HERE), "--case", table, "1" if warm else "0", "7",
                                "--n", str(args.n), "--repeats", str(args.repeats))  # fmt: skip
            base = base or doc["rows_per_s"]
            digests.add(doc["xor"])
            print(
                f"{name:<12}{links[name]:>8.2f}{doc['open_s']:>8.3f}{doc['rows_per_s']:>12,.0f}"
                f"{doc['rows_per_s'] / base:>9.3f}x{doc['peak_rss_mib']:>8.0f} MiB"
            )
        print("rows identical in every case" if len(digests) == 1 else "ROWS DIFFER between cases")
        if len(digests) != 1:
            raise SystemExit(1)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return None


if __name__ == "__main__":
    main()
