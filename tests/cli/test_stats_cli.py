"""``engramctl hash-stats`` through typer's CliRunner: outputs reopened, errors one line."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app
from tests.conftest import SAMPLE

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def token_docs(tmp_path):
    """A 2-D .npy of 40 documents of 50 raw ids from a small alphabet (collisions on purpose)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "docs.npy"
    np.save(path, rng.integers(3, 60, size=(40, 50)))
    return path


def test_text_corpus_writes_json_and_plot(tmp_path, ds_vocab_path):
    out, png = tmp_path / "stats.json", tmp_path / "stats.png"
    lines = (SAMPLE / "heldout.jsonl").read_text().splitlines()[:3]
    (tmp_path / "small.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke(
        "hash-stats", tmp_path / "small.jsonl", "--vocab", ds_vocab_path, "--preset", "demo-v1",
        "--layers", "15", "--sweep", "1k,10k", "--report", out, "--plot", png, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "layer 15" in result.output and "sweep" in result.output
    report = json.loads(out.read_text())
    assert report["documents"] == 3 and report["tokens"] > 100 and report["partial"] is False
    assert list(report["layers"]) == ["15"] and report["layout"]["analysed_layers"] == [15]
    order = report["layers"]["15"]["orders"]["2"]
    assert order["occurrences"] == report["tokens"] and len(order["heads"]) == 8
    # layer 15 keeps its demo-v1 primes (the layout's second layer), not the first layer's
    from engramctl import CanonicalVocab, EngramLayout

    vocab = CanonicalVocab.load(ds_vocab_path)
    layout = EngramLayout.from_preset("demo-v1", vocab_size=vocab.canonical_vocab_size)
    rows = [h["rows"] for n in "23" for h in report["layers"]["15"]["orders"][n]["heads"]]
    assert rows == layout.head_rows(15).tolist()
    assert [p["ngram_vocab"] for p in report["sweep"]] == [[1000, 1000], [10000, 10000]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_on_stdout_and_refusing_to_overwrite(tmp_path, ds_vocab_path, token_docs):
    args = ["hash-stats", token_docs, "--vocab", ds_vocab_path, "--ngram-vocab", "101,103"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing else on stdout
    assert (report["tokens"], report["documents"]) == (2000, 40)
    heads = report["layers"]["1"]["orders"]["3"]["heads"]
    assert all(h["collided_rows"] > 0 for h in heads)
    (tmp_path / "r.json").write_text("{}")
    result = invoke(*args, "--report", tmp_path / "r.json")
    assert result.exit_code == 1 and "--overwrite" in result.output
    both = invoke(*args, "--report", tmp_path / "r.json", "--overwrite", "--json", "-q")
    assert both.exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(both.stdout)
    assert json.loads(both.stdout)["tokens"] == 2000


def test_batch_size_and_threads_do_not_change_the_report(tmp_path, ds_vocab_path, token_docs):
    docs = np.load(token_docs)
    stream = np.concatenate([np.append(d, 0) for d in docs]).astype(np.uint32)
    stream.tofile(tmp_path / "docs.u32")
    reports = []
    for path, extra in [
        (token_docs, []),
        (tmp_path / "docs.u32", ["--doc-sep-id", 0, "--batch-tokens", 7, "--threads", 1]),
    ]:  # fmt: skip
        result = invoke(
            "hash-stats", path, "--vocab", ds_vocab_path, "--preset", "deepseek-v4.1",
            "--ngram-vocab", "97,89,83", "--json", *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    assert reports[0]["layers"] == reports[1]["layers"]


def test_limit_tokens_and_max_memory(tmp_path, ds_vocab_path, token_docs):
    base = ["hash-stats", token_docs, "--vocab", ds_vocab_path]
    result = invoke(*base, "--limit-tokens", 120, "--json")
    report = json.loads(result.stdout)
    assert report["tokens"] == 120 and report["partial"] and report["documents"] == 3
    result = invoke(*base, "--preset", "deepseek-v4.1", "--max-memory", "16M")
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.count("\n") == 0 and "--max-memory" in message and "--sweep" not in message
    assert "--limit-tokens" in message or "--max-ngram" in message
    assert message.endswith(")") or message.endswith("--max-memory")
    result = invoke(*base, "--sweep", "1G", "--max-memory", "1G")
    assert result.exit_code == 1 and "no --sweep would fit" in result.output
    assert invoke(*base, "--max-memory", "lots").exit_code == 2


def test_ctrl_c_writes_partial_json(tmp_path, ds_vocab_path, token_docs, monkeypatch):
    from engramctl.stats import counter as stats

    calls = []
    original = stats.NgramCounter.add

    def add_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: finish the batch, then stop
        return original(self, *args)

    monkeypatch.setattr(stats.NgramCounter, "add", add_then_interrupt)
    out = tmp_path / "partial.json"
    result = invoke(
        "hash-stats",
        token_docs,
        "--vocab",
        ds_vocab_path,
        "--batch-tokens",
        100,
        "--report",
        out,
        "-q",
    )
    assert result.exit_code == 130
    report = json.loads(out.read_text())
    assert report["partial"] and report["stopped_reason"] == "interrupted"
    assert report["tokens"] == 200 and report["documents"] == 4


@pytest.mark.parametrize(
    "name, content, extra, message",
    [
        ("bad.jsonl", '{"text": "a"}\n{"text"\n', [], "bad.jsonl line 2: malformed JSON"),
        ("nofield.jsonl", '{"body": "a"}\n', [], "line 1: no field 'text'"),
        ("empty.jsonl", "\n\n", [], "the corpus holds no tokens"),
        ("ids.jsonl", '{"ids": [1, 999999]}\n', ["--tokens-field", "ids"],
         "ids.jsonl line 1: token id 999999 is outside"),
        ("missing.jsonl", None, [], "corpus file not found"),
    ],
)  # fmt: skip
def test_bad_inputs_fail_with_one_line(tmp_path, ds_vocab_path, name, content, extra, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = invoke("hash-stats", path, "--vocab", ds_vocab_path, "-q", *extra)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0


def test_out_of_vocab_id_names_file_and_token(tmp_path, ds_vocab_path):
    stream = np.array([5, 6, 7, 0, 8, 200000, 9], dtype=np.uint32)
    stream.tofile(tmp_path / "s.u32")
    result = invoke("hash-stats", tmp_path / "s.u32", "--vocab", ds_vocab_path, "--doc-sep-id", 0)
    assert result.exit_code == 1
    assert "s.u32 token 5: token id 200000 is outside" in result.output


def test_invalid_utf8_is_a_counted_warning(tmp_path, ds_vocab_path):
    (tmp_path / "u.txt").write_bytes(b"caf\xe9 au lait\n")
    result = invoke("hash-stats", tmp_path / "u.txt", "--vocab", ds_vocab_path, "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert warnings["invalid_utf8"]["count"] == 1


def test_help_has_example():
    result = invoke("hash-stats", "--help")
    assert result.exit_code == 0 and "Example:" in result.output


def test_limit_equal_to_the_corpus_is_not_partial(ds_vocab_path, token_docs):
    args = [
        "hash-stats",
        token_docs,
        "--vocab",
        ds_vocab_path,
        "--json",
        "--batch-tokens",
        500,
    ]
    report = json.loads(invoke(*args, "--limit-tokens", 2000).stdout)
    assert report["tokens"] == 2000 and not report["partial"]
    report = json.loads(invoke(*args, "--limit-tokens", 1000).stdout)
    assert report["tokens"] == 1000 and report["partial"] and report["documents"] == 20


def test_file_order_does_not_change_the_report(tmp_path, ds_vocab_path, token_docs):
    docs = np.load(token_docs)
    np.save(tmp_path / "a.npy", docs[:15])
    np.save(tmp_path / "b.npy", docs[15:])
    layers = []
    for files in (
        [tmp_path / "a.npy", tmp_path / "b.npy"],
        [tmp_path / "b.npy", tmp_path / "a.npy"],
    ):
        result = invoke("hash-stats", *files, "--vocab", ds_vocab_path, "--json")
        assert result.exit_code == 0, result.output
        layers.append(json.loads(result.stdout)["layers"])
    whole = invoke("hash-stats", token_docs, "--vocab", ds_vocab_path, "--json")
    assert layers[0] == layers[1] == json.loads(whole.stdout)["layers"]


def test_hand_counted_sentences(tmp_path, tiny_vocab, tiny_tokenizer_path):
    # tiny vocab: "cat"/"Ġcat" -> canonical 7, "the"/"Ġthe" -> 6, pad id 2 -> 2. With one head of
    # p = 2 rows, odd multipliers keep parity: row = (tok_0 + tok_1) mod 2 whatever the seed.
    vocab_path = tiny_vocab.save(tmp_path / "tiny.parquet")
    corpus = tmp_path / "two.jsonl"
    corpus.write_text('{"text": "cat the cat"}\n{"text": "the"}\n')
    result = invoke(
        "hash-stats", corpus, "--vocab", vocab_path, "--tokenizer", tiny_tokenizer_path,
        "--ngram-vocab", 2, "--max-ngram", 2, "--heads", 1, "--layers", 0, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tokens"], report["documents"]) == (4, 2)
    order = report["layers"]["0"]["orders"]["2"]
    # bigrams (tok_0, tok_1): (7, pad) (6, 7) (7, 6) | (6, pad): 4 distinct, 4 occurrences;
    # rows 1, 1, 1 | 0: row 1 holds 3 distinct bigrams, row 0 one.
    assert (order["occurrences"], order["distinct"]) == (4, 4)
    head = order["heads"][0]
    assert head["rows"] == 2 and head["occupied_rows"] == 2 and head["collided_rows"] == 1
    assert head["colliding_distinct"] == 3 and head["colliding_distinct_fraction"] == 0.75
    assert head["colliding_occurrences"] == 3 and head["max_row_load"] == 3
    assert head["row_load_histogram"] == [0, 1, 0, 1]  # rows of load 0, 1, 2, 3
    assert head["expected_occupied_rows"] == pytest.approx(2 * (1 - 0.5**4))
    assert head["expected_colliding_distinct_fraction"] == pytest.approx(1 - 0.5**3)
    assert order["all_heads_colliding_occurrence_fraction"] == 0.75


def test_layout_from_table_equals_the_flags(tmp_path, ds_vocab_path, tiny_vocab, token_docs):
    table = tmp_path / "t.zarr"
    made = invoke(
        "init-table", table, "--vocab", ds_vocab_path, "--ngram-vocab", "101,103",
        "--layers", "3,7", "--dim", "8", "--dtype", "float32", "--lazy",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    common = ["hash-stats", token_docs, "--vocab", ds_vocab_path, "-q", "--json"]
    from_flags = invoke(*common, "--ngram-vocab", "101,103", "--layers", "3,7")
    from_table = invoke(*common, "--table", table)
    assert from_flags.exit_code == 0 and from_table.exit_code == 0, from_table.output
    strip = ("seconds", "tokens_per_second")
    flags_doc = {k: v for k, v in json.loads(from_flags.stdout).items() if k not in strip}
    table_doc = {k: v for k, v in json.loads(from_table.stdout).items() if k not in strip}
    assert table_doc == flags_doc
    one_layer = invoke(*common, "--table", table, "--layers", "7")
    assert list(json.loads(one_layer.stdout)["layers"]) == ["7"]
    # refusals: a layer the table lacks, layout flags with --table, another vocab
    assert invoke(*common, "--table", table, "--layers", "5").exit_code == 2
    assert invoke(*common, "--table", table, "--preset", "demo-v1").exit_code == 2
    other = tmp_path / "other.parquet"
    tiny_vocab.save(other)
    refused = invoke("hash-stats", token_docs, "--vocab", other, "--table", table, "-q")
    assert refused.exit_code == 1 and "the vocab the table was made with" in refused.output


# ------------------------------------------- issue 14 item 13: output targets checked first
@pytest.mark.parametrize("flag", ["--report", "--plot"])
def test_unwritable_target_is_refused_before_the_pass(
    tmp_path, ds_vocab_path, token_docs, monkeypatch, flag
):
    import engramctl.stats.run as stats_run

    target = "/sys/engramctl-stats.out"  # not writable even for root
    if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("/sys is writable here")
    calls = []
    monkeypatch.setattr(stats_run, "run_hash_stats", lambda *a, **k: calls.append(1))
    result = invoke(
        "hash-stats", token_docs, "--vocab", ds_vocab_path, "--ngram-vocab", "101,103", flag,
        target,
    )  # fmt: skip
    assert result.exit_code == 1 and f"cannot write {target}" in result.output
    assert "checked before starting" in result.output and not calls


def test_late_write_failure_saves_the_report_elsewhere(
    tmp_path, ds_vocab_path, token_docs, monkeypatch
):
    import engramctl._files as files

    monkeypatch.setenv("TMPDIR", str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    real = files.atomic_write
    target = tmp_path / "r.json"

    def full_disk(path, *args, **kw):
        if path == target:
            raise files.EngramError(f"cannot write {path}: No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(files, "atomic_write", full_disk)
    result = invoke(
        "hash-stats", token_docs, "--vocab", ds_vocab_path, "--ngram-vocab", "101,103",
        "--report", target, "-q",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    output = result.output.replace("\n", "")  # rich wraps long lines in the runner
    assert "No space left on device; wrote it to" in output
    (fallback,) = (tmp_path / "fallback").iterdir()
    assert f"{fallback} instead" in output
    assert json.loads(fallback.read_text())["tokens"] == 2000 and not target.exists()
