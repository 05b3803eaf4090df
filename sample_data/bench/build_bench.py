"""Build the two small benchmarks of sample_data/bench/ from the held-out split.

Only ``sample_data/corpus/heldout.jsonl`` is read: the model never trains on it.

- ``lm_heldout.jsonl``: the first 8,000 characters of every held-out document (perplexity and
  bits per byte with ``engramctl eval``).
- ``mc_next_line.jsonl``: "which line comes next?" multiple choice in the lm-evaluation-harness
  style: the context is up to 6 lines of a held-out document, the choices are the true next line
  and 3 lines of similar length from other held-out documents, in random order.

Deterministic: ``python3 sample_data/bench/build_bench.py`` rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT = HERE.parent / "corpus" / "heldout.jsonl"
LM_CHARS = 8000
MC_EXAMPLES = 200
CONTEXT_LINES = 6
CHOICES = 4
SEED = 0


def usable(line: str) -> bool:
    """A line worth predicting: 20-100 characters, not just punctuation."""
    text = line.strip()
    return 20 <= len(text) <= 100 and sum(c.isalnum() for c in text) >= 10


def main() -> None:
    docs = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line]
    with open(HERE / "lm_heldout.jsonl", "w", encoding="utf-8") as out:
        for doc in docs:
            out.write(json.dumps({"id": doc["id"], "text": doc["text"][:LM_CHARS]}) + "\n")

    rng = random.Random(SEED)
    lines = [doc["text"].split("\n") for doc in docs]
    candidates = [
        (d, i)
        for d, doc_lines in enumerate(lines)
        for i in range(1, len(doc_lines))
        if usable(doc_lines[i])
    ]
    pool = [(d, lines[d][i].strip()) for d, i in candidates]
    examples = []
    for d, i in rng.sample(candidates, MC_EXAMPLES):
        answer = lines[d][i]
        context = "\n".join(lines[d][max(0, i - CONTEXT_LINES) : i]) + "\n"
        indent = answer[: len(answer) - len(answer.lstrip())]
        others = [
            text for od, text in pool if od != d and abs(len(text) - len(answer.strip())) <= 15
        ]
        distractors = rng.sample(others, CHOICES - 1)
        choices = [answer] + [indent + text for text in distractors]
        order = list(range(CHOICES))
        rng.shuffle(order)
        examples.append(
            {
                "context": context,
                "choices": [choices[k] for k in order],
                "label": order.index(0),
                "source": docs[d]["id"],
            }
        )
    with open(HERE / "mc_next_line.jsonl", "w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example) + "\n")
    print(
        f"wrote {len(docs)} documents to lm_heldout.jsonl, {len(examples)} examples to "
        "mc_next_line.jsonl"
    )


if __name__ == "__main__":
    main()
