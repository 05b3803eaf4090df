"""``--limit-tokens`` stops inside a long document (issue 24 §3): a 16 MiB single-line file is
tokenized only as far as the limit needs, and the ids it gives are exactly the whole text's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.corpus.tokenize import TextTokenizer
from engramctl.stats.run import load_matching_tokenizer, plan_hash_stats, run_hash_stats
from tests.conftest import make_layout

WORDS = [
    "the",
    "Cat",
    "sat",
    "on",
    "2024",
    "mats;",
    "naïve",
    "café",
    "x\n\n",
    "(ok)",
    "日本語",
    " ",
]


def _text(chars: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=chars // 4)
    return " ".join(words.tolist())[:chars]


@pytest.fixture(scope="module")
def ds_tokenizer(ds_vocab):
    return load_matching_tokenizer("deepseek-v4", ds_vocab)


@pytest.mark.parametrize("need", [1, 700, 9000])
def test_a_prefix_gives_exactly_the_whole_texts_first_ids(need, ds_tokenizer):
    text = _text(200_000, seed=need)
    whole = ds_tokenizer.encode([text])[0]
    ids, offsets = ds_tokenizer.encode_up_to([text, "never read"], need)
    assert offsets.tolist() == [0, len(ids), len(ids)]  # the second text gets no ids
    assert need <= len(ids) < len(whole)
    np.testing.assert_array_equal(ids, whole[: len(ids)])


def test_short_texts_are_tokenized_whole_until_the_need_is_met(ds_tokenizer):
    texts = ["one two three", "four five", "six"]
    ids, offsets = ds_tokenizer.encode_up_to(texts, 4)
    full_ids, full_offsets = ds_tokenizer.encode(texts)
    assert offsets[2] == full_offsets[2] and offsets[3] == offsets[2]
    np.testing.assert_array_equal(ids, full_ids[: offsets[2]])
    all_ids, all_offsets = ds_tokenizer.encode_up_to(texts, 10**6)
    np.testing.assert_array_equal(all_ids, full_ids)
    np.testing.assert_array_equal(all_offsets, full_offsets)


class _Spy(TextTokenizer):
    """Counts the characters it is asked to tokenize."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.chars = 0
        inner = self._encode

        def encode(texts, **kwargs):
            self.chars += sum(map(len, texts))
            return inner(texts, **kwargs)

        self._encode = encode


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_limit_tokens_stops_inside_a_16_mib_single_line(fmt, tmp_path, ds_vocab, ds_tokenizer):
    text = (_text(1 << 20, seed=1) + " ") * 16  # 16 MiB and more, no line end
    if fmt == "text":
        path = tmp_path / "one_line.txt"
        path.write_text(text.replace("\n", " "))
    else:
        path = tmp_path / "one_record.jsonl"
        path.write_text(json.dumps({"text": text}) + "\n")
    layout = make_layout(vocab_size=ds_vocab.canonical_vocab_size)
    plan = plan_hash_stats(
        [str(path)], layout=layout, options=CorpusOptions(), limit_tokens=20_000, threads=1
    )
    spy = _Spy(ds_tokenizer.tokenizer)
    report = run_hash_stats(plan, vocab=ds_vocab, tokenizer=spy)
    assert report.tokens == 20_000 and report.partial
    assert report.stopped_reason == "limit-tokens" and report.documents == 1
    assert spy.chars < 1 << 20, f"tokenized {spy.chars:,} characters of {16 << 20:,}"
