"""``engramctl generate``: streaming-hash decode, rows paged per step."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.model import test_train_eval as base  # noqa: E402

# The tiny trained model (window 16) and its in-memory table, as in test_train_eval.py.
corpus, small_layout, tables, trained = base.corpus, base.small_layout, base.tables, base.trained
run = base.run
PROMPT = "import os\n"


def generate(model, *args):
    result = run(
        "generate", "--model", model, "--table", "t.zarr", "--device", "cpu", "--json", *args
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rerun_greedy(model, table, prompt, steps):
    """Greedy decoding by re-running (and re-hashing from pad) the whole text each step."""
    from engramctl.corpus.stream import eos_id
    from engramctl.model.serve.opening import load_model_tokenizer, open_runner

    runner = open_runner(model, table, device="cpu", resident=True, prefetch=False)
    tokenizer = load_model_tokenizer(runner.checkpoint, None)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    made = []
    for _ in range(steps):
        ((_, logits),) = list(runner.run([np.array([ids + made], dtype=np.int64)]))
        last = logits[0, -1].float().clone()
        last[0] = float("-inf")
        token = int(runner.model_vocab.output_ids[int(last.argmax()) - 1])
        if token == eos_id(tokenizer):
            break
        made.append(token)
    return len(ids), made


def test_greedy_streaming_decode_equals_rerunning_the_text(trained):
    model, table, _ = trained
    doc = generate(model, "--prompt", PROMPT, "--max-tokens", 8)
    n_prompt, want = rerun_greedy(model, table, PROMPT, 8)
    assert n_prompt + 8 <= 16  # within the window: the two must agree token for token
    assert doc["tokens"] == want and doc["prompt_tokens"] == n_prompt
    paging = doc["paging"]
    heads = table.layout.heads_per_layer * len(table.layout.layers)
    fed = n_prompt + len(want) - (1 if doc["stopped"] == "max_tokens" else 0)
    assert paging["mode"] == "paged" and paging["rows_requested"] == fed * heads
    assert paging["batches"] == 1 + fed - n_prompt  # the prompt, then one token per step
    resident = generate(model, "--prompt", PROMPT, "--max-tokens", 8, "--resident")
    assert resident["tokens"] == doc["tokens"]


def test_decode_past_the_window_and_sampling(trained):
    model, _, _ = trained
    long = generate(model, "--prompt", PROMPT * 6, "--max-tokens", 24)  # prompt > window
    assert long["prompt_tokens"] > 16 and long["tokens_per_s"] > 0
    assert long["stopped"] == "eos" or len(long["tokens"]) == 24
    greedy = generate(model, "--prompt", PROMPT, "--max-tokens", 6)
    top1 = generate(model, "--prompt", PROMPT, "--max-tokens", 6, "--temperature", 1, "--top-k", 1)
    assert top1["tokens"] == greedy["tokens"]
    a = generate(model, "--prompt", PROMPT, "--max-tokens", 6, "--temperature", 2, "--seed", 3)
    b = generate(model, "--prompt", PROMPT, "--max-tokens", 6, "--temperature", 2, "--seed", 3)
    assert a["tokens"] == b["tokens"]


def test_kv_cache_gives_the_tokens_of_running_the_window(trained):
    """The key/value cache changes the cost, not the tokens: greedy decoding with and without it
    agrees, within the window and past it (where each step runs the last window)."""
    from engramctl.model.serve.generate import generate as decode
    from engramctl.model.serve.opening import ModelSpec

    model, table, _ = trained
    for prompt, steps, crosses in ((PROMPT, 13, False), (PROMPT * 2, 24, True)):
        runs = [
            decode(
                model=ModelSpec(model, table, device="cpu", resident=True),
                prompt=prompt,
                max_tokens=steps,
                stop_at_eos=False,
                kv_cache=kv_cache,
            )
            for kv_cache in (True, False)
        ]
        assert runs[0].tokens == runs[1].tokens and len(runs[0].tokens) == steps
        assert (runs[0].prompt_tokens + steps > 16) == crosses  # the window is 16


def test_generate_prints_text_rate_and_pager_report(trained):
    model, _, _ = trained
    result = run(
        "generate", "--model", model, "--table", "t.zarr", "--device", "cpu",
        "--prompt", PROMPT, "--max-tokens", 3,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "cache hit rate" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--prompt", PROMPT, "--max-tokens", "0"], 2, "--max-tokens must be at least 1"),
        (["--prompt", "", "--max-tokens", "3"], 1, "tokenizes to no tokens"),
        (["--prompt", PROMPT, "--top-k", "0"], 2, "--top-k must be at least 1"),
        (["--prompt", PROMPT, "--temperature", "-1"], 2, "--temperature must be 0"),
    ],
)
def test_generate_bad_input_is_one_line(trained, args, code, message):
    model, _, _ = trained
    result = run("generate", "--model", model, "--table", "t.zarr", "--device", "cpu", *args)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_generate_cache_too_small_names_no_batch_option(trained):
    # generate has no --batch: the remedy it names must be one it takes.
    model, _, _ = trained
    result = run(
        "generate", "--model", model, "--table", "t.zarr", "--device", "cpu",
        "--prompt", PROMPT, "--max-tokens", "3", "--cache-rows", "1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "raise --cache-rows" in result.output and "--batch" not in result.output
    assert "Traceback" not in result.output


def test_generate_through_the_host_tier_picks_the_same_tokens(trained):
    model, _, _ = trained
    plain = generate(model, "--prompt", PROMPT, "--max-tokens", 4, "--cache-rows", 300)
    tiered = generate(
        model, "--prompt", PROMPT, "--max-tokens", 4, "--cache-rows", 300, "--host-cache", "100K",
        "--read-threads", 4,
    )  # fmt: skip
    assert tiered["tokens"] == plain["tokens"]
    paging = tiered["paging"]
    assert paging["host_rows"] == 890 and paging["tiers"]["read_threads"] == 4
    assert (
        paging["cache_hits"] + paging["host_hits"] + paging["storage_reads"]
        == (paging["unique_rows"])
    )
    bad = run("generate", "--model", model, "--table", "t.zarr", "--prompt", PROMPT,
              "--host-cache", "9999T")  # fmt: skip
    assert bad.exit_code == 2 and "more than this machine's RAM" in bad.output


def test_generate_through_a_static_host_tier_picks_the_same_tokens(trained, small_layout, tmp_path):
    from engramctl.rowcache.static import save_static_rows

    model, _, _ = trained
    rows = tmp_path / "rows.npz"
    save_static_rows(rows, {1: np.arange(0, 890, 3)}, small_layout)  # every third row
    plain = generate(model, "--prompt", PROMPT, "--max-tokens", 4, "--cache-rows", 300)
    static = generate(
        model, "--prompt", PROMPT, "--max-tokens", 4, "--cache-rows", 300, "--host-cache", "100K",
        "--host-static", rows,
    )  # fmt: skip
    assert static["tokens"] == plain["tokens"]
    paging = static["paging"]
    assert paging["host_loaded_rows"] == 297 and paging["tiers"]["host_static"] == str(rows)
    assert (
        paging["cache_hits"] + paging["host_hits"] + paging["storage_reads"]
        == (paging["unique_rows"])
    )
    assert paging["host_hits"] > 0 and paging["storage_reads"] > 0
