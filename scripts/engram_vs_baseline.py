"""The engram-vs-baseline comparison and its ablations, as in docs/model.md ("Results").

Trains the --no-engram baseline once and one Engram model per variant on the sample corpus with the
same backbone, data order, steps and seed, each on a fresh table, and prints the final held-out
loss over every held-out window. Slow on CPU (a few minutes per run on 2 idle cores).

    python scripts/engram_vs_baseline.py [--steps 300] [--variants default,order2,frozen]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (layout overrides, TrainConfig overrides); "default" is the demo's configuration.
VARIANTS = {
    "default": ({}, {}),
    "table_lr_3e-2": ({}, {"table_lr": 3e-2}),
    "rows_5k": ({"ngram_vocab": (5000, 5000)}, {}),
    "layer0": ({"layers": (0,)}, {}),
    "order2": ({"ngram_vocab": (20000,), "max_ngram": 2}, {}),
    "frozen": ({}, {"table_lr": 0.0}),
}
DEFAULT_LAYOUT = {
    "ngram_vocab": (20000, 20000),
    "max_ngram": 3,
    "heads": 4,
    "layers": (1,),
    "seed": 0,
    "pad_id": 2,
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", default="default,order2,frozen")
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args(argv)

    from engramctl.layout import EngramLayout
    from engramctl.model.train.loop import TrainConfig, prepare_training_data, train_model
    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    data = prepare_training_data(
        corpus=REPO / "sample_data/corpus/train.jsonl",
        heldout=REPO / "sample_data/corpus/heldout.jsonl",
        vocab=vocab,
        tokenizer_source=None,
        seq_len=128,
        min_count=5,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="engram_vs_baseline_") as tmp:
        root = Path(tmp)
        runs = [("baseline", None)] + [(v, VARIANTS[v]) for v in args.variants.split(",")]
        for name, variant in runs:
            table = None
            overrides = {}
            if variant is not None:
                layout_overrides, overrides = variant
                layout = EngramLayout(
                    **{**DEFAULT_LAYOUT, **layout_overrides}, vocab_size=vocab.canonical_vocab_size
                )
                create_table(
                    root / f"{name}.zarr",
                    layout=layout,
                    vocab_fingerprint=vocab.fingerprint,
                    dim=args.dim,
                )
                table = open_table(root / f"{name}.zarr", mode="r+")
            config = TrainConfig(steps=args.steps, engram=variant is not None, **overrides)
            result = train_model(
                windows=data.windows,
                heldout=data.heldout,
                model_vocab=data.model_vocab,
                config=config,
                out_dir=root / name,
                table=table,
                vocab=vocab,
            )
            if table is not None:
                table.close()
            results[name] = result.final_heldout_loss
            print(
                f"{name:14s} held-out loss {result.final_heldout_loss:.4f} ({result.seconds:.0f}s)",
                flush=True,
            )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
