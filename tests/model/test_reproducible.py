"""Training is bit-reproducible whatever the thread counts and however slow the producers are.

Two runs of one seed on a real zarr table: one with the process's torch and numba pools at one
thread, the other at two (or more) threads with a deliberately slowed corpus tokenizer (the
background producer) and a slowed table gather. Checkpoint bytes and table rows must be equal.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from tests.conftest import SAMPLE, read_jsonl  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402

TINY = ["--depth", "2", "--width", "32", "--attn-heads", "2", "--seq-len", "32", "--batch", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = read_jsonl(SAMPLE / "train.jsonl")[:6]
    (root / "train.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    held = read_jsonl(SAMPLE / "heldout.jsonl")[0]
    held["text"] = held["text"][:4000]
    (root / "heldout.jsonl").write_text(json.dumps(held) + "\n")
    return root


def train_once(tmp_path, corpus, ds_vocab, ds_vocab_path, name, *, threads, slow, monkeypatch):
    import numba

    from engramctl.corpus.tokenize import TextTokenizer
    from engramctl.table.sources.table import Table

    table = tmp_path / f"{name}.zarr"
    small_real_table(table, ds_vocab, primes=(401, 409))
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if slow:
        encode, gather = TextTokenizer.encode, Table.gather

        def slow_encode(self, texts):
            time.sleep(0.05)
            return encode(self, texts)

        def slow_gather(self, *args, **kwargs):
            time.sleep(0.001)
            return gather(self, *args, **kwargs)

        monkeypatch.setattr(TextTokenizer, "encode", slow_encode)
        monkeypatch.setattr(Table, "gather", slow_gather)
    out = tmp_path / name
    result = CliRunner().invoke(
        app,
        [
            str(a)
            for a in (
                "train",
                "--corpus",
                corpus / "train.jsonl",
                "--heldout",
                corpus / "heldout.jsonl",
                "--table",
                table,
                "--vocab",
                ds_vocab_path,
                "--out",
                out,
                "--steps",
                6,
                "--eval-every",
                3,
                "--min-count",
                1,
                "--device",
                "cpu",
                *TINY,
            )
        ],
    )
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    from engramctl.table.sources.table import open_table

    with open_table(table) as handle:
        rows = handle.gather(1, np.arange(handle.layout.layer_rows(1)))
    return out, rows


@pytest.mark.slow
def test_training_is_bit_identical_across_thread_counts_and_slow_producers(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        a, rows_a = train_once(
            tmp_path,
            corpus,
            ds_vocab,
            ds_vocab_path,
            "a",
            threads=1,
            slow=False,
            monkeypatch=monkeypatch,
        )
        b, rows_b = train_once(
            tmp_path,
            corpus,
            ds_vocab,
            ds_vocab_path,
            "b",
            threads=3,
            slow=True,
            monkeypatch=monkeypatch,
        )
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    assert torch.get_num_threads() == before[0]
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    np.testing.assert_array_equal(rows_a, rows_b)
    history_a = json.loads((a / "history.json").read_text())
    assert history_a == json.loads((b / "history.json").read_text())
    meta = json.loads((a / "config.json").read_text())
    assert meta["train"]["threads"] == 1
