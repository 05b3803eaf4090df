"""engramctl train / eval end to end on a tiny model, with the in-memory table double."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from engramctl.layout import EngramLayout  # noqa: E402
from tests.conftest import SAMPLE, make_layout, write_small_corpus  # noqa: E402
from tests.model.table_double import InMemoryTable, small_layout_for  # noqa: E402

TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2"]
TINY += ["--min-count", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few sample documents (train.jsonl) and one held-out document (heldout.jsonl)."""
    return write_small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def small_layout(ds_vocab):
    return small_layout_for(ds_vocab)


@pytest.fixture(scope="module")
def tables():
    """Route ``--table NAME`` to in-memory tables registered in this dict."""
    import engramctl.cli.model_cmd as model_cmd
    from engramctl.errors import EngramError

    registry: dict = {}

    real_open = model_cmd.open_table_for

    def fake_open(path, mode="r", *, vocab=None):
        if str(path) in registry:
            double = registry[str(path)]
            if vocab is not None and vocab.fingerprint != double.info.vocab_fingerprint:
                raise EngramError(f"vocab differs from {path}'s")  # as open_table(vocab=...)
            return double
        if str(path).endswith(".zarr") and path.exists():
            return real_open(path, mode, vocab=vocab)
        raise EngramError(f"not a table: {path}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_cmd, "open_table_for", fake_open)
        yield registry


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def eval_cpu(model, table, *extra):
    """``engramctl eval --model MODEL --table TABLE --device cpu EXTRA...``."""
    return run("eval", "--model", model, "--table", table, "--device", "cpu", *extra)


def train(tmp_path, corpus, vocab_path, name, *extra, steps=4):
    out = tmp_path / name
    result = run(
        "train",
        "--corpus",
        corpus / "train.jsonl",
        "--heldout",
        corpus / "heldout.jsonl",
        "--out",
        out,
        "--steps",
        steps,
        "--eval-every",
        2,
        *TINY,
        *extra,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, ds_vocab, ds_vocab_path, small_layout, tables):
    table = InMemoryTable(small_layout, 8, ds_vocab.fingerprint)
    tables["t.zarr"] = table
    before = {k: v.copy() for k, v in table.values.items()}
    model = train(
        tmp_path_factory.mktemp("trained"),
        corpus,
        ds_vocab_path,
        "engram",
        "--table",
        "t.zarr",
        "--vocab",
        ds_vocab_path,
    )
    return model, table, before


def test_train_writes_checkpoint_and_rows(trained):
    model, table, before = trained
    for name in (
        "config.json",
        "model.safetensors",
        "vocab.parquet",
        "loss_curve.png",
        "history.json",
    ):
        assert (model / name).exists(), name
    meta = json.loads((model / "config.json").read_text())
    assert meta["model"]["engram_layers"] == [1]
    assert meta["layout"] == table.layout.to_dict()
    assert len(json.loads((model / "history.json").read_text())["heldout"]) == 2
    changed = np.any(before[1] != table.values[1], axis=1)
    assert 0 < changed.sum() < len(changed)  # only touched rows were trained and written back


def test_train_is_deterministic_and_baseline_shares_the_backbone(
    tmp_path, corpus, ds_vocab, ds_vocab_path, small_layout, tables, trained
):
    from safetensors.torch import load_file

    model, _, _ = trained
    tables["t2.zarr"] = InMemoryTable(small_layout, 8, ds_vocab.fingerprint)
    again = train(
        tmp_path, corpus, ds_vocab_path, "again", "--table", "t2.zarr", "--vocab", ds_vocab_path
    )
    first, second = load_file(model / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    np.testing.assert_array_equal(tables["t.zarr"].values[1], tables["t2.zarr"].values[1])
    base = train(tmp_path, corpus, ds_vocab_path, "base", "--no-engram", steps=0 + 1)
    base_meta = json.loads((base / "config.json").read_text())
    assert base_meta["layout"] is None and base_meta["model"]["engram_layers"] == []


def test_no_short_conv_trains_records_and_evaluates(
    tmp_path, corpus, ds_vocab, ds_vocab_path, small_layout, tables
):
    tables["nsc.zarr"] = InMemoryTable(small_layout, 8, ds_vocab.fingerprint)
    model = train(
        tmp_path,
        corpus,
        ds_vocab_path,
        "nsc",
        "--table",
        "nsc.zarr",
        "--vocab",
        ds_vocab_path,
        "--no-short-conv",
        steps=2,
    )
    meta = json.loads((model / "config.json").read_text())
    assert meta["model"]["short_conv"] is False and meta["train"]["short_conv"] is False
    assert meta["model"]["gate_norm_eps"] is None
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", "pt") as handle:
        assert not any("short_conv" in k for k in handle.keys())
    result = eval_cpu(model, "nsc.zarr", "--benchmark", corpus / "heldout.jsonl", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["loss"] > 0


def test_paged_and_resident_logits_are_bit_identical(trained, corpus):
    from engramctl.model.data import read_corpus_stream, text_windows
    from engramctl.model.serve.opening import open_runner
    from engramctl.tokenizer import load_tokenizer

    model, table, _ = trained
    tokenizer, _ = load_tokenizer("deepseek-v4")
    stream = read_corpus_stream(corpus / "heldout.jsonl", tokenizer).ids
    windows = text_windows(stream, 16)[:, :-1]
    batches = [windows[i : i + 3] for i in range(0, len(windows), 3)]
    paged = open_runner(model, table, device="cpu", cache_rows=400)  # small: forces evictions
    resident = open_runner(model, table, device="cpu", resident=True)
    n = 0
    for (_, a), (_, b) in zip(paged.run(batches), resident.run(batches), strict=True):
        assert torch.equal(a, b)
        n += 1
    assert n == len(batches) and paged.row_source.stats.cache_misses > 0


def test_eval_lm_and_multiple_choice(trained, corpus, tmp_path):
    model, _, _ = trained
    result = eval_cpu(model, "t.zarr", "--benchmark", corpus / "heldout.jsonl", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "lm" and doc["metrics"]["perplexity"] > 1
    assert doc["metrics"]["bits_per_byte"] > 0
    paging = doc["paging"]
    assert paging["mode"] == "paged" and paging["rows_requested"] > 0
    assert paging["cache_hits"] + paging["cache_misses"] == paging["unique_rows"]

    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps({"context": "def main(", "choices": ["):", " banana split"], "label": 0})
        + "\n"
        + json.dumps({"context": "import", "choices": [" os", " the", " ("], "label": 0})
        + "\n"
    )
    report = tmp_path / "report.json"
    result = eval_cpu(model, "t.zarr", "--benchmark", mc, "--resident", "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["kind"] == "multiple_choice" and 0 <= doc["metrics"]["acc"] <= 1
    assert doc["metrics"]["examples"] == 2 and doc["paging"]["mode"] == "resident"


def test_eval_explain(trained):
    model, _, _ = trained
    result = eval_cpu(model, "t.zarr", "--explain", "def f(x):", "--json")
    assert result.exit_code == 0, result.output
    explain = json.loads(result.output)["explain"]
    assert len(explain["gates"]["1"]) == len(explain["tokens"])
    assert all(0 < g < 1 for g in explain["gates"]["1"])


def test_eval_explain_piped_prints_each_tokens_gate(trained):
    """Without a terminal (CliRunner, a pipe) the colours are lost: print the values instead."""
    model, _, _ = trained
    args = ("eval", "--model", model, "--table", "t.zarr", "--explain", "def f(x):")
    result = run(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    explain = json.loads(run(*args, "--device", "cpu", "--json").output)["explain"]
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("     ")]
    assert len(lines) == len(explain["tokens"])
    for (pos, gate, *_), want in zip(lines, explain["gates"]["1"], strict=True):
        assert float(gate) == pytest.approx(want, abs=5e-4) and int(pos) >= 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"context": "a", "choices": ["b", "c"]}), "expected keys"),
        (json.dumps({"context": "a", "choices": ["b", "c"], "label": 2}), "label"),
    ],
)
def test_eval_rejects_malformed_benchmarks(trained, tmp_path, line, message):
    model, _, _ = trained
    bench = tmp_path / "bad.jsonl"
    good = json.dumps({"context": "a", "choices": ["b", "c"], "label": 0})
    bench.write_text(good + "\n" + line + "\n")
    result = run("eval", "--model", model, "--table", "t.zarr", "--benchmark", bench)
    assert result.exit_code == 1
    assert message in result.output and ":2" in result.output
    assert "Traceback" not in result.output


def test_bad_input_is_one_clear_line(trained, tmp_path, ds_vocab, corpus, tables):
    model, _, _ = trained
    other = make_layout((307, 311), vocab_size=ds_vocab.canonical_vocab_size)
    tables["other.zarr"] = InMemoryTable(other, 8, ds_vocab.fingerprint)
    tables["foreign.zarr"] = InMemoryTable(trained[1].layout, 8, "sha256:0000")
    bench = corpus / "heldout.jsonl"
    cases = [
        (["--table", "other.zarr"], "layout does not match"),
        (["--table", "foreign.zarr"], "made for vocab fingerprint sha256:0000"),
        ([], "pass --table"),
    ]
    for extra, message in cases:
        result = run("eval", "--model", model, "--benchmark", bench, "--device", "cpu", *extra)
        assert result.exit_code in (1, 2) and message in result.output, result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    result = run("eval", "--model", broken, "--benchmark", bench)
    assert result.exit_code == 1 and "missing model.safetensors" in result.output
    if not torch.cuda.is_available():
        result = run(
            "eval", "--model", model, "--table", "t.zarr", "--benchmark", bench, "--device", "cuda"
        )
        assert result.exit_code == 1 and "no CUDA" in result.output
    result = run("train", "--corpus", corpus / "train.jsonl", "--out", model, "--no-engram")
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = run(
        "train",
        "--corpus",
        corpus / "train.jsonl",
        "--out",
        tmp_path / "x",
        "--table",
        "t.zarr",
        "--vocab",
        tmp_path / "missing.parquet",
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_depth_must_exceed_table_layers(tmp_path, corpus, ds_vocab, ds_vocab_path, tables):
    deep = make_layout(layers=(5,), vocab_size=ds_vocab.canonical_vocab_size)
    tables["deep.zarr"] = InMemoryTable(deep, 8, ds_vocab.fingerprint)
    result = run(
        "train",
        "--corpus",
        corpus / "train.jsonl",
        "--out",
        tmp_path / "m",
        "--table",
        "deep.zarr",
        "--vocab",
        ds_vocab_path,
        *TINY,
    )
    assert result.exit_code == 2 and "--depth 6" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["train", "eval"])
def test_help_has_an_example(name):
    result = run(name, "--help")
    assert result.exit_code == 0 and "Example:" in result.output


def test_cli_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from engramctl.cli import app; "
        "CliRunner().invoke(app, ['--help']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_real_zarr_table_train_and_paged_eval(
    tmp_path, corpus, ds_vocab, ds_vocab_path, small_layout, tables, dtype
):
    """The same flow on a real on-disk table: rows trained in place, paged == resident."""
    from engramctl.model.serve.opening import open_runner
    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table

    path = tmp_path / "real.zarr"
    create_table(
        path,
        layout=small_layout,
        vocab_fingerprint=ds_vocab.fingerprint,
        dim=8,
        dtype=dtype,
        workers=1,
    )
    with open_table(path) as table:
        before = table.gather(1, np.arange(small_layout.layer_rows(1)))
    model = train(tmp_path, corpus, ds_vocab_path, "m", "--table", path, "--vocab", ds_vocab_path)
    with open_table(path) as table:
        after = table.gather(1, np.arange(small_layout.layer_rows(1)))
        assert np.any(before != after) and table.info.vocab_fingerprint == ds_vocab.fingerprint
        batches = [np.array([[10, 20, 30, 40, 50, 60]] * 2), np.array([[7, 8, 9, 10, 11, 12]])]
        paged = open_runner(model, table, device="cpu", cache_rows=200)
        resident = open_runner(model, table, device="cpu", resident=True)
        for (_, a), (_, b) in zip(paged.run(batches), resident.run(batches), strict=True):
            assert torch.equal(a, b)
    result = eval_cpu(model, path, "--benchmark", corpus / "heldout.jsonl", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["paging"]["bytes_read"] > 0


def test_choice_scores_match_a_plain_forward(trained):
    """Batched, padded choice scores equal log-likelihoods from one unpadded forward each."""
    from engramctl.model.serve.evaluate import choice_scores
    from engramctl.model.serve.opening import open_runner
    from engramctl.tokenizer import load_tokenizer

    model, table, _ = trained
    tokenizer, _ = load_tokenizer("deepseek-v4")
    records = [
        {"context": "import os\nimport", "choices": [" sys", " json as j"], "label": 0},
        {"context": "def f(x):\n    return", "choices": [" x + 1", " None"], "label": 1},
    ]
    runner = open_runner(model, table, device="cpu", prefetch=False)
    scores = choice_scores(runner, records, tokenizer, batch=3)
    expected = []
    for record in records:
        context = tokenizer.encode(record["context"], add_special_tokens=False).ids
        for choice in record["choices"]:
            cont = tokenizer.encode(choice, add_special_tokens=False).ids
            ids = np.array([context + cont])
            ((_, logits),) = runner.run([ids[:, :-1]])
            logp = torch.log_softmax(logits[0], dim=-1)
            targets = runner.model_vocab.encode_targets(ids[0, 1:])
            picked = [float(logp[t, targets[t]]) for t in range(len(targets))]
            expected.append(sum(picked[-len(cont) :]))
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_bad_numbers_and_a_file_as_out_fail_before_training(tmp_path, corpus):
    base = ["train", "--corpus", corpus / "train.jsonl", "--no-engram", "--device", "cpu"]
    for extra, message in [
        (["--seq-len", "0"], "--seq-len must be at least 1"),  # was a ZeroDivisionError
        (["--eval-every", "-1"], "--eval-every must be >= 0"),
    ]:
        result = run(*base, "--out", tmp_path / "m", *extra)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "m").exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    result = run(*base, "--out", a_file, "--overwrite")
    assert result.exit_code == 1 and "is a file, not a checkpoint directory" in result.output
    assert a_file.read_text() == "keep me" and "Traceback" not in result.output
    result = run("eval", "--model", a_file, "--explain", "x")
    assert result.exit_code == 1 and "is a file, not a model directory" in result.output


@pytest.mark.parametrize("first_line_ok", [False, True])
def test_eval_binary_junk_benchmark_is_one_line(trained, tmp_path, first_line_ok):
    model, _, _ = trained
    bench = tmp_path / "junk.jsonl"
    good = json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}).encode()
    junk = bytes(range(128, 256)) * 4
    bench.write_bytes((good + b"\n" if first_line_ok else b"") + junk + b"\n")
    result = run("eval", "--model", model, "--table", "t.zarr", "--benchmark", bench)
    assert result.exit_code == 1 and "internal error" not in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_eval_hit_rate_equals_cache_plan_pager_curve(trained, ds_vocab_path, small_layout):
    """eval --cache-rows N pages exactly what cache-plan --warmup-fraction 0 predicts at N."""
    model, _, _ = trained
    bench = SAMPLE.parent / "bench" / "lm_heldout.jsonl"  # real text, ~18k tokens
    layout_flags = [
        "--ngram-vocab", "211,223", "--max-ngram", "3", "--heads", "2", "--layers", "1",
        "--seed", "0", "--pad-id", "2",
    ]  # fmt: skip
    assert EngramLayout.from_preset(
        "demo-v1", vocab_size=small_layout.vocab_size, ngram_vocab=(211, 223), max_ngram=3,
        heads=2, layers=(1,), seed=0, pad_id=2,
    ).to_dict() == small_layout.to_dict()  # fmt: skip
    sizes = [250, 420, 640]
    planned = run(
        "cache-plan", bench, "--vocab", ds_vocab_path, *layout_flags, "--seq-len", 16,
        "--batch", 2, "--warmup-fraction", 0, "--sizes", ",".join(map(str, sizes)), "--json",
    )  # fmt: skip
    assert planned.exit_code == 0, planned.output
    layer = json.loads(planned.stdout)["layers"]["1"]
    assert 250 < layer["pager_min_rows"] < 420, layer["pager_min_rows"]  # sizes on both sides
    for size, point in zip(sizes, layer["pager"], strict=True):
        result = run(
            "eval", "--model", model, "--table", "t.zarr", "--benchmark", bench,
            "--device", "cpu", "--batch", 2, "--cache-rows", size, "--json",
        )  # fmt: skip
        if size < layer["pager_min_rows"]:
            assert result.exit_code == 1 and "--cache-rows too small" in result.output
            assert point["hit_rate"] is None
            continue
        assert result.exit_code == 0, result.output
        paging = json.loads(result.stdout)["paging"]
        assert paging["cache_hits"] == point["hits"], size
        assert paging["cache_hits"] + paging["cache_misses"] == layer["accesses"]
        assert paging["hit_rate"] == pytest.approx(point["hit_rate"], abs=1e-12)
        assert 0 < point["hit_rate"] < 1


# --------------------------------------------------------- serving tiers (--host-cache)
TIER_LAYOUT = ["--ngram-vocab", "211,223", "--max-ngram", "3", "--heads", "2", "--layers", "1"]
TIER_LAYOUT += ["--seed", "0", "--pad-id", "2"]
HOST_ROW = 8 * 4 + 64  # a float32 row of 8 values in the host tier, its bookkeeping included


def tier_plan(corpus, ds_vocab_path, *extra):
    result = run(
        "cache-plan", corpus / "heldout.jsonl", "--vocab", ds_vocab_path, *TIER_LAYOUT, "--seq-len",
        16, "--batch", 2, "--warmup-fraction", 0, "--policy", "pager", "--sizes", 1, "--json",
        *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_counts_what_cache_plan_predicts_per_tier(trained, corpus, ds_vocab_path, tmp_path):
    model, _, _ = trained
    first = tier_plan(corpus, ds_vocab_path)
    layer = first["layers"]["1"]
    device = layer["pager_min_rows"]
    host = device + (layer["distinct_rows"] - device) // 2
    tiers = ["--cache-rows", device, "--host-cache", host * HOST_ROW]
    # cache-plan's layout is the preset's (two layers, layer 1 picked; its rows wider than the
    # model's): the same rows per layer are other budgets there.
    plan_bytes = 2 * host * (first["row_bytes"] + HOST_ROW - 32)
    planned = ["--cache-rows", 2 * device, "--host-cache", plan_bytes]
    predicted = tier_plan(corpus, ds_vocab_path, *planned)["tiers"]
    assert predicted["config"]["host_bytes"] == plan_bytes
    view = predicted["all_layers"]
    assert view["refused"] is None and view["host_rows"] == host
    report = tmp_path / "eval.json"
    result = run(
        "eval", "--model", model, "--table", "t.zarr", "--benchmark", corpus / "heldout.jsonl",
        "--device", "cpu", "--batch", 2, *tiers, "--prefetch-depth", 3, "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    paging = json.loads(report.read_text())["paging"]
    assert paging["cache_hits"] == view["device_hits"]
    assert paging["host_hits"] == view["host_hits"] > 0
    assert paging["storage_reads"] == view["storage_reads"] > 0
    assert paging["host_rows"] == host and paging["tiers"]["prefetch_depth"] == 3
    assert "host tier hits" in result.output and "rows read from table" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--host-cache", "9999T"], "more than this machine's RAM"),
        (["--host-cache", "eight"], "--host-cache: expected e.g. 8G"),
        (["--prefetch-depth", "-1"], "--prefetch-depth must be 0 or more"),
        (["--cache-rows", "4096", "--host-cache", "50"], "holds no row of layer 1"),
        (["--cache-rows", "4096", "--host-cache", "100K"], "no more than the device cache"),
        (["--cache-rows", "1", "--host-cache", "200"], "one batch needs"),
    ],
)
def test_bad_serving_options_are_one_line(trained, corpus, extra, message):
    model, _, _ = trained
    result = run(
        "eval", "--model", model, "--table", "t.zarr", "--benchmark", corpus / "heldout.jsonl",
        "--device", "cpu", "--batch", 2, *extra,
    )  # fmt: skip
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cache_plan_shows_the_two_tier_view(corpus, ds_vocab_path):
    result = run(
        "cache-plan", corpus / "heldout.jsonl", "--vocab", ds_vocab_path, *TIER_LAYOUT, "--seq-len",
        16, "--batch", 2, "--policy", "lru,pager", "--sizes", 100, "--cache-rows", 1000,
        "--host-cache", "1M",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "layer 1, two tiers: device 500 rows serves" in result.output
    assert "serving tiers: --cache-rows 1,000 --host-cache" in result.output
    refused = run(
        "cache-plan", corpus / "heldout.jsonl", "--vocab", ds_vocab_path, *TIER_LAYOUT,
        "--policy", "lru", "--host-cache", "1M",
    )  # fmt: skip
    assert refused.exit_code != 0 and "keep pager in --policy" in refused.output


def test_eval_static_host_tier_counts_what_cache_plan_predicts(
    trained, corpus, ds_vocab_path, tmp_path
):
    """cache-plan --host-static-out writes the warm-up's top rows; eval --host-static serves them
    and counts per tier what cache-plan --host-static predicts; bad rows files are one line."""
    model, _, _ = trained
    first = tier_plan(corpus, ds_vocab_path)
    device = first["layers"]["1"]["pager_min_rows"]
    host = device // 2  # a static host tier may hold fewer rows than the device cache
    rows = tmp_path / "rows.npz"
    plan_bytes = 2 * host * (first["row_bytes"] + 64)
    planned = ["--cache-rows", 2 * device, "--host-cache", plan_bytes]
    wrote = run(
        "cache-plan", corpus / "heldout.jsonl", "--vocab", ds_vocab_path, *TIER_LAYOUT,
        "--seq-len", 16, "--batch", 2, "--warmup-fraction", 0.3, "--policy", "pager", "--sizes",
        1, *planned, "--host-static-out", rows,
    )  # fmt: skip
    assert wrote.exit_code == 0, wrote.output
    assert "host (static)" in wrote.output and f"wrote {rows}" in wrote.output
    view = tier_plan(corpus, ds_vocab_path, *planned, "--host-static", rows)["tiers"]["all_layers"]
    assert view["host_mode"] == "static" and view["host_rows"] == host
    tiers = ["--cache-rows", device, "--host-cache", host * HOST_ROW, "--host-static", rows]
    report = tmp_path / "eval.json"
    result = run(
        "eval", "--model", model, "--table", "t.zarr", "--benchmark", corpus / "heldout.jsonl",
        "--device", "cpu", "--batch", 2, *tiers, "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    paging = json.loads(report.read_text())["paging"]
    assert paging["cache_hits"] == view["device_hits"]
    assert paging["host_hits"] == view["host_hits"] > 0
    assert paging["storage_reads"] == view["storage_reads"] > 0
    assert 0 < paging["host_loaded_rows"] <= host and "static rows loaded" in result.output
    # bad rows files: one line each (the others are held in tests/model/serve/test_host_tier.py)
    bad = run(
        "eval", "--model", model, "--table", "t.zarr", "--benchmark", corpus / "heldout.jsonl",
        "--device", "cpu", "--batch", 2, "--cache-rows", device, "--host-cache", 2 * HOST_ROW,
        "--host-static", rows,
    )  # fmt: skip
    assert bad.exit_code in (1, 2) and "more than --host-cache holds" in bad.output, bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1


def test_eval_reports_progress_per_batch(trained, corpus, monkeypatch):
    """The library calls on_progress after every batch up to the total; the CLI shows it as a
    plain line when stderr is not a terminal."""
    from engramctl.cli import progress as progress_module
    from engramctl.model.serve.evaluate import evaluate
    from engramctl.model.serve.opening import ModelSpec

    model, table, _ = trained
    mc = corpus / "mc_progress.jsonl"
    record = {"context": "import", "choices": [" os", " the", " ("], "label": 0}
    mc.write_text((json.dumps(record) + "\n") * 3)
    for benchmark, total in ((corpus / "heldout.jsonl", None), (mc, 9)):
        calls = []
        evaluate(
            model=ModelSpec(model, table, device="cpu"), benchmark=benchmark, batch=4,
            on_progress=lambda done, n, calls=calls: calls.append((done, n)),
        )  # fmt: skip
        done = [d for d, _ in calls]
        assert len(calls) >= 2 and done == sorted(done) and len({n for _, n in calls}) == 1
        assert calls[-1][0] == calls[-1][1] and (total is None or calls[-1][1] == total)
        assert all(b - a <= 4 for a, b in zip([0, *done], done, strict=False))
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    result = run(
        "eval", "--model", model, "--table", "t.zarr", "--benchmark", mc, "--device", "cpu",
        "--batch", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "eval" in result.output and "8/9" in result.output
