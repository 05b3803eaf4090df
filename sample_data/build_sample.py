"""Rebuild the sample corpus from text that ships with every Python installation.

Sources (PSF-licensed, see LICENSE-PSF.txt): the ``pydoc_data.topics`` help texts (English prose)
and the top-level modules of the standard library's source (code, comments and docstrings).
Each topic or module is one document. A document goes to the held-out split when the first byte
of the sha256 of its name is below 26 (about 10%); the rest is training text.

    python sample_data/build_sample.py            # writes sample_data/corpus/*.jsonl

The output depends on the Python version it runs under (the stdlib differs); the committed files
record theirs in corpus/SOURCE.json.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "corpus"
MODULE_BUDGET = 2_400_000  # bytes of stdlib source, so the corpus stays a few MB
MAX_MODULE_BYTES = 120_000  # skip the very largest modules so more variety fits


def is_heldout(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] < 26


def documents() -> list[dict]:
    import pydoc_data.topics as topics

    docs = [
        {"id": f"pydoc:{name}", "text": topics.topics[name].strip() + "\n"}
        for name in sorted(topics.topics)
    ]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    used = 0
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith(("_", "test")) or path.name == "this.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > MAX_MODULE_BYTES or used + len(text) > MODULE_BUDGET:
            continue
        used += len(text)
        docs.append({"id": f"stdlib:{path.name}", "text": text})
    return docs


def main() -> None:
    OUT.mkdir(exist_ok=True)
    docs = documents()
    splits = {"train": [], "heldout": []}
    for doc in docs:
        splits["heldout" if is_heldout(doc["id"]) else "train"].append(doc)
    for split, rows in splits.items():
        with open(OUT / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copyfile(stdlib / "LICENSE.txt", HERE / "LICENSE-PSF.txt")
    info = {
        "python": platform.python_version(),
        "documents": {k: len(v) for k, v in splits.items()},
        "bytes": {k: sum(len(d["text"].encode()) for d in v) for k, v in splits.items()},
    }
    (OUT / "SOURCE.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
