"""Shared fixtures: a tiny hand-made tokenizer, the bundled DeepSeek vocab, layouts (and
:func:`make_layout` for small ones), a small sample corpus to write (:func:`write_small_corpus`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# pytest-xdist's workers are started with COLUMNS=80 and LINES=24, which a single pytest process
# does not have: the CLI's console would wrap at 80 columns there only. Tests that need a width
# give it to the command they run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"

TINY_TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "Apple",
    "apple",
    "APPLE",
    "Ġapple",
    "Ã©",
    "e",
    "Ġ",
    "ĠĠ",
    "Ġthe",
    "the",
    "The",
    "cat",
    "Ġcat",
    "Ã",
]


def make_tiny_tokenizer_json() -> str:
    """A byte-level WordLevel tokenizer.json with case/accent/space variants."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(TINY_TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|special|>"])
    return tok.to_str()


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(make_tiny_tokenizer_json())
    return path


@pytest.fixture(scope="session")
def tiny_vocab(tiny_tokenizer_path):
    from engramctl import CanonicalVocab

    return CanonicalVocab.from_tokenizer(tiny_tokenizer_path)


@pytest.fixture(scope="session")
def ds_vocab():
    """The canonical vocab of the bundled DeepSeek-V4 tokenizer (built once per session)."""
    from engramctl import CanonicalVocab

    return CanonicalVocab.from_tokenizer("deepseek-v4")


@pytest.fixture(scope="session")
def ds_vocab_path(ds_vocab, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.parquet"
    ds_vocab.save(path)
    return path


@pytest.fixture(scope="session")
def demo_layout(ds_vocab):
    from engramctl import EngramLayout

    return EngramLayout.from_preset("demo-v1", vocab_size=ds_vocab.canonical_vocab_size)


@pytest.fixture(scope="session")
def ds_layout(ds_vocab):
    from engramctl import EngramLayout

    return EngramLayout.from_preset("deepseek-v4.1", vocab_size=ds_vocab.canonical_vocab_size)


def random_ids(rng: np.random.Generator, shape, vocab_size: int, negatives: bool = True):
    ids = rng.integers(0, vocab_size, size=shape, dtype=np.int64)
    if negatives:
        ids[rng.random(shape) < 0.05] = -1
    return ids


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_layout(ngram_vocab=(211, 223), *, vocab_size: int, **fields):
    """A small layout for tests: orders 2..3 with ``ngram_vocab`` rows per head, 2 heads, layer 1,
    seed 0, pad id 2; ``fields`` (any other EngramLayout field) override those."""
    from engramctl import EngramLayout

    fields = {"max_ngram": 3, "heads": 2, "layers": (1,), "seed": 0, "pad_id": 2, **fields}
    return EngramLayout(ngram_vocab=tuple(ngram_vocab), vocab_size=vocab_size, **fields)


def write_small_corpus(root: Path, *, docs: int = 3, held_chars: int = 3000) -> Path:
    """``root/train.jsonl`` (the first ``docs`` sample training documents) and
    ``root/heldout.jsonl`` (the first held-out document, cut to ``held_chars`` characters)."""
    train = read_jsonl(SAMPLE / "train.jsonl")[:docs]
    (root / "train.jsonl").write_text("\n".join(json.dumps(d) for d in train) + "\n")
    held = read_jsonl(SAMPLE / "heldout.jsonl")[0]
    held["text"] = held["text"][:held_chars]
    (root / "heldout.jsonl").write_text(json.dumps(held) + "\n")
    return root


class KillOneWorker:
    """A Dask run's progress callback that SIGKILLs one worker process at the first report of
    work done (once); ``killed`` holds its pid."""

    def __init__(self, client):
        self.client, self.killed = client, []

    def __call__(self, done, total, documents, tokens):
        import signal

        if done and not self.killed:
            pid = next(iter(self.client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
