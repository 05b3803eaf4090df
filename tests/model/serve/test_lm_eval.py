"""``eval --lm-eval-tasks``: engramctl checkpoints under lm-evaluation-harness.

The harness runs the shipped task YAMLs of sample_data/bench/ on a tiny model trained here (the
way test_train_eval.py trains), with rows paged from an in-memory table double; its numbers are
compared with engramctl's own ``eval --benchmark`` on the same files.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import REPO  # noqa: E402
from tests.model import test_train_eval as base  # noqa: E402

# The tiny trained model and its in-memory table, shared with test_train_eval.py's fixtures.
corpus, small_layout, tables, trained = base.corpus, base.small_layout, base.tables, base.trained
run = base.run

BENCH = REPO / "sample_data" / "bench"


@pytest.fixture(scope="module", autouse=True)
def offline_datasets(tmp_path_factory):
    """The harness's `datasets` caches under tmp and never reaches for the network."""
    home = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


def eval_json(*args):
    result = run("eval", *args, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def harness(trained):
    model, _, _ = trained
    return eval_json("--model", model, "--table", "t.zarr", "--lm-eval-tasks", BENCH)


@pytest.mark.slow
def test_harness_acc_equals_engramctl_multiple_choice_acc(trained, harness):
    model, _, _ = trained
    ours = eval_json(
        "--model", model, "--table", "t.zarr", "--benchmark", BENCH / "mc_next_line.jsonl"
    )
    theirs = harness["results"]["results"]["engramctl_mc_next_line"]
    assert harness["results"]["n-samples"]["engramctl_mc_next_line"]["effective"] == 200
    assert theirs["acc,none"] == ours["metrics"]["acc"]
    assert harness["paging"]["mode"] == "paged" and harness["paging"]["cache_misses"] > 0


@pytest.mark.slow
def test_harness_perplexity_matches_engramctl_within_the_definitions(trained, harness):
    """Same model, same text; the harness scores each document alone (EOS-prefixed, every token
    once) while engramctl scores the EOS-joined stream (context crosses documents, the EOS after
    each document is a target, the first token is not). On 14 documents of ~2,000 tokens that
    moves the totals by well under 1%; 1% is the tolerance."""
    model, _, _ = trained
    ours = eval_json(
        "--model", model, "--table", "t.zarr", "--benchmark", BENCH / "lm_heldout.jsonl"
    )["metrics"]
    theirs = harness["results"]["results"]["engramctl_lm_heldout"]
    docs = [json.loads(line)["text"] for line in (BENCH / "lm_heldout.jsonl").open()]
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    nats = ours["loss"] * ours["scored_tokens"]
    assert ours["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert theirs["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=0.01)
    assert theirs["byte_perplexity,none"] == pytest.approx(2 ** ours["bits_per_byte"], rel=0.01)
    word_ppl = math.exp(nats / words)
    assert math.log(theirs["word_perplexity,none"]) == pytest.approx(math.log(word_ppl), rel=0.01)


def test_rolling_loglikelihood_is_a_plain_forward(trained):
    """A document that fits one window: the rolling log-likelihood equals a direct forward pass
    over EOS + its tokens (resident rows), to float rounding."""
    from engramctl.model.serve.lm_eval_adapter import harness_lm_class
    from engramctl.model.serve.opening import load_model_tokenizer, open_runner

    model, table, _ = trained
    runner = open_runner(model, table, device="cpu", resident=False, cache_rows=4096)
    tokenizer = load_model_tokenizer(runner.checkpoint, None)
    lm = harness_lm_class()(runner, tokenizer, batch=3)
    text = "def main():\n    return 0\n"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert 2 < len(ids) < runner.model.config.block_size
    (got,) = lm.loglikelihood_rolling([_Req((text,))])

    plain = open_runner(model, table, device="cpu", resident=True)
    seq = np.array([[lm.eos, *ids]], dtype=np.int64)
    ((_, logits),) = list(plain.run([seq[:, :-1]]))
    logp = torch.log_softmax(logits.float(), -1)[0]
    targets = torch.from_numpy(plain.model_vocab.encode_targets(seq[0, 1:]))
    want = float(logp.gather(-1, targets[:, None]).sum())
    assert got == pytest.approx(want, abs=1e-4)
    # loglikelihood: the same continuation after an empty context (EOS) and its greedy flag
    ((ll, greedy),) = lm.loglikelihood([_Req(("", text))])
    assert ll == pytest.approx(want, abs=1e-4)
    assert greedy == bool((logp.argmax(-1) == targets).all())


def test_generate_until_is_greedy_and_stops(trained):
    from engramctl.model.serve.lm_eval_adapter import harness_lm_class
    from engramctl.model.serve.opening import load_model_tokenizer, open_runner

    model, table, _ = trained
    runner = open_runner(model, table, device="cpu", resident=True)
    tokenizer = load_model_tokenizer(runner.checkpoint, None)
    lm = harness_lm_class()(runner, tokenizer, batch=2)
    prompts = ["import os\n", "The module", "x = 1\n"]
    long = lm.generate_until([_Req((p, {"until": [], "max_gen_toks": 5})) for p in prompts])
    assert len(long) == 3 and all(isinstance(t, str) for t in long)
    # one at a time gives the same text (batching does not change greedy decoding)
    single = [lm.generate_until([_Req((p, {"until": [], "max_gen_toks": 5}))])[0] for p in prompts]
    assert single == long
    # a stop string cuts the text before it
    for prompt, text in zip(prompts, long, strict=True):
        if len(text) > 1:
            stop = text[1:]
            (cut,) = lm.generate_until([_Req((prompt, {"until": [stop], "max_gen_toks": 5}))])
            assert cut == text[: text.find(stop)]
    from engramctl.errors import EngramError

    with pytest.raises(EngramError, match="greedily"):
        lm.generate_until([_Req(("x", {"do_sample": True, "temperature": 0.7}))])


class _Req:
    """The part of the harness's ``Instance`` the model reads."""

    def __init__(self, args):
        self.args = args
        self.task_name = "t"


def test_bad_task_inputs_are_one_line(trained, tmp_path):
    model, _, _ = trained
    cases = {
        "no_such_task_xyz": "unknown task 'no_such_task_xyz'",
        str(tmp_path): "holds no task YAMLs",
    }
    for spec, message in cases.items():
        result = run("eval", "--model", model, "--table", "t.zarr", "--lm-eval-tasks", spec)
        assert result.exit_code != 0
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    sampled = tmp_path / "sampled"
    sampled.mkdir()
    (sampled / "gen.yaml").write_text(
        (BENCH / "mc_next_line.yaml")
        .read_text()
        .replace("engramctl_mc_next_line", "gen_sampled")
        .replace("mc_next_line.jsonl", str(BENCH / "mc_next_line.jsonl"))
        .replace("output_type: multiple_choice", "output_type: generate_until")
        .replace("doc_to_choice: choices\n", "generation_kwargs: {do_sample: true}\n")
        .replace("doc_to_target: label", "doc_to_target: '{{choices[label]}}'")
        .split("metric_list")[0]
        + "metric_list:\n  - metric: exact_match\n"
    )
    result = run("eval", "--model", model, "--table", "t.zarr", "--lm-eval-tasks", sampled)
    assert result.exit_code == 1, result.output
    assert "gen_sampled" in result.output and "greedy" in result.output


def test_without_the_harness_installed_says_how(trained, monkeypatch):
    model, _, _ = trained
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    result = run("eval", "--model", model, "--table", "t.zarr", "--lm-eval-tasks", BENCH)
    assert result.exit_code == 1
    assert "pip install 'engramctl[eval]'" in result.output


def test_shipped_yamls_use_local_files():
    for path in BENCH.glob("*.yaml"):
        text = path.read_text()
        assert "dataset_path: json" in text
        data = re.search(r"test: (\S+)", text).group(1)
        assert (BENCH / Path(data)).is_file()
