"""The foundation commands through typer's CliRunner: build-vocab, layout, hash, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl import CanonicalVocab, EngramLayout, NgramHasher
from engramctl.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code: int | None = None):
    """Exit 1 or 2 (or ``code``), one ``error:`` line on stderr, nothing on stdout."""
    assert result.exit_code == code if code is not None else result.exit_code in (1, 2)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny_vocab_file(tiny_tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny.parquet"
    result = invoke("build-vocab", "--tokenizer", tiny_tokenizer_path, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------------------------- build-vocab
def test_build_vocab_json_and_reopen(tiny_tokenizer_path, tiny_vocab, tmp_path):
    out = tmp_path / "v.parquet"
    result = invoke("build-vocab", "-t", tiny_tokenizer_path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"source_vocab_size", "canonical_vocab_size", "reduction", "out"} <= set(doc)
    assert doc["out"] == str(out)
    assert doc["source_vocab_size"] == tiny_vocab.source_vocab_size
    assert doc["canonical_vocab_size"] == tiny_vocab.canonical_vocab_size
    assert doc["reduction"] == pytest.approx(tiny_vocab.reduction, abs=1e-6)
    back = CanonicalVocab.load(out)
    np.testing.assert_array_equal(back.canonical_ids, tiny_vocab.canonical_ids)
    assert back.source_sha256 == tiny_vocab.source_sha256
    assert back.metadata()["normalizer"].startswith("NFKC; NFD; StripAccents; Lowercase")


def test_build_vocab_human_output_and_overwrite(tiny_tokenizer_path, tmp_path):
    out = tmp_path / "v.parquet"
    result = invoke("build-vocab", "--tokenizer", tiny_tokenizer_path, "--out", out)
    assert result.exit_code == 0, result.output
    assert "canonical ids" in result.stdout and "largest merged groups" in result.stdout
    assert "Apple / apple / APPLE / ␣apple" in result.stdout
    again = invoke("build-vocab", "--tokenizer", tiny_tokenizer_path, "--out", out)
    assert "exists; pass --overwrite" in assert_one_error_line(again, 1)
    replaced = invoke("-q", "build-vocab", "-t", tiny_tokenizer_path, "-o", out, "--overwrite")
    assert replaced.exit_code == 0 and replaced.stdout == ""
    assert CanonicalVocab.load(out).source_vocab_size == 18


def test_build_vocab_bundled_deepseek(ds_vocab, tmp_path):
    out = tmp_path / "ds.parquet"
    result = invoke("build-vocab", "--out", out, "--json")  # deepseek-v4 is the default
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["source_vocab_size"] == 129280
    assert doc["canonical_vocab_size"] == ds_vocab.canonical_vocab_size
    assert 0.22 < doc["reduction"] < 0.25
    assert CanonicalVocab.load(out).fingerprint == ds_vocab.fingerprint


# --------------------------------------------------------------------------------------- layout
def test_layout_json_matches_library(tiny_vocab_file):
    result = invoke(
        "layout", "--vocab", tiny_vocab_file, "--ngram-vocab", "100,200", "--heads", "2",
        "--layers", "3,4", "--dim", "32", "--dtype", "bf16", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    vocab = CanonicalVocab.load(tiny_vocab_file)
    layout = EngramLayout.from_dict(doc["layout"])
    assert layout.vocab_size == vocab.canonical_vocab_size and layout.layers == (3, 4)
    assert doc["layers"]["3"]["head_rows"] == layout.head_rows(3).tolist() == [101, 103, 211, 223]
    assert doc["layers"]["4"]["head_offsets"] == layout.head_offsets(4).tolist()
    assert doc["row_bytes"] == 64 and doc["dtype"] == "bfloat16"
    assert doc["total_bytes"] == layout.total_rows * 64


def test_layout_human_output(tiny_vocab_file):
    result = invoke("layout", "--vocab", tiny_vocab_file, "--preset", "deepseek-v4.1")
    assert result.exit_code == 0, result.output
    assert "16,000,057" in result.stdout
    assert "264 bytes per row" in result.stdout and "188.8 GiB" in result.stdout
    last = result.stdout.rstrip().splitlines()[-1]  # the README pipes it to `tail -1`
    assert last.startswith("table at dim 256") and last.endswith("188.8 GiB on disk")


# ----------------------------------------------------------------------------------------- hash
def test_hash_ids_file_to_npz(tiny_vocab_file, tmp_path):
    vocab = CanonicalVocab.load(tiny_vocab_file)
    ids = np.random.default_rng(0).integers(-1, vocab.source_vocab_size, size=(3, 50))
    ids_path, out = tmp_path / "ids.npy", tmp_path / "rows.npz"
    np.save(ids_path, ids)
    flags = ["--preset", "demo-v1", "--heads", "3", "--layers", "2,7"]
    result = invoke("hash", "--vocab", tiny_vocab_file, *flags, "--ids-file", ids_path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    layout = EngramLayout.from_preset(
        "demo-v1", vocab_size=vocab.canonical_vocab_size, heads=3, layers=(2, 7)
    )
    expected = NgramHasher(layout, vocab).hash_reference(ids)
    with np.load(out) as saved:
        assert sorted(saved.files) == ["layer_2", "layer_7"]
        for layer in (2, 7):
            np.testing.assert_array_equal(saved[f"layer_{layer}"], expected[layer])
    table = invoke(
        "hash", "--vocab", tiny_vocab_file, *flags, "--ids-file", ids_path, "-o", out,
        "--overwrite", "--table-rows", "--json",
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    doc = json.loads(table.stdout)
    assert doc["out"] == str(out) and doc["ids"] == ids.tolist()
    offsets = layout.head_offsets(7)
    assert doc["layers"]["7"] == (expected[7] + offsets).tolist()


def test_hash_text_with_the_tokenizer_of_the_vocab(tiny_vocab_file, tiny_tokenizer_path):
    result = invoke(
        "hash", "--vocab", tiny_vocab_file, "--tokenizer", tiny_tokenizer_path, "--text",
        "Apple apple", "--layers", "1", "--heads", "2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tokens"] == ["Apple", " apple"]
    c = doc["canonical_ids"]
    assert c[0] == c[1]  # folded together
    rows = doc["layers"]["1"]
    assert len(rows) == 2 and len(rows[0]) == 4
    human = invoke(
        "hash", "--vocab", tiny_vocab_file, "--tokenizer", tiny_tokenizer_path, "--text",
        "Apple apple", "--layers", "1", "--heads", "2",
    )  # fmt: skip
    assert human.exit_code == 0 and "␣apple" in human.stdout and "2-gram heads" in human.stdout
    assert " ".join(str(r) for r in rows[1][:2]) in human.stdout


def test_hash_text_with_the_bundled_tokenizer(ds_vocab_path):
    result = invoke("hash", "--vocab", ds_vocab_path, "--text", "The cat", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tokens"] == ["The", " cat"]
    assert sorted(doc["layers"]) == ["1", "15"]  # demo-v1 is the default layout


def test_hash_text_refuses_a_tokenizer_other_than_the_vocabs(
    tiny_vocab_file, ds_vocab_path, tmp_path
):
    # vocab from the tiny tokenizer, text through the bundled DeepSeek one: refused
    result = invoke("hash", "--vocab", tiny_vocab_file, "--text", "The cat")
    assert "the vocab was built from another tokenizer" in assert_one_error_line(result, 1)
    # and the other way round, with the tiny tokenizer's path
    from tests.conftest import make_tiny_tokenizer_json

    tok = tmp_path / "tokenizer.json"
    tok.write_text(make_tiny_tokenizer_json())
    result = invoke("hash", "--vocab", ds_vocab_path, "--tokenizer", tok, "--text", "cat")
    assert "pass the matching --tokenizer" in assert_one_error_line(result, 1)


# ------------------------------------------------------------------------------------ bad input
def _write_bad_inputs(tmp_path, source_vocab_size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "notok.json").write_text('{"version": "1.0", "model": 3}')
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "foreign.parquet")
    np.save(tmp_path / "float.npy", np.zeros((2, 3), dtype=np.float32))
    np.save(tmp_path / "rank3.npy", np.zeros((1, 2, 3), dtype=np.int64))
    np.save(tmp_path / "big.npy", np.array([[1, source_vocab_size]]))
    np.save(tmp_path / "empty.npy", np.zeros((0,), dtype=np.int64))
    np.save(tmp_path / "ok.npy", np.array([1, 2, 3]))
    np.savez(tmp_path / "two.npz", a=np.arange(3), b=np.arange(3))


BAD_INPUTS = {
    "missing tokenizer": (["build-vocab", "-t", "{d}/nope.json", "-o", "{d}/o.parquet"], 1,
                          "tokenizer not found"),
    "unknown bundled tokenizer": (["build-vocab", "-t", "deepseek-v9", "-o", "{d}/o.parquet"], 1,
                                  "tokenizer not found: deepseek-v9"),
    "malformed tokenizer json": (["build-vocab", "-t", "{d}/bad.json", "-o", "{d}/o.parquet"], 1,
                                 "malformed tokenizer file"),
    "not a tokenizer": (["build-vocab", "-t", "{d}/notok.json", "-o", "{d}/o.parquet"], 1,
                        "not a Hugging Face tokenizer.json"),
    "output directory missing": (["build-vocab", "-t", "{tok}", "-o", "{d}/no/o.parquet"], 1,
                                 "does not exist"),
    "missing vocab": (["layout", "--vocab", "{d}/none.parquet"], 1, "vocab file not found"),
    "junk vocab": (["layout", "--vocab", "{d}/junk.parquet"], 1, "not an engramctl vocab file"),
    "foreign parquet": (["layout", "--vocab", "{d}/foreign.parquet"], 1,
                        "not an engramctl vocab file"),
    "ids wrong dtype": (["hash", "--vocab", "{v}", "--ids-file", "{d}/float.npy", "-o",
                         "{d}/o.npz"], 1, "must be integers"),
    "ids wrong rank": (["hash", "--vocab", "{v}", "--ids-file", "{d}/rank3.npy", "-o",
                        "{d}/o.npz"], 1, r"must be [T] or [B, T]"),
    "ids beyond vocab": (["hash", "--vocab", "{v}", "--ids-file", "{d}/big.npy", "-o",
                          "{d}/o.npz"], 1, "is at or above the tokenizer's vocab size"),
    "ids empty": (["hash", "--vocab", "{v}", "--ids-file", "{d}/empty.npy"], 1, "no token ids"),
    "ids npz": (["hash", "--vocab", "{v}", "--ids-file", "{d}/two.npz"], 1, "several arrays"),
    "ids missing": (["hash", "--vocab", "{v}", "--ids-file", "{d}/none.npy"], 1, "not found"),
    "ids not npy": (["hash", "--vocab", "{v}", "--ids-file", "{d}/junk.parquet"], 1,
                    "is not a .npy file"),
    "empty text": (["hash", "--vocab", "{v}", "--tokenizer", "{tok}", "--text", "", "-o",
                    "{d}/o.npz"], 1, "--text is empty"),
    "text and ids": (["hash", "--vocab", "{v}", "--text", "a", "--ids-file", "{d}/ok.npy"], 2,
                     "exactly one of --text or --ids-file"),
    "unknown preset": (["layout", "--vocab", "{v}", "--preset", "demo-v9"], 2,
                       "Invalid value for '--preset'"),
    "zero heads": (["layout", "--vocab", "{v}", "--heads", "0"], 2, "heads per n-gram order"),
    "max ngram 1": (["layout", "--vocab", "{v}", "--max-ngram", "1"], 2, "max n-gram order"),
    "ngram vocab 1": (["layout", "--vocab", "{v}", "--ngram-vocab", "1,5"], 2,
                      "n-gram vocab sizes must be at least 2"),
    "ngram vocab count": (["layout", "--vocab", "{v}", "--ngram-vocab", "5,5,5"], 2,
                          "expected 2 n-gram vocab sizes"),
    "ngram vocab text": (["layout", "--vocab", "{v}", "--ngram-vocab", "lots"], 2,
                         "expected comma-separated integers"),
    "negative layer": (["layout", "--vocab", "{v}", "--layers", "-1"], 2, "layer ids"),
    "empty layers": (["layout", "--vocab", "{v}", "--layers", ""], 2, "--layers: expected"),
    "pad id outside": (["layout", "--vocab", "{v}", "--pad-id", "999"], 2, "pad id 999"),
    "heads not a number": (["layout", "--vocab", "{v}", "--heads", "many"], 2,
                           "Invalid value for '--heads'"),
    "unknown option": (["layout", "--vocab", "{v}", "--bogus"], 2, "No such option: --bogus"),
    "missing vocab option": (["hash", "--text", "x"], 2, "Missing option '--vocab'"),
    "unknown dtype": (["layout", "--vocab", "{v}", "--dtype", "int3"], 2, "'int3' is not one of"),
    "zero dim": (["layout", "--vocab", "{v}", "--dim", "0"], 2, "dim must be at least 1"),
    "unknown command": (["frobnicate"], 2, "No such command"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_error_line_and_no_file(
    case, tiny_vocab_file, tiny_tokenizer_path, tmp_path
):
    vocab = CanonicalVocab.load(tiny_vocab_file)
    _write_bad_inputs(tmp_path, vocab.source_vocab_size)
    before = sorted(p.name for p in tmp_path.iterdir())
    args, code, message = BAD_INPUTS[case]
    fill = {"d": tmp_path, "v": tiny_vocab_file, "tok": tiny_tokenizer_path}
    result = invoke(*(a.format(**fill) for a in args))
    assert message in assert_one_error_line(result, code)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file
