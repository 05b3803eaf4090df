"""build-counts' disk: the projection before the pass (held to what a build writes), the
refusal and the warning it leads to, and a disk filling up mid-build (one line, nothing kept)."""

from __future__ import annotations

import errno
import logging
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions, discover_files
from engramctl.counts import (
    BuildCountsJob,
    accumulate,
    build_counts,
    disk,
    open_counts,
    verify_counts,
)
from engramctl.counts import build as build_module
from engramctl.counts.disk import corpus_tokens, estimate_disk
from engramctl.errors import EngramError

from .conftest import random_docs, resolved

SEP = 0  # the document separator of the flat token corpora
Usage = namedtuple("Usage", "total used free")


def write_u32(path: Path, docs) -> Path:
    """A flat uint32 token stream, documents ended by :data:`SEP` (ids shifted past it)."""
    parts = [np.append(np.asarray(d, np.uint32) + 1, SEP) for d in docs]
    np.concatenate(parts).astype(np.uint32).tofile(path)
    return path


@pytest.fixture
def corpus(tmp_path, tiny_vocab):
    docs = random_docs(5, tiny_vocab.source_vocab_size - 1, count=40, low=20, high=80)
    return write_u32(tmp_path / "c.u32", docs)


def job(tmp_path, corpus, **kw):
    options = CorpusOptions(doc_sep_id=SEP, batch_tokens=512)
    return BuildCountsJob(inputs=(str(corpus),), out=tmp_path / "m.zarr", corpus=options, **kw)


def leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("c.u32", "c.jsonl"))


def free_space(monkeypatch, free: int) -> None:
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10 * free, 0, free))


def test_projection_bounds_what_a_partitioned_build_writes(tmp_path, tiny_vocab, wide_layout,
                                                           corpus, monkeypatch):  # fmt: skip
    """The scratch the accumulator counts is the bucket files' real size, between the low and
    the central projection; the memory stays under its upper bound."""
    real = {}
    finish = accumulate.PairAccumulator.finish

    def measured(self, *args, **kw):
        real["scratch"] = sum(p.stat().st_size for p in self.workdir.iterdir())
        return finish(self, *args, **kw)

    monkeypatch.setattr(accumulate.PairAccumulator, "finish", measured)
    report = build_counts(job=job(tmp_path, corpus, partitions=3), vocab=tiny_vocab,
                          layout=resolved(wide_layout))  # fmt: skip
    projected = report.disk
    assert projected["exact"] and projected["spills"] == "always"
    assert projected["tokens"] == projected["tokens_low"] == corpus.stat().st_size // 4
    assert report.scratch_bytes == real["scratch"] > 0
    G = projected["columns"]
    pairs_scratch = 12 * G * (report.pairs - report.heldout_pairs)
    assert pairs_scratch <= report.scratch_bytes <= pairs_scratch + 3 * 4096  # + 3 saved states
    assert projected["spill_low"] <= report.scratch_bytes <= projected["spill"] + 3 * 4096
    assert projected["memory_low"] <= report.bytes <= projected["memory"]


def test_a_build_in_ram_writes_no_scratch(tmp_path, tiny_vocab, wide_layout, corpus):
    report = build_counts(job=job(tmp_path, corpus), vocab=tiny_vocab,
                          layout=resolved(wide_layout))  # fmt: skip
    assert report.scratch_bytes == 0 and report.disk["spills"] == "no"
    assert report.disk["spill"] == report.disk["spill_low"] == 0


def test_estimate_by_hand():
    """Three columns (level 1 of 10 rows, two hashed of 1,000), 1,000 exact tokens."""
    rows = np.array([10, 1000, 1000])
    kw = dict(tokens=1000, tokens_low=1000, exact=True, column_rows=rows, top_k=2,
              vocab_size=7, heldout_cap=30, where=Path("."))  # fmt: skip
    e = estimate_disk(budget=1 << 30, partitions=2, **kw)
    pairs = 1000 - 30  # 5% held out, capped at 30
    assert e.spills == "always" and e.columns == 3
    assert e.spill == 12 * 3 * pairs
    assert e.spill_low == int(12 * 3 * pairs * 15 / 16)  # one token in 16 starts a document
    occupied = 10 * -np.expm1(-pairs / 10) + 2 * 1000 * -np.expm1(-pairs / 1000)
    assert e.memory == int(32 * (occupied + 1) + 16 * 7)
    assert e.needed == e.spill + e.memory
    roomy = estimate_disk(budget=1 << 30, partitions=0, **kw)  # 1 GiB holds every row
    assert roomy.spills == "no" and roomy.spill == roomy.spill_low == 0
    tight = estimate_disk(budget=4096, partitions=0, **kw)  # ~90 rows fill it
    assert tight.spills == "likely" and 0 < tight.spill_low < tight.spill < e.spill + 4096


def test_corpus_tokens(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 50), np.int64))  # 8-byte ids: the header counts
    (tmp_path / "b.txt").write_text("x" * 3000)
    options = CorpusOptions()
    npy = discover_files([str(tmp_path / "a.npy")])
    assert corpus_tokens(npy, options) == (150, 150, True)
    text = discover_files([str(tmp_path / "b.txt")])
    assert corpus_tokens(text, options) == (1000, 333, False)
    assert corpus_tokens(text, options, limit=200) == (200, 200, True)  # the low end passes it
    assert corpus_tokens(text, options, limit=500) == (500, 333, False)


def test_refused_before_any_work_when_the_scratch_cannot_fit(tmp_path, tiny_vocab, wide_layout,
                                                             corpus, monkeypatch):  # fmt: skip
    free_space(monkeypatch, 50_000)
    monkeypatch.setattr(build_module, "PairAccumulator", None)  # any work would fail otherwise
    with pytest.raises(EngramError) as caught:
        build_counts(job=job(tmp_path, corpus, partitions=2), vocab=tiny_vocab,
                     layout=resolved(wide_layout))  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message
    assert "not enough disk for build-counts" in message and "48.8 KiB is free" in message
    assert "--out on a larger file system" in message and "--limit-tokens" in message
    assert leftovers(tmp_path) == []


def test_refusal_on_the_command_line(tmp_path, tiny_vocab, corpus, monkeypatch):
    from typer.testing import CliRunner

    from engramctl.cli import app

    tiny_vocab.save(tmp_path / "v.parquet")
    free_space(monkeypatch, 10_000)
    args = ["build-counts", corpus, "--vocab", tmp_path / "v.parquet", "--out",
            tmp_path / "m.zarr", "--doc-sep-id", SEP, "--ngram-vocab", "20011,20021",
            "--max-ngram", 3, "--heads", 2, "--layers", 1, "--partitions", 2]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not enough disk" in lines[0], result.output
    assert leftovers(tmp_path) == ["v.parquet"]


def test_warned_but_built_when_the_memory_may_not_fit(tmp_path, tiny_vocab, wide_layout, corpus,
                                                      monkeypatch, caplog):  # fmt: skip
    layout = resolved(wide_layout)
    first = build_counts(job=job(tmp_path, corpus, partitions=2), vocab=tiny_vocab,
                         layout=layout).disk  # fmt: skip
    free_space(monkeypatch, (first["spill_low"] + first["needed"]) // 2)
    with caplog.at_level(logging.WARNING, logger="engramctl.counts.disk"):
        report = build_counts(job=job(tmp_path, corpus, partitions=2, overwrite=True),
                              vocab=tiny_vocab, layout=layout)  # fmt: skip
    assert report.tokens > 0
    assert any("may run out of disk" in r.getMessage() for r in caplog.records)


def _enospc(*args, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["spill", "write-out", "append"])
def test_a_full_disk_mid_build_is_one_line(tmp_path, tiny_vocab, wide_layout, corpus,
                                           monkeypatch, where):  # fmt: skip
    """ENOSPC while spilling pairs, while writing the memory, or while appending to one: one
    line, no half-written memory, an appended memory as it was."""
    layout = resolved(wide_layout)
    if where == "append":
        build_counts(job=job(tmp_path, corpus), vocab=tiny_vocab, layout=layout)
        before = {p.name: p.read_bytes() for p in (tmp_path / "m.zarr").iterdir()}
    calls = {"n": 0}
    add = accumulate.PairAccumulator.add

    def add_then_fill(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # a few batches in, after the spill began
            assert self.spilled
            _enospc()
        return add(self, *args, **kw)

    if where == "spill":
        monkeypatch.setattr(accumulate.PairAccumulator, "add", add_then_fill)
    else:
        monkeypatch.setattr(accumulate.NpyAppender, "append", _enospc)
    with pytest.raises(EngramError) as caught:
        build_counts(job=job(tmp_path, corpus, partitions=2, append=where == "append"),
                     vocab=tiny_vocab, layout=layout)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message and message.startswith("build-counts stopped: the disk is full")
    assert "nothing was kept" in message and "--out on a larger file system" in message
    if where == "append":  # the memory as it was: files, metadata, verify
        after = {p.name: p.read_bytes() for p in (tmp_path / "m.zarr").iterdir()}
        assert after == before and verify_counts(tmp_path / "m.zarr") == []
        open_counts(tmp_path / "m.zarr")
        assert leftovers(tmp_path) == ["m.zarr"]
    else:
        assert leftovers(tmp_path) == []


def test_a_batch_spills_between_its_slices_and_counts_the_same(tmp_path, monkeypatch):
    """In RAM a batch goes to the table a slice at a time; a budget passed mid-batch spills
    there and the rest of the batch goes to the bucket files: the memory is the one a build in
    RAM writes, bit for bit, and the table never held the whole batch's rows."""
    monkeypatch.setattr(accumulate, "MIN_SLICE", 256)
    rng = np.random.default_rng(3)
    P, G, R = 3000, 4, 5000
    rows = rng.integers(0, R, size=(P, G)) + np.arange(G) * R  # mostly new rows: the table grows
    targets = rng.zipf(1.3, size=P) % 50
    keep = rng.random(P) < 0.95
    starts = np.arange(G) * R
    written = {}
    for name, budget in (("ram", 1 << 30), ("spilled", 1 << 17)):
        acc = accumulate.PairAccumulator(total_rows=G * R, starts=starts, top_k=3, budget=budget,
                                         workdir=tmp_path / f"{name}.spill")  # fmt: skip
        acc.add(rows, targets, keep)
        if name == "spilled":  # spilled after slice j (0 < j < 12): the rest went to files
            assert acc.spilled and acc.slice_pairs(G) == 256
            states = sum(p.stat().st_size for p in acc.workdir.glob("state*.npz"))
            filed = (acc.scratch_bytes - states) // (12 * G)
            assert filed in [int(keep[256 * j :].sum()) for j in range(1, 12)]
        out = tmp_path / name
        out.mkdir()
        acc.finish(np.zeros((0, G), np.int64), np.zeros(0, np.int64), out)
        written[name] = {p.name: np.load(p) for p in out.iterdir()}
    assert written["ram"].keys() == written["spilled"].keys()
    for key, array in written["ram"].items():
        np.testing.assert_array_equal(array, written["spilled"][key])


def test_refused_when_the_memory_cannot_fit(tmp_path, tiny_vocab, wide_layout, corpus,
                                            monkeypatch):  # fmt: skip
    """No spill, but the memory's floor (Heaps' law from below) is more than is free."""
    layout = resolved(wide_layout)
    projected = build_counts(job=job(tmp_path, corpus), vocab=tiny_vocab, layout=layout).disk
    assert projected["spill_low"] == 0 < projected["memory_low"] <= projected["memory"]
    free_space(monkeypatch, projected["memory_low"] - 1)
    with pytest.raises(EngramError, match="the memory of .* needs .* at the least"):
        build_counts(job=job(tmp_path, corpus, overwrite=True), vocab=tiny_vocab, layout=layout)
    free_space(monkeypatch, projected["memory_low"])  # at the floor: warned, built
    build_counts(job=job(tmp_path, corpus, overwrite=True), vocab=tiny_vocab, layout=layout)
