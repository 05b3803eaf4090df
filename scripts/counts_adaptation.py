"""A new domain by counting it: the count memory against no adaptation, on the docs/code split.

The split and the base model of ``scripts/domain_adaptation.py`` (a base Engram model trained
on the docs half of the sample corpus): a count memory is built from the code half's training
split (``build-counts --like`` the base's table), timed against one ``hash-stats`` pass over the
same corpus and layout; then the base is scored on held-out docs (old domain) and held-out code
(new domain): the model alone, the counts alone, and mixed (the fitted gate, and constant λ).
With a model, the gate is then refitted against it (``fit-gate``) on the first half of each
held-out file's documents and both gates are scored on the other half (``--fit-gate``).
Every loss is over raw token ids (docs/counts.md); ``model_vocab_loss`` is the model's own
figure over its classes (the figure docs/model.md's table reports).

    python scripts/counts_adaptation.py [--base-steps 150] [--base DIR] [--out DIR]

``--base DIR`` reuses a kept ``domain_adaptation.py --out DIR`` (its ``base`` and
``base.zarr``) instead of training the base again; ``--base-steps 0`` trains no model and
scores the count memory alone (built in the base's layout).
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
sys.path.insert(0, str(REPO / "scripts"))


def base_layout(vocab):
    """The base's layout in domain_adaptation.py: one layer, orders 2..3, 4 heads of ~20k."""
    from engramctl.layout import EngramLayout

    return EngramLayout(
        ngram_vocab=(20000, 20000), max_ngram=3, heads=4, layers=(1,), seed=0, pad_id=2,
        vocab_size=vocab.canonical_vocab_size,
    )  # fmt: skip


def train_base(root: Path, paths: dict, steps: int) -> None:
    """The base of domain_adaptation.py: same vocab, layout, table, steps, seed."""
    from engramctl.model.data import ModelVocab, read_corpus_stream
    from engramctl.model.train.loop import TrainConfig, prepare_training_data, train_model
    from engramctl.table.build.create import create_table
    from engramctl.table.sources.table import open_table
    from engramctl.tokenizer import load_tokenizer
    from engramctl.vocab import CanonicalVocab

    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    tokenizer, _ = load_tokenizer("deepseek-v4")
    model_vocab = ModelVocab.from_stream(
        read_corpus_stream(paths["all_train"], tokenizer).ids, min_count=5
    )
    docs = prepare_training_data(corpus=paths["docs_train"], heldout=None, vocab=vocab,
                                 tokenizer_source=None, seq_len=128,
                                 model_vocab=model_vocab)  # fmt: skip
    layout = base_layout(vocab)
    create_table(root / "base.zarr", layout=layout, vocab_fingerprint=vocab.fingerprint, dim=32)
    with open_table(root / "base.zarr", mode="r+") as table:
        train_model(
            windows=docs.windows, heldout=None, model_vocab=model_vocab,
            config=TrainConfig(steps=steps, eval_every=0), out_dir=root / "base", table=table,
            vocab=vocab, overwrite=True, extra_meta=docs.meta,
        )  # fmt: skip


def main(argv=None) -> dict:
    from domain_adaptation import split_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--base", type=Path, default=None, help="reuse this base run")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--mix", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--no-fit-gate", action="store_true", help="skip the gate refit")
    args = parser.parse_args(argv)

    from engramctl.counts import BuildCountsJob, build_counts
    from engramctl.layout import ResolvedLayout
    from engramctl.model.serve.eval_run import EvalRequest, run_eval
    from engramctl.stats import run as hash_stats
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    root = args.out or Path(tempfile.mkdtemp(prefix="counts_adaptation_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = split_corpus(root)
    report: dict = {"runs": {}}
    if args.base is not None:
        for name in ("base", "base.zarr"):
            if not (root / name).exists():
                shutil.copytree(args.base / name, root / name)
    elif args.base_steps > 0:
        started = time.perf_counter()
        train_base(root, paths, args.base_steps)
        report["base_seconds"] = time.perf_counter() - started
    vocab = CanonicalVocab.from_tokenizer("deepseek-v4")
    with_model = args.base is not None or args.base_steps > 0
    if with_model:
        with open_table(root / "base.zarr") as table:
            layout = table.layout
    else:
        layout = base_layout(vocab)
    resolved = ResolvedLayout(layout, layout.layers, None, None, "base.zarr")
    tokenizer = hash_stats.load_matching_tokenizer("deepseek-v4", vocab)
    plan = hash_stats.plan_hash_stats([str(paths["code_train"])], layout=layout)
    hash_stats.run_hash_stats(plan, vocab=vocab, tokenizer=tokenizer)  # warm (numba, pages)
    started = time.perf_counter()
    hash_stats.run_hash_stats(plan, vocab=vocab, tokenizer=tokenizer)
    report["hash_stats_seconds"] = time.perf_counter() - started
    counts = root / "code-counts.zarr"
    built = build_counts(
        job=BuildCountsJob(inputs=(str(paths["code_train"]),), out=counts, overwrite=True),
        vocab=vocab, layout=resolved,
    )  # fmt: skip
    report["build"] = built.to_dict()
    print(f"hash-stats {report['hash_stats_seconds']:.1f}s, build-counts {built.seconds:.1f}s, "
          f"{built.tokens:,} tokens, {built.bytes:,} bytes", flush=True)  # fmt: skip

    def score(benchmark, **options):
        request = EvalRequest(
            model=options.get("model", root / "base"), benchmark=benchmark,
            table=root / "base.zarr" if options.get("model", 1) is not None else None,
            device="cpu", batch=16, cache_rows=1 << 20, resident=True, explain=None,
            lm_eval_tasks=None, limit=None, tokenizer=None, report=None, overwrite=False,
            strict_table=False, counts=options.get("counts"), mix=options.get("mix"),
        )  # fmt: skip
        return run_eval(request, open_table=lambda p, mode="r", vocab=None: open_table(p)).doc

    for domain in ("docs_heldout", "code_heldout"):
        runs = report["runs"].setdefault(domain, {})
        runs["counts alone"] = score(paths[domain], counts=counts, model=None)["metrics"]
        print(domain, "counts alone", json.dumps(runs["counts alone"]), flush=True)
        if not with_model:
            continue
        runs["gate"] = score(paths[domain], counts=counts)["metrics"]
        for mix in args.mix:
            runs[f"mix {mix}"] = score(paths[domain], counts=counts, mix=mix)["metrics"]
        print(domain, json.dumps(runs["gate"]), flush=True)
    if with_model and not args.no_fit_gate:
        report["fit_gate"] = refit_gate(root, paths, counts, score)
    print(json.dumps(report))
    if not with_model:
        return report
    print("| domain | model (raw ids) | model_vocab_loss | counts alone | mixed, gate (mean λ) |"
          + "".join(f" mixed, λ {m} |" for m in args.mix))  # fmt: skip
    print("| --- | --- | --- | --- | --- |" + " --- |" * len(args.mix))
    for domain, runs in report["runs"].items():
        g = runs["gate"]
        print(f"| {domain} | {g['model_loss']:.4f} | {g['model_vocab_loss']:.4f} | "
              f"{g['counts_loss']:.4f} | {g['mixed_loss']:.4f} ({g['mean_lambda']:.3f}) |"
              + "".join(f" {runs[f'mix {m}']['mixed_loss']:.4f} |" for m in args.mix))  # fmt: skip
    if "fit_gate" in report:
        f = report["fit_gate"]
        print(f"gate fitted against the base on {f['gate']['heldout_positions']:,} tokens "
              f"(first half of each held-out file) in {f['seconds']:.1f} s; scored on the other "
              "half:")  # fmt: skip
        print("| domain | model (raw ids) | counts alone | mixed, build gate (mean λ) | "
              "mixed, fitted gate (mean λ) |")  # fmt: skip
        print("| --- | --- | --- | --- | --- |")
        for domain, runs in f["runs"].items():
            b, g = runs["build gate"], runs["fitted gate"]
            print(f"| {domain} | {g['model_loss']:.4f} | {g['counts_loss']:.4f} | "
                  f"{b['mixed_loss']:.4f} ({b['mean_lambda']:.3f}) | {g['mixed_loss']:.4f} "
                  f"({g['mean_lambda']:.3f}) |")  # fmt: skip
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return report


def refit_gate(root: Path, paths: dict, counts: Path, score) -> dict:
    """Fit the gate against the base on the first half of each held-out file's documents
    (``fit-gate``), then score the build's gate and the fitted one on the other half."""
    from engramctl.model.serve.gate_fit import fit_counts_gate
    from engramctl.model.serve.opening import ModelSpec
    from engramctl.table.sources.table import open_table

    halves = {}
    for domain in ("docs_heldout", "code_heldout"):
        docs = paths[domain].read_text().splitlines()
        cut = len(docs) // 2
        for part, lines in (("fit", docs[:cut]), ("eval", docs[cut:])):
            halves[domain, part] = root / f"{domain}-{part}.jsonl"
            halves[domain, part].write_text("\n".join(lines) + "\n")
    runs = {d: {"build gate": score(halves[d, "eval"], counts=counts)["metrics"]}
            for d in ("docs_heldout", "code_heldout")}  # fmt: skip
    started = time.perf_counter()
    with open_table(root / "base.zarr") as table:
        gate = fit_counts_gate(
            model=ModelSpec(root / "base", table, "cpu", 1 << 20, True), counts_path=counts,
            benchmarks=[halves["docs_heldout", "fit"], halves["code_heldout", "fit"]],
        )  # fmt: skip
    seconds = time.perf_counter() - started
    for domain in runs:
        runs[domain]["fitted gate"] = score(halves[domain, "eval"], counts=counts)["metrics"]
    return {"gate": gate, "seconds": seconds, "runs": runs}


if __name__ == "__main__":
    main()
