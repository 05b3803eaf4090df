"""Helpers shared by the benchmark scripts (not a benchmark itself: run_all skips it)."""

from __future__ import annotations


def layout_with_rows(target_rows: int):
    """A demo-shaped layout (one layer, 2 orders x 8 heads) of about ``target_rows`` rows."""
    from engramctl import EngramLayout

    per_head = max(2, target_rows // 16)
    return EngramLayout(
        ngram_vocab=(per_head, per_head),
        max_ngram=3,
        heads=8,
        layers=(1,),
        seed=0,
        pad_id=2,
        vocab_size=100_000,
    )


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_case(script: str, *args: str) -> dict:
    """Run ``script`` (a benchmark re-running itself for one case) in a fresh interpreter, so its
    peak RSS is its own, and return the JSON document it prints last."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, script, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_zipf_corpus(workdir, tokens: int):
    """The hash-stats benchmarks' input in ``workdir``: ``vocab.parquet`` (the bundled DeepSeek
    vocab) and ``zipf.u32``, a flat uint32 stream of ``tokens`` Zipf(1.2) ids in 1,000-token
    documents (separator id 0; most 4-grams distinct, the count maps' worst case). Returns the
    vocab."""
    import numpy as np

    from engramctl import CanonicalVocab

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    vocab.save(workdir / "vocab.parquet")
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.2, size=tokens) + 2
    ids = np.where(ids < vocab.source_vocab_size, ids, 5).astype(np.uint32)
    ids[::1000] = 0  # document separator
    ids.tofile(workdir / "zipf.u32")
    return vocab
