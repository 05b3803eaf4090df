"""``build-counts --scheduler``: the memory built on Dask is one process's, bit for bit (every
array file, every metadata figure but the time), for shards cut at document starts and inside
documents, held-out pairs on both sides of a shard boundary, with and without --partitions;
killed workers re-run; refusals are one line."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.counts import BuildCountsJob, build_counts
from engramctl.errors import EngramError, UsageError
from tests.conftest import KillOneWorker

from .conftest import random_docs, resolved, write_token_corpus

SEP = 3  # the document separator of the flat token stream
TIMES = ("build_seconds", "meta_sha256")  # the time, and the checksum that covers it


@pytest.fixture(scope="module")
def layout(tiny_vocab):
    """Small heads (collisions) and two layers."""
    from tests.conftest import make_layout

    return make_layout((1009, 1013), vocab_size=tiny_vocab.canonical_vocab_size, layers=(1, 4))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, tiny_vocab):
    """JSON Lines of ids (one document a line) and a flat uint16 stream with separators
    (long documents: shards cut inside them)."""
    root = tmp_path_factory.mktemp("dcounts")
    V = tiny_vocab.source_vocab_size
    jsonl = write_token_corpus(root / "c.jsonl", random_docs(3, V, count=120, high=80))
    docs = random_docs(4, V, count=12, low=40, high=400)
    stream = np.concatenate([np.append(d[d != SEP], SEP) for d in docs]).astype(np.uint16)
    stream.tofile(root / "s.u16")
    return {"jsonl": jsonl, "stream": root / "s.u16"}


def _options(kind):
    if kind == "jsonl":
        return CorpusOptions(tokens_field="ids", batch_tokens=97)
    return CorpusOptions(doc_sep_id=SEP, batch_tokens=97)


def _job(corpora, kind, out, **fields):
    return BuildCountsJob(inputs=(str(corpora[kind]),), out=out, top_k=2,
                          corpus=_options(kind), **fields)  # fmt: skip


def assert_same_memory(a, b):
    """Every file of two memories byte for byte, zarr.json but its time and checksum."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "zarr.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta = [json.loads((d / "zarr.json").read_text()) for d in (a, b)]
    for doc in meta:
        for key in TIMES:
            doc["attributes"]["engramctl_counts"].pop(key)
    assert meta[0] == meta[1]


class Calls(list):
    """A progress callback that keeps its calls."""

    def __call__(self, *args):
        self.append(args)


def _in_process_client():
    """A cluster in this process (so a monkeypatch reaches its tasks), one worker thread (numba's
    workqueue layer refuses parallel kernels launched from two threads at once)."""
    distributed = pytest.importorskip("distributed")
    return distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                              dashboard_address=":0")  # fmt: skip


# ------------------------------------------------- in one process (patchable): the held-out cap
@pytest.mark.parametrize("kind", ["jsonl", "stream"])
def test_heldout_pairs_across_shard_boundaries(kind, corpora, tiny_vocab, layout, tmp_path,
                                                monkeypatch):  # fmt: skip
    """A cap of 64 held-out pairs (blocks of 16, 1280 pairs where they may be): shards before,
    across and past that point; the same memory as one process, with and without buckets."""
    import engramctl.counts.buildparts as parts
    import engramctl.counts.dask_tasks as tasks
    from engramctl.counts.build_dask import build_counts_dask

    monkeypatch.setattr(parts, "HELDOUT_CAP", 64)
    monkeypatch.setattr(parts, "HEAD_PAIRS", 64 * parts.HELDOUT_EVERY)
    monkeypatch.setattr(tasks, "HEAD_PAIRS", 64 * parts.HELDOUT_EVERY)
    one = build_counts(job=_job(corpora, kind, tmp_path / "one.zarr"), vocab=tiny_vocab,
                       layout=resolved(layout))  # fmt: skip
    assert one.heldout_pairs == 64 and one.pairs > 2 * 1280 and one.full_rows > 0
    with _in_process_client() as client:
        for partitions in (0, 3):
            out = tmp_path / f"d{partitions}.zarr"
            report = build_counts_dask(
                job=_job(corpora, kind, out, partitions=partitions),
                vocab=tiny_vocab,
                layout=resolved(layout),
                client=client,
                shard_bytes={"jsonl": 2000, "stream": 700}[kind],
            )
            assert_same_memory(tmp_path / "one.zarr", out)
            assert report.heldout_pairs == 64 and report.pairs == one.pairs
            assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left


def test_buckets_fit_half_the_budget_and_one_per_worker():
    from engramctl.counts.build_dask import choose_buckets

    assert choose_buckets(5, 2, 10**6, 3, 10**5, 8, 1 << 30) == 5  # --partitions
    assert choose_buckets(0, 3, 10**6, 3, 10, 8, 1 << 30) == 3  # small: one per worker
    rows = 10**6  # every row reached: 10**6 x 80 B / 0.7 x 2 = 229 MB, buckets of <= 16 MB
    assert choose_buckets(0, 2, rows, 3, 10**9, 8, 32 << 20) == 14
    assert choose_buckets(0, 2, 10**12, 3, 10**12, 8, 1 << 20) == 256  # at most 256


def test_shards_cut_inside_documents_start_from_their_context(corpora):
    from engramctl.corpus.files import discover_files
    from engramctl.corpus.readers import token_context
    from engramctl.corpus.shards import split_files

    options = _options("stream")
    shards = split_files(discover_files([str(corpora["stream"])]), options, 700)
    inside = [s for s in shards if not token_context(s, options, 3)[1]]
    assert len(shards) > 4 and len(inside) >= 2  # the priming path is exercised


# ------------------------------------------------------------------- a real LocalCluster
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from engramctl.cluster import open_client

    with open_client("local:2") as c:
        yield c


@pytest.fixture(scope="module")
def one_jsonl(tmp_path_factory, corpora, tiny_vocab, layout):
    """The JSON Lines corpus's memory built in one process."""
    out = tmp_path_factory.mktemp("one") / "one.zarr"
    build_counts(job=_job(corpora, "jsonl", out), vocab=tiny_vocab, layout=resolved(layout))
    return out


def test_local_cluster_memory_equals_one_process(client, corpora, one_jsonl, tiny_vocab, layout,
                                                 tmp_path):  # fmt: skip
    from engramctl.counts.build_dask import build_counts_dask

    client.wait_for_workers(2, timeout=60)
    seen = Calls()
    out = tmp_path / "d.zarr"
    report = build_counts_dask(job=_job(corpora, "jsonl", out), vocab=tiny_vocab,
                               layout=resolved(layout), client=client, shard_bytes=4000,
                               progress=seen)  # fmt: skip
    assert_same_memory(one_jsonl, out)
    assert report.heldout_pairs > 0 and report.full_rows > 0
    assert seen[-1][0] == seen[-1][1] and seen[-1][3] == report.tokens and len(seen) > 3


def test_killed_worker_is_rerun_and_the_memory_is_the_same(client, corpora, one_jsonl,
                                                           tiny_vocab, layout,
                                                           tmp_path):  # fmt: skip
    from engramctl.counts.build_dask import build_counts_dask

    client.wait_for_workers(2, timeout=60)
    kill_one = KillOneWorker(client)

    out = tmp_path / "d.zarr"
    build_counts_dask(job=_job(corpora, "jsonl", out), vocab=tiny_vocab, layout=resolved(layout),
                      client=client, shard_bytes=1500, progress=kill_one)  # fmt: skip
    assert kill_one.killed
    assert_same_memory(one_jsonl, out)


def test_append_on_dask_equals_append_in_one_process(client, corpora, tiny_vocab, layout,
                                                      tmp_path):  # fmt: skip
    """The memory's rows are each bucket's starting state; the same commit as one process's."""
    import shutil

    from engramctl.counts import open_counts, verify_counts
    from engramctl.counts.build_dask import build_counts_dask

    client.wait_for_workers(2, timeout=60)
    base = tmp_path / "base.zarr"
    build_counts(job=_job(corpora, "stream", base), vocab=tiny_vocab, layout=resolved(layout))
    for name in ("one.zarr", "dask.zarr"):
        shutil.copytree(base, tmp_path / name)
    build_counts(job=_job(corpora, "jsonl", tmp_path / "one.zarr", append=True),
                 vocab=tiny_vocab, layout=resolved(layout))  # fmt: skip
    build_counts_dask(job=_job(corpora, "jsonl", tmp_path / "dask.zarr", append=True,
                               partitions=3), vocab=tiny_vocab, layout=resolved(layout),
                      client=client, shard_bytes=4000)  # fmt: skip
    assert_same_memory(tmp_path / "one.zarr", tmp_path / "dask.zarr")
    store = open_counts(tmp_path / "dask.zarr")
    assert store.meta["generation"] == 1 and verify_counts(tmp_path / "dask.zarr") == []
    assert store.meta["corpus"]["tokens"] > open_counts(base).meta["corpus"]["tokens"]


def test_refusals_are_one_line(tmp_path, corpora, tiny_vocab, layout):
    with pytest.raises(UsageError, match="--limit-tokens .* drop --scheduler"):
        _job(corpora, "jsonl", tmp_path / "a.zarr", limit_tokens=5, scheduler="local:2").check()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = _job(corpora, "jsonl", tmp_path / "b.zarr", scheduler=f"127.0.0.1:{port}")
    with pytest.raises(EngramError, match="cannot reach the dask scheduler"):
        build_counts(job=job, vocab=tiny_vocab, layout=resolved(layout))
    assert not (tmp_path / "b.zarr").exists()
    from typer.testing import CliRunner

    from engramctl.cli import app

    tiny_vocab.save(tmp_path / "vocab.parquet")
    base = ["build-counts", corpora["jsonl"], "--vocab", tmp_path / "vocab.parquet",
            "--tokens-field", "ids", "--ngram-vocab", "1009,1013", "--max-ngram", 3, "--heads",
            2, "--out", tmp_path / "c.zarr"]  # fmt: skip
    for extra, code, message in (
        (["--scheduler", f"127.0.0.1:{port}"], 1, "cannot reach the dask scheduler"),
        (["--scheduler", "local:2", "--limit-tokens", 9], 2, "drop --scheduler"),
    ):
        result = CliRunner().invoke(app, [str(a) for a in (*base, *extra)])
        assert result.exit_code == code and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "c.zarr").exists()


def test_cli_scheduler_text_memory_equals_one_process(client, tiny_vocab, tiny_tokenizer_path,
                                                      layout, tmp_path):  # fmt: skip
    """Text tokenized on the workers, through the CLI and a scheduler address."""
    from typer.testing import CliRunner

    from engramctl.cli import app
    from tests.conftest import TINY_TOKENS

    client.wait_for_workers(2, timeout=60)
    rng = np.random.default_rng(7)
    words = [t for t in TINY_TOKENS if not t.startswith("<")]
    lines = [" ".join(rng.choice(words, int(rng.integers(2, 40)))) for _ in range(150)]
    corpus = tmp_path / "text.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    tiny_vocab.save(tmp_path / "vocab.parquet")
    base = ["build-counts", corpus, "--vocab", tmp_path / "vocab.parquet", "--tokenizer",
            tiny_tokenizer_path, "--ngram-vocab", "1009,1013", "--max-ngram", 3, "--heads", 2,
            "--layers", "1,4", "--top-k", 2, "--json"]  # fmt: skip
    runs = {}
    for name, extra in (("one", []), ("dask", ["--scheduler", client.scheduler.address])):
        result = CliRunner().invoke(app, [str(a) for a in (*base, "--out", tmp_path / name,
                                                           *extra)])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.output)
    assert_same_memory(tmp_path / "one", tmp_path / "dask")
    assert runs["one"]["heldout_pairs"] > 0 and runs["one"]["full_rows"] > 0
    local = ("seconds", "path", "disk", "scratch_bytes")  # (one process projects its disk)
    assert {k: v for k, v in runs["one"].items() if k not in local} == \
        {k: v for k, v in runs["dask"].items() if k not in local}  # fmt: skip


def test_bad_input_on_a_worker_is_one_error_and_writes_nothing(tmp_path, tiny_vocab, layout,
                                                                monkeypatch):  # fmt: skip
    import engramctl.counts.build_dask as module

    V = tiny_vocab.source_vocab_size
    docs = random_docs(5, V, count=40)
    docs[30] = np.array([1, V + 5, 2])
    corpus = write_token_corpus(tmp_path / "bad.jsonl", docs)
    job = BuildCountsJob(inputs=(str(corpus),), out=tmp_path / "out.zarr", top_k=2,
                         corpus=CorpusOptions(tokens_field="ids"))  # fmt: skip
    with _in_process_client() as client:
        with pytest.raises(EngramError, match=rf"bad.jsonl line 31: token id {V + 5} is outside"):
            module.build_counts_dask(job=job, vocab=tiny_vocab, layout=resolved(layout),
                                     client=client, shard_bytes=300)  # fmt: skip
        assert not [p for p in tmp_path.iterdir() if p.name != "bad.jsonl"]
        monkeypatch.setattr(module, "missing_directory", lambda path: [path])  # a worker elsewhere
        write_token_corpus(corpus, docs[:30])
        with pytest.raises(EngramError, match="needs --out on a file system every worker"):
            module.build_counts_dask(job=job, vocab=tiny_vocab, layout=resolved(layout),
                                     client=client)  # fmt: skip
        assert not [p for p in tmp_path.iterdir() if p.name != "bad.jsonl"]


def _dies(*args):
    """A task whose workers kept dying (what the scheduler raises after allowed-failures)."""
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    raise KilledWorker("engramctl-counts-s0", SimpleNamespace(address="tcp://w:1"), 3)


def test_workers_that_keep_dying_are_one_error(corpora, tiny_vocab, layout, tmp_path,
                                               monkeypatch):  # fmt: skip
    import engramctl.counts.build_dask as module

    out = tmp_path / "out.zarr"
    with _in_process_client() as client:
        for task in ("pair_shard", "count_bucket"):
            with monkeypatch.context() as patch:
                patch.setattr(module, task, _dies)
                with pytest.raises(EngramError) as info:
                    module.build_counts_dask(job=_job(corpora, "jsonl", out), vocab=tiny_vocab,
                                             layout=resolved(layout), client=client,
                                             shard_bytes=1500)  # fmt: skip
            message = str(info.value)
            assert message.startswith("dask workers kept dying while building the count memory")
            assert "\n" not in message and "nothing was written" in message
            assert not list(tmp_path.iterdir())
