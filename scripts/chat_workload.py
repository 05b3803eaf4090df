"""Two workloads of the same size for docs/cache-plan.md, from sample_data text, as 2-D .npy.

- ``chat.npy``: requests shaped like chat traffic: one system prompt every request shares, one of
  a few hundred prompt templates picked with Zipf popularity (a few are very common), and a
  user-specific tail of fresh text;
- ``pretrain.npy``: consecutive windows of the training corpus (pre-training text).

Both have ``--rows`` rows of 256 tokens (96 system + 64 template + 96 user for chat), so a cache
plan compares traffic, not sizes. Deterministic for a seed.

    python scripts/chat_workload.py OUT_DIR [--rows 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SYSTEM, TEMPLATE, USER = 96, 64, 96
TEMPLATES = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from engramctl.corpus.stream import read_corpus_stream
    from engramctl.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer("deepseek-v4")
    train = read_corpus_stream(REPO / "sample_data/corpus/train.jsonl", tokenizer).ids
    held = read_corpus_stream(REPO / "sample_data/corpus/heldout.jsonl", tokenizer).ids
    rng = np.random.default_rng(args.seed)
    width = SYSTEM + TEMPLATE + USER
    system = held[:SYSTEM]
    starts = rng.choice(len(held) - TEMPLATE, size=TEMPLATES, replace=False)
    templates = np.stack([held[s : s + TEMPLATE] for s in starts])
    popularity = 1.0 / np.arange(1, TEMPLATES + 1) ** 1.1
    picks = rng.choice(TEMPLATES, size=args.rows, p=popularity / popularity.sum())
    tails = rng.integers(0, len(train) - USER, size=args.rows)
    chat = np.empty((args.rows, width), dtype=np.int64)
    chat[:, :SYSTEM] = system
    chat[:, SYSTEM : SYSTEM + TEMPLATE] = templates[picks]
    chat[:, SYSTEM + TEMPLATE :] = np.stack([train[t : t + USER] for t in tails])
    if len(train) < args.rows * width:
        raise SystemExit(f"the training corpus has {len(train):,} tokens; lower --rows")
    pretrain = train[: args.rows * width].reshape(args.rows, width)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "chat.npy", chat.astype(np.uint32))
    np.save(args.out / "pretrain.npy", pretrain.astype(np.uint32))
    print(f"wrote {args.out}/chat.npy and pretrain.npy: {args.rows:,} rows of {width} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
