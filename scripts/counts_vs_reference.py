"""How far hashing and top-K truncation move the count memory's held-out loss from the exact
reference estimator (docs/counts.md, "Hashing and truncation against the reference").

The first 40 documents of the sample corpus are counted by the reference (exact dicts) and by
``build_counts`` at two table sizes and two K; each scores the first 8,000 tokens of the held-out
file. Needs ``vocab.parquet`` (``engramctl build-vocab``) in the working directory or as argv[1].

    python scripts/counts_vs_reference.py [vocab.parquet] [workdir]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engramctl.corpus.stream import read_corpus_stream
from engramctl.counts import BuildCountsJob, CountsModel, build_counts, open_counts
from engramctl.counts.reference import ReferenceCounts
from engramctl.layout import EngramLayout, ResolvedLayout
from engramctl.tokenizer import load_tokenizer
from engramctl.vocab import CanonicalVocab

tok = load_tokenizer("deepseek-v4")[0]
v = CanonicalVocab.load(sys.argv[1] if len(sys.argv) > 1 else "vocab.parquet")
work = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp())
docs = [json.loads(line) for line in open("sample_data/corpus/train.jsonl")][:40]
(work / "sub.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
t = time.time()
ref = ReferenceCounts(vocab_size=v.source_vocab_size, max_order=3, pad=int(v.canonical_ids[2]))
for d in docs:
    ids = np.array(tok.encode(d["text"], add_special_tokens=False).ids)
    ref.add(v.canonical_ids[ids], ids)
ref.finish()
print("ref built", round(time.time() - t, 1), "s; tokens", int(ref.unigram.sum()), flush=True)
held = read_corpus_stream("sample_data/corpus/heldout.jsonl", tok).ids[:8000]
canon = v.canonical_ids[held]
lp = [np.log(ref.prob(canon[:i], held[i])) for i in range(1, len(held))]
print("reference (exact, no truncation) loss", round(-np.mean(lp), 4), flush=True)
for rows, k in ((20000, 8), (20000, 64), (646400, 8), (646400, 64)):
    lay = EngramLayout(
        ngram_vocab=(rows, rows),
        max_ngram=3,
        heads=4,
        layers=(1,),
        seed=0,
        pad_id=2,
        vocab_size=v.canonical_vocab_size,
    )
    out = work / f"sub-{rows}-{k}.zarr"
    build_counts(
        job=BuildCountsJob(inputs=(str(work / "sub.jsonl"),), out=out, top_k=k, overwrite=True),
        vocab=v,
        layout=ResolvedLayout(lay, (1,), None, None, "x"),
    )
    m = CountsModel(open_counts(out), v)
    print(
        f"store: 4 heads x {rows} rows per order, K={k}: loss",
        round(-np.mean(np.log(m.score_stream(held)[:, 0])), 4),
        flush=True,
    )
