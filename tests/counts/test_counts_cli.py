"""build-counts, eval --counts, generate --counts, info and verify end to end; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from tests.conftest import write_small_corpus  # noqa: E402
from tests.model.table_double import small_layout_for, small_real_table  # noqa: E402

TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2"]
TINY += ["--min-count", "2", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ds_vocab, ds_vocab_path):
    """A tiny trained model on a real table, and a count memory built --like that table."""
    root = tmp_path_factory.mktemp("counts")
    corpus = write_small_corpus(root)
    table = small_real_table(root / "t.zarr", ds_vocab)
    model = root / "m"
    args = ["train", "--corpus", corpus / "train.jsonl", "--heldout", corpus / "heldout.jsonl"]
    args += ["--out", model, "--steps", 4, "--table", table, "--vocab", ds_vocab_path, *TINY]
    result = run(*args)
    assert result.exit_code == 0, result.output
    counts = root / "c.zarr"
    result = run("build-counts", corpus / "train.jsonl", "--vocab", ds_vocab_path, "--like",
                 table, "--out", counts, "--top-k", 4, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "corpus": corpus, "table": table, "model": model, "counts": counts,
            "build": json.loads(result.output)}  # fmt: skip


def eval_json(setup, *extra):
    result = run("eval", "--benchmark", setup["corpus"] / "heldout.jsonl", *extra, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def with_model(setup):
    return ("--model", setup["model"], "--table", setup["table"], "--device", "cpu")


def test_build_counts_report_and_store(setup, ds_vocab):
    from engramctl.counts import open_counts

    build = setup["build"]
    store = open_counts(setup["counts"])
    assert build["tokens"] == int(store.unigram.sum()) > 0
    # every pair lands once in each column: level 1 and each head of each counted layer
    assert int(store.totals.sum()) == build["pairs"] * (1 + small_layout_for(ds_vocab).heads * 2)
    assert store.meta["layout"] == small_layout_for(ds_vocab).to_dict()
    assert store.meta["vocab_fingerprint"] == ds_vocab.fingerprint
    assert build["gate"]["fitted"] and build["heldout_pairs"] > 0
    assert 0 < build["gate"]["mean_lambda"] < 1


def test_mix_zero_and_one_give_the_components(setup):
    zero = eval_json(setup, *with_model(setup), "--counts", setup["counts"], "--mix", 0)["metrics"]
    one = eval_json(setup, *with_model(setup), "--counts", setup["counts"], "--mix", 1)["metrics"]
    gate = eval_json(setup, *with_model(setup), "--counts", setup["counts"])["metrics"]
    plain = eval_json(setup, *with_model(setup))["metrics"]
    assert zero["mixed_loss"] == pytest.approx(zero["model_loss"], rel=1e-9)
    assert one["mixed_loss"] == pytest.approx(one["counts_loss"], rel=1e-9)
    assert zero["mean_lambda"] == 0 and one["mean_lambda"] == 1
    assert 0 < gate["mean_lambda"] < 1 and gate["loss"] == gate["mixed_loss"]
    # today's figure is kept; over raw ids the unknown class is spread, which only adds nats
    assert gate["model_vocab_loss"] == pytest.approx(plain["loss"], rel=1e-9)
    assert gate["model_loss"] >= gate["model_vocab_loss"] - 1e-9
    # a mixture is never worse than its worse component, per token hence on average
    assert gate["mixed_loss"] <= max(gate["model_loss"], gate["counts_loss"]) + 1e-9
    alone = eval_json(setup, "--counts", setup["counts"])["metrics"]
    assert alone["loss"] == pytest.approx(gate["counts_loss"], rel=1e-9)
    assert alone["perplexity"] == pytest.approx(math.exp(alone["loss"]))


def test_unknown_spread_sums_to_one_outside_the_models_outputs():
    from engramctl.model.data import ModelVocab
    from engramctl.model.serve.mixing import unknown_log_spread

    p0 = np.array([0.1, 0.2, 0.3, 0.4])
    spread = np.exp(unknown_log_spread(ModelVocab(np.arange(4), np.array([1, 3])), p0))
    np.testing.assert_allclose(spread, [0.25, 0, 0.75, 0])


def test_generate_with_counts(setup):
    args = ("generate", *with_model(setup)[:4], "--device", "cpu", "--prompt", "def main(",
            "--max-tokens", 5, "--counts", setup["counts"], "--json")  # fmt: skip
    first, again = run(*args), run(*args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.output)
    assert len(doc["tokens"]) >= 1
    assert 0 < doc["counts"]["mean_lambda"] < 1
    assert json.loads(again.output)["tokens"] == doc["tokens"]  # greedy: deterministic
    sampled = run(*args[:-1], "--temperature", 0.8, "--top-k", 5, "--mix", 1, "--json")
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.output)["counts"]["mean_lambda"] == 1
    shown = run(*args[:-1], "--mix", 0.25)
    assert shown.exit_code == 0, shown.output
    assert "λ (--mix) mean 0.250, first step 0.250" in " ".join(shown.output.split())


def test_info_and_verify_a_count_memory(setup):
    info = run("info", setup["counts"], "--json")
    assert info.exit_code == 0, info.output
    doc = json.loads(info.output)
    assert doc["kind"] == "counts" and doc["top_k"] == 4 and doc["corpus"]["tokens"] > 0
    assert 0 < doc["occupied_rows"] < doc["rows"] and doc["bytes_per_occupied_row"] > 0
    shown = run("info", setup["counts"])
    assert shown.exit_code == 0 and f"{doc['occupied_rows']:,} of {doc['rows']:,} rows" in (
        " ".join(shown.output.split())
    )
    verify = run("verify", setup["counts"])
    assert verify.exit_code == 0 and "ok" in verify.output


def test_damaged_store_is_named_by_verify_and_refused_by_eval(setup, tmp_path):
    import shutil

    damaged = tmp_path / "d.zarr"
    shutil.copytree(setup["counts"], damaged)
    with open(damaged / "counts.npy", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x07" * 8)
    verify = run("verify", damaged)
    assert verify.exit_code == 1 and "counts.npy does not match its CRC-32" in verify.output
    doc = (damaged / "zarr.json").read_text()
    (damaged / "zarr.json").write_text(doc.replace('"top_k": 4', '"top_k": 5'))
    result = run("eval", "--benchmark", setup["corpus"] / "heldout.jsonl", "--counts", damaged)
    assert result.exit_code == 1
    assert "damaged" in result.output and "verify" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--mix", "1.5"), "--mix must be a number in [0, 1]"),
        (("--mix", "nan"), "expected a finite number, got nan"),
        (("--mix", "-0.1"), "--mix must be a number in [0, 1]"),
    ],
)
def test_bad_mix_is_one_line(setup, extra, message):
    result = run("eval", "--benchmark", setup["corpus"] / "heldout.jsonl", "--counts",
                 setup["counts"], *extra)  # fmt: skip
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_counts_for_another_layout_is_refused(setup, ds_vocab_path, tmp_path):
    other = tmp_path / "other.zarr"
    result = run("build-counts", setup["corpus"] / "train.jsonl", "--vocab", ds_vocab_path,
                 "--ngram-vocab", "307,311", "--max-ngram", 3, "--heads", 2, "--layers", 1,
                 "--pad-id", 2, "--out", other, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run("eval", *with_model(setup), "--benchmark", setup["corpus"] / "heldout.jsonl",
                 "--counts", other)  # fmt: skip
    assert result.exit_code == 1 and "layout" in result.output and "--like" in result.output


def test_build_counts_bad_input(setup, ds_vocab_path, tmp_path):
    corpus = setup["corpus"] / "train.jsonl"
    base = ("build-counts", corpus, "--vocab", ds_vocab_path, "--like", setup["table"])
    result = run(*base, "--out", tmp_path / "k.zarr", "--top-k", 0)
    assert result.exit_code == 2 and "--top-k must be at least 1" in result.output
    assert not (tmp_path / "k.zarr").exists()
    (tmp_path / "empty.jsonl").write_text("")
    result = run("build-counts", tmp_path / "empty.jsonl", "--vocab", ds_vocab_path, "--like",
                 setup["table"], "--out", tmp_path / "e.zarr")  # fmt: skip
    assert result.exit_code == 1 and "tokenizes to nothing" in result.output
    assert not (tmp_path / "e.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e.zarr")]
    result = run(*base, "--out", setup["counts"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = run(*base, "--out", tmp_path / "p.zarr", "--partitions", 0)
    assert result.exit_code == 2 and "--partitions must be at least 1" in result.output
    result = run(*base, "--out", setup["counts"], "--append")  # layout flags with --append
    assert result.exit_code == 2 and "drop --like" in result.output
    result = run("build-counts", corpus, "--vocab", ds_vocab_path, "--out", tmp_path / "n.zarr",
                 "--append")  # fmt: skip
    assert result.exit_code == 1 and "needs a count memory" in result.output
    assert not (tmp_path / "n.zarr").exists()
    result = run("eval", "--counts", setup["counts"], "--benchmark", corpus, "--mix", 0.5,
                 "--explain", "x")  # fmt: skip
    assert result.exit_code == 2 and "without --model" in result.output


def test_explain_shows_lambda_per_token(setup):
    text = "def main(args): return args"
    doc = json.loads(run("eval", *with_model(setup), "--explain", text, "--counts",
                         setup["counts"], "--json").output)["explain"]  # fmt: skip
    mixed = doc["counts"]
    n = len(doc["tokens"])
    assert n > 3 and all(len(mixed[k]) == n for k in ("lambda", "p_model", "p_counts", "p_mixed"))
    assert mixed["lambda"][0] is None and mixed["mix"] == "gate"
    lam, pm, pc, px = (np.array(mixed[k][1:]) for k in ("lambda", "p_model", "p_counts", "p_mixed"))
    assert ((lam > 0) & (lam < 1)).all() and ((pm > 0) & (pc > 0)).all()
    np.testing.assert_allclose(px, (1 - lam) * pm + lam * pc, rtol=1e-12)
    # P_counts of the actual token is the count memory's score of the text
    from engramctl.counts import CountsModel, open_counts

    store = open_counts(setup["counts"])
    np.testing.assert_allclose(pc, CountsModel(store, store.vocab()).score_stream(
        np.array(doc["ids"]))[:, 0], rtol=1e-12)  # fmt: skip
    fixed = run("eval", *with_model(setup), "--explain", text, "--counts", setup["counts"],
                "--mix", 0.3)  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert "count memory λ per token (--mix 0.3" in fixed.output
    assert fixed.output.count("  0.3000  ") == n - 1


def test_multiple_choice_mixed_with_counts(setup, tmp_path):
    from engramctl.corpus.stream import eos_id
    from engramctl.counts import CountsModel, open_counts
    from engramctl.model.serve.evaluate import choice_scores
    from engramctl.model.serve.mixing import SequenceMixer, unknown_log_spread
    from engramctl.model.serve.opening import ModelSpec, open_model
    from engramctl.table.sources.table import open_table

    records = [{"context": "def main(", "choices": [" args", " the"], "label": 0},
               {"context": "import", "choices": [" os", " return x"], "label": 0},
               {"context": "The", "choices": [" file", " ("], "label": 1}]  # fmt: skip
    bench = tmp_path / "mc.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in records))
    store = open_counts(setup["counts"])
    with open_table(setup["table"]) as table:
        opened = open_model(ModelSpec(setup["model"], table, "cpu"))
        runner, tok = opened.runner, opened.tokenizer
        counts = CountsModel(store, store.vocab())
        eos = eos_id(tok)
        plain = choice_scores(runner, records, tok, batch=4)
        scores = {m: choice_scores(runner, records, tok, batch=4,
                                   mixer=SequenceMixer(counts, runner.model_vocab, m, eos))
                  for m in (0.0, 1.0, None)}  # fmt: skip
    # λ = 1: the count memory's own score of each choice after its context
    spread = unknown_log_spread(runner.model_vocab, counts.p0)
    expected_counts, expected_model = [], []
    for r, record in enumerate(records):
        context = tok.encode(record["context"], add_special_tokens=False).ids
        for c, choice in enumerate(record["choices"]):
            cont = tok.encode(choice, add_special_tokens=False).ids
            p = counts.score_stream(np.array(context + cont))[:, 0][-len(cont) :]
            expected_counts.append(np.log(p).sum())
            # λ = 0: the model's score over raw ids (the unknown class spread)
            unknown = runner.model_vocab.encode_targets(np.array(cont)) == 0
            expected_model.append(plain[2 * r + c] + spread[np.array(cont)[unknown]].sum())
    np.testing.assert_allclose(scores[1.0], expected_counts, rtol=1e-9)
    np.testing.assert_allclose(scores[0.0], expected_model, rtol=1e-9)
    assert np.isfinite(scores[None]).all()
    assert not np.allclose(scores[None], scores[0.0]) and not np.allclose(scores[None], scores[1.0])
    # the CLI: the mixed accuracy is reported; at λ = 1 it is the count memory's alone
    result = run("eval", *with_model(setup), "--counts", setup["counts"], "--mix", 1,
                 "--benchmark", bench, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    by_record = np.array(expected_counts).reshape(len(records), 2)
    acc = np.mean([np.argmax(by_record[r]) == rec["label"] for r, rec in enumerate(records)])
    assert json.loads(result.output)["metrics"]["acc"] == pytest.approx(acc)


@pytest.mark.slow
def test_lm_eval_tasks_mixed_with_counts(setup, tmp_path, monkeypatch):
    """The harness's multiple choice with --counts --mix 1 is the count memory's alone."""
    pytest.importorskip("lm_eval")
    from tests.conftest import REPO

    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    bench = REPO / "sample_data" / "bench"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc_next_line.yaml").write_text((bench / "mc_next_line.yaml").read_text())
    lines = (bench / "mc_next_line.jsonl").read_text().splitlines()[:12]
    (tasks / "mc_next_line.jsonl").write_text("\n".join(lines) + "\n")
    result = run("eval", *with_model(setup), "--counts", setup["counts"], "--mix", 1,
                 "--lm-eval-tasks", tasks, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    theirs = json.loads(result.stdout)["results"]["results"]["engramctl_mc_next_line"]
    alone = run("eval", "--counts", setup["counts"], "--benchmark", tasks / "mc_next_line.jsonl",
                "--json")  # fmt: skip
    assert theirs["acc,none"] == json.loads(alone.output)["metrics"]["acc"]


def test_build_counts_append_from_the_cli(setup, ds_vocab_path, tmp_path):
    import shutil

    from engramctl.counts import open_counts, verify_counts

    grown = tmp_path / "grown.zarr"
    shutil.copytree(setup["counts"], grown)
    heldout = setup["corpus"] / "heldout.jsonl"
    result = run("build-counts", heldout, "--vocab", ds_vocab_path, "--out", grown, "--append",
                 "--top-k", 8)  # fmt: skip
    assert result.exit_code == 1 and "K = 4" in result.output and "--top-k 8" in result.output
    result = run("build-counts", heldout, "--vocab", ds_vocab_path, "--out", grown, "--append",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    added, store = json.loads(result.output), open_counts(grown)
    assert verify_counts(grown) == [] and store.meta["generation"] == 1
    assert store.meta["corpus"]["tokens"] == setup["build"]["tokens"] + added["tokens"]
    assert int(store.unigram.sum()) == store.meta["corpus"]["tokens"]


# ------------------------------------------------------------------ decoding from the mix
# A gate reading recent_gain (the fitted default's features), weights set so that it matters.
RECENT_GATE = {"features": ["bias", "log1p_count", "log1p_distinct", "level_fraction",
                            "recent_gain"], "weights": [-0.5, 0.3, -0.2, 0.5, 0.6]}  # fmt: skip
PROMPT = "def main(args):\n    return"


@pytest.fixture(scope="module")
def decoding(setup, ds_vocab_path):
    """setup's memory with :data:`RECENT_GATE` (recorded for setup's model), and a
    ``--no-engram`` model of the same vocab: with no rows, generate's stream and eval's windows
    give a prompt longer than the window the same model scores."""
    import shutil

    from engramctl.counts.store import write_gate
    from engramctl.model.serve.mixing import model_identity

    counts = setup["root"] / "recent.zarr"
    shutil.copytree(setup["counts"], counts)
    identity = {"path": str(setup["model"]), "identity": model_identity(setup["model"])}
    write_gate(counts, {"fitted": True, "against": "model", **RECENT_GATE, "model": identity})
    base = setup["root"] / "base"
    args = ["train", "--corpus", setup["corpus"] / "train.jsonl", "--out", base, "--steps", 2]
    result = run(*args, "--vocab", ds_vocab_path, "--no-engram", *TINY)
    assert result.exit_code == 0, result.output
    return {"counts": counts, "base": base}


def eval_gate(spec, counts_path, stream):
    """λ and the gate's inputs eval's mix gives each target of a raw-id stream (its pass),
    and ``log P_model`` (raw ids) of each target."""
    from types import SimpleNamespace

    from engramctl.counts.gate import GateInputs
    from engramctl.model.serve.evaluate import evaluate_lm
    from engramctl.model.serve.mixing import CountsSpec, open_counts_for_model
    from engramctl.model.serve.opening import open_model

    opened = open_model(spec)
    memory = open_counts_for_model(CountsSpec(counts_path), opened.checkpoint)
    collect = []
    corpus = SimpleNamespace(ids=np.asarray(stream, dtype=np.int64), text_bytes=None)
    evaluate_lm(opened.runner, corpus, opened.tokenizer, batch=3, counts=memory, collect=collect)
    scores = np.concatenate([s for _, s, _ in collect])
    inputs = GateInputs.concat([g for *_, g in collect])
    return memory.gate(scores, inputs=inputs), inputs, np.concatenate([m for m, *_ in collect])


def generated(spec, counts, prompt, steps):
    from engramctl.model.serve.generate import generate
    from engramctl.model.serve.mixing import CountsSpec

    report = generate(model=spec, prompt=prompt, max_tokens=steps, stop_at_eos=False,
                      counts=CountsSpec(counts))  # fmt: skip
    assert len(report.tokens) == steps
    return report


def test_generate_starts_recent_gain_from_the_prompt_as_eval_does(setup, decoding):
    """Within the window the λ of every generated step is eval's at that position of the same
    text (the prompt and the tokens generated), recent_gain started from the prompt."""
    from dataclasses import replace

    from engramctl.counts import open_counts
    from engramctl.counts.gate import gate_lambda
    from engramctl.model.serve.opening import ModelSpec
    from engramctl.table.sources.table import open_table
    from engramctl.tokenizer import load_tokenizer

    with open_table(setup["table"]) as table:
        spec = ModelSpec(setup["model"], table, "cpu")
        report = generated(spec, decoding["counts"], PROMPT, 4)
        n = report.prompt_tokens
        assert n + 4 <= 16  # the model's window
        ids = load_tokenizer("deepseek-v4")[0].encode(PROMPT, add_special_tokens=False).ids
        assert len(ids) == n
        lam, inputs, _ = eval_gate(spec, decoding["counts"], [*ids, *report.tokens])
    mixed = report.counts
    np.testing.assert_allclose(mixed["lambda"], lam[n - 1 :], rtol=1e-6)
    assert mixed["prompt_recent_gain"] == pytest.approx(inputs.recent_gain[n - 1], rel=1e-6)
    assert abs(mixed["prompt_recent_gain"]) > 0.1  # the prompt's tokens were scored
    # ... and it matters: from 0 (the prompt ignored) the first λ is another
    store = open_counts(decoding["counts"])
    at = inputs.select([n - 1])
    zero = gate_lambda(RECENT_GATE["weights"], replace(at, recent_gain=np.zeros(1)),
                       store.layout.max_ngram, names=RECENT_GATE["features"])  # fmt: skip
    assert abs(zero[0] - mixed["lambda"][0]) > 0.01


def test_generate_scores_a_prompt_longer_than_the_window_in_evals_windows(setup, decoding):
    from engramctl.model.serve.opening import ModelSpec
    from engramctl.tokenizer import load_tokenizer

    prompt = (PROMPT + " x\n") * 4 + PROMPT  # 38 tokens: 2 windows of 16 and a shorter one
    spec = ModelSpec(decoding["base"], None, "cpu")
    report = generated(spec, decoding["counts"], prompt, 2)
    ids = load_tokenizer("deepseek-v4")[0].encode(prompt, add_special_tokens=False).ids
    assert report.prompt_tokens == len(ids) > 32 and len(ids) % 16 not in (0, 1)
    lam, inputs, _ = eval_gate(spec, decoding["counts"], [*ids, *report.tokens])
    assert report.counts["prompt_recent_gain"] == pytest.approx(inputs.recent_gain[len(ids) - 1],
                                                                 rel=1e-6)  # fmt: skip
    assert report.counts["lambda"][0] == pytest.approx(lam[len(ids) - 1], rel=1e-6)


def test_lm_eval_generate_until_decodes_from_the_mix(setup, decoding):
    """``--mix 0``: the model's own greedy text; ``--mix 1``: the count memory's greedy
    continuation; the gate: recent_gain started from the context as eval scores it."""
    pytest.importorskip("lm_eval")
    from engramctl.corpus.stream import eos_id
    from engramctl.counts import CountsModel, open_counts
    from engramctl.model.serve.lm_eval_adapter import harness_lm_class
    from engramctl.model.serve.mixing import SequenceMixer, prompts_model_logp
    from engramctl.model.serve.opening import ModelSpec, load_model_tokenizer, open_runner
    from engramctl.table.sources.table import open_table

    prompts = ["def main(", "import os\n", "The module"]
    with open_table(setup["table"]) as table:
        runner = open_runner(setup["model"], table, device="cpu", resident=True)
        tok = load_model_tokenizer(runner.checkpoint, None)
        eos = eos_id(tok)

        def harness(counts=None, mix=None):
            mixer = None
            if counts is not None:
                store = open_counts(counts)
                mixer = SequenceMixer(CountsModel(store, store.vocab()), runner.model_vocab, mix,
                                      eos)  # fmt: skip
            return harness_lm_class()(runner, tok, batch=3, mixer=mixer)

        def ask(lm, until=None):  # until: a stop string per prompt
            until = until or [None] * len(prompts)
            return lm.generate_until([Req((p, {"until": [u] if u else [], "max_gen_toks": 4}))
                                      for p, u in zip(prompts, until, strict=True)])  # fmt: skip

        plain = ask(harness())
        assert ask(harness(setup["counts"], 0.0)) == plain
        ones = ask(harness(setup["counts"], 1.0))
        store = open_counts(setup["counts"])
        counts = CountsModel(store, store.vocab())
        want = []
        for prompt in prompts:
            history, made = tok.encode(prompt, add_special_tokens=False).ids, []
            while len(made) < 4:
                token = int(np.argmax(counts.distribution_after(history + made)[0]))
                if token == eos:
                    break
                made.append(token)
            want.append(tok.decode(made, skip_special_tokens=False))
        assert ones == want and ones != plain
        # a stop string cuts the mix's text before it
        cut = [t[1:3] if len(t) > 2 else None for t in ones]
        assert ask(harness(setup["counts"], 1.0), cut) == [
            t[: t.find(c)] if c else t for t, c in zip(ones, cut, strict=True)
        ]
        # with the gate: decoded, each decoder started from its context's eval scores
        gated = ask(harness(decoding["counts"]))
        assert all(isinstance(t, str) for t in gated)
        mixer = harness(decoding["counts"]).mixer
        context = tok.encode(PROMPT * 3, add_special_tokens=False).ids  # > the window
        decoder = mixer.decoder()
        (logp,) = prompts_model_logp(runner, [context], decoder.spread, eos=eos, batch=2)
        decoder.start(context, logp)
        spec = ModelSpec(setup["model"], table, "cpu")
        _, inputs, model_logp = eval_gate(spec, decoding["counts"], [*context, eos])
    np.testing.assert_allclose(logp, model_logp[:-1], rtol=1e-6)
    assert decoder.prompt_gain == pytest.approx(inputs.recent_gain[len(context) - 1], rel=1e-6)


def test_recent_gain_from_a_prompt_past_the_horizon(setup):
    """A prompt's targets older than RECENT_HORIZON are not scored: they move the feature by
    under 1e-6."""
    from engramctl.counts import CountsModel, open_counts
    from engramctl.model.data import ModelVocab
    from engramctl.model.serve.mixing import RECENT_HORIZON, MixedDecoder, prompt_scored_from
    from engramctl.tokenizer import load_tokenizer

    store = open_counts(setup["counts"])
    counts = CountsModel(store, store.vocab())
    size = counts.p0.shape[0]
    rng = np.random.default_rng(0)
    corpus = json.loads((setup["corpus"] / "train.jsonl").read_text().splitlines()[0])["text"]
    ids = load_tokenizer("deepseek-v4")[0].encode(corpus * 8, add_special_tokens=False).ids
    ids = ids[: RECENT_HORIZON + 300]
    model_logp = rng.normal(-6.0, 2.0, len(ids) - 1)
    vocab = ModelVocab(np.arange(size), np.arange(1, 200))
    full, part = (MixedDecoder(counts, vocab, None, eos=size) for _ in range(2))
    full.start(ids, model_logp)
    first = prompt_scored_from(len(ids), 16)
    assert first >= 256
    part.start(ids, model_logp[first:])
    assert abs(full.prompt_gain) > 0.1
    assert part.prompt_gain == pytest.approx(full.prompt_gain, abs=1e-6)
    with pytest.raises(ValueError):
        part.start(ids, model_logp[-10:])


class Req:
    """The part of the harness's ``Instance`` the model reads."""

    def __init__(self, args):
        self.args = args
        self.task_name = "t"
