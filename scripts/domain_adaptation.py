"""Adapting a model to a new domain by its table alone, against no adaptation and full fine-tuning.

The sample corpus has two domains: the Python documentation's help topics (``pydoc:*``, English
prose) and standard-library source (``stdlib:*``, code). A base Engram model (the demo's shape
and table) is trained on the docs; then, from the same base and a copy of its table each:

- ``none``: no adaptation;
- ``table-only``: ``train --freeze-backbone`` on the code (only the rows the code touches train,
  out of core, sparse Adam; the network's weights stay byte-identical);
- ``full``: the whole model (backbone, Engram projections and table rows) fine-tuned on the
  same code windows, same steps and schedule.

Each is scored on held-out docs and held-out code (all windows, nats/token). The model vocab
covers both domains' training text (ids seen 5+ times) so that no arm is handicapped by
"unknown" ids. Docs held-out = the corpus's held-out pydoc topics plus 8 training topics kept out
of the base's training; code held-out = the corpus's held-out stdlib modules.

    python scripts/domain_adaptation.py [--base-steps 150] [--steps 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def split_corpus(root: Path) -> dict[str, Path]:
    def read(name):
        lines = (REPO / "sample_data/corpus" / name).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    train, held = read("train.jsonl"), read("heldout.jsonl")
    docs = [d for d in train if d["id"].startswith("pydoc:")]
    code = [d for d in train if d["id"].startswith("stdlib:")]
    parts = {
        "docs_train": docs[:-8],
        "docs_heldout": docs[-8:] + [d for d in held if d["id"].startswith("pydoc:")],
        "code_train": code,
        "code_heldout": [d for d in held if d["id"].startswith("stdlib:")],
        "all_train": train,
    }
    paths = {}
    for name, documents in parts.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(d) + "\n" for d in documents))
    return paths


def heldout_losses(model, model_vocab, table_path, vocab, windows: dict) -> dict:
    import torch

    from engramctl.hashing import NgramHasher
    from engramctl.model.train.loop import heldout_loss
    from engramctl.table.core.dtypes import decode_rows
    from engramctl.table.sources.table import open_table

    hasher = NgramHasher(_layout(table_path), vocab)
    with open_table(table_path) as table:

        def lookup(layer, ids):
            flat = ids.numpy().ravel()
            rows = decode_rows(table.gather(layer, flat), table.dtype, table.dim)
            return torch.from_numpy(rows).reshape(*ids.shape, table.dim)

        return {
            name: heldout_loss(
                model, w, model_vocab, hasher=hasher, lookup=lookup, batch=16, device="cpu"
            )
            for name, w in windows.items()
        }


def _layout(table_path):
    from engramctl.table.sources.table import open_table

    with open_table(table_path) as table:
        return table.layout


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--table-lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args(argv)

    from engramctl.layout import EngramLayout
    from engramctl.model.checkpoint import load_checkpoint
    from engramctl.model.data import ModelVocab, read_corpus_stream, text_windows
    from engramctl.model.train.loop import TrainConfig, prepare_training_data, train_model
    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table
    from engramctl.tokenizer import load_tokenizer
    from engramctl.vocab import CanonicalVocab

    root = args.out or Path(tempfile.mkdtemp(prefix="domain_adaptation_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = split_corpus(root)
    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    tokenizer, _ = load_tokenizer("deepseek-v4")
    model_vocab = ModelVocab.from_stream(
        read_corpus_stream(paths["all_train"], tokenizer).ids, min_count=5
    )
    windows = {
        name: text_windows(read_corpus_stream(paths[name], tokenizer).ids, 128)
        for name in ("docs_heldout", "code_heldout")
    }

    def data(name):
        return prepare_training_data(
            corpus=paths[name],
            heldout=None,
            vocab=vocab,
            tokenizer_source=None,
            seq_len=128,
            model_vocab=model_vocab,
        )

    layout = EngramLayout(
        ngram_vocab=(20000, 20000), max_ngram=3, heads=4, layers=(1,), seed=0, pad_id=2,
        vocab_size=vocab.canonical_vocab_size,
    )  # fmt: skip
    base_table = root / "base.zarr"
    shutil.rmtree(base_table, ignore_errors=True)
    create_table(base_table, layout=layout, vocab_fingerprint=vocab.fingerprint, dim=32)
    docs = data("docs_train")
    report = {"base_steps": args.base_steps, "steps": args.steps, "runs": {}}
    started = time.perf_counter()
    with open_table(base_table, mode="r+") as table:
        train_model(
            windows=docs.windows, heldout=None, model_vocab=model_vocab,
            config=TrainConfig(steps=args.base_steps, eval_every=0), out_dir=root / "base",
            table=table, vocab=vocab, overwrite=True, extra_meta=docs.meta,
        )  # fmt: skip
    report["base_seconds"] = time.perf_counter() - started
    base = load_checkpoint(root / "base")
    report["runs"]["none"] = {
        "heldout": heldout_losses(base.model, model_vocab, base_table, vocab, windows),
        "seconds": 0.0,
    }
    print("none", report["runs"]["none"], flush=True)
    code = data("code_train")
    for arm, freeze in (("table-only", True), ("full", False)):
        table_path = root / f"{arm}.zarr"
        shutil.rmtree(table_path, ignore_errors=True)
        shutil.rmtree(root / f"{arm}.adam.zarr", ignore_errors=True)
        shutil.copytree(base_table, table_path)
        arm_base = load_checkpoint(root / "base")
        config = TrainConfig(
            steps=args.steps, eval_every=0, freeze_backbone=freeze, out_of_core=freeze,
            table_lr=args.table_lr,
        )  # fmt: skip
        started = time.perf_counter()
        with open_table(table_path, mode="r+") as table:
            result = train_model(
                windows=code.windows, heldout=None, model_vocab=model_vocab, config=config,
                out_dir=root / arm, table=table, vocab=vocab, overwrite=True,
                extra_meta=code.meta, base=arm_base,
            )  # fmt: skip
        seconds = time.perf_counter() - started
        adapted = load_checkpoint(root / arm)
        report["runs"][arm] = {
            "heldout": heldout_losses(adapted.model, model_vocab, table_path, vocab, windows),
            "seconds": seconds,
            "train_seconds": result.seconds,
            "rows_written": result.rows_written,
        }
        if freeze:
            same = (root / arm / "model.safetensors").read_bytes() == (
                root / "base" / "model.safetensors"
            ).read_bytes()
            report["runs"][arm]["weights_byte_identical"] = same
        print(arm, report["runs"][arm], flush=True)
    print(json.dumps(report))
    print("| arm | docs held-out loss | code held-out loss | wall time |")
    print("| --- | --- | --- | --- |")
    for arm, run in report["runs"].items():
        h = run["heldout"]
        print(
            f"| {arm} | {h['docs_heldout']:.4f} | {h['code_heldout']:.4f} | {run['seconds']:.0f}s |"
        )
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
