"""Which gate keeps the old domain and the new domain's gain: feature sets compared on a split.

On the docs/code split of ``scripts/domain_adaptation.py`` (a base trained on the docs; a count
memory of the code's training split ``--like`` its table), each held-out file is cut by
documents into a half to fit on and a half to score on. One pass of the model over each half
collects, per scored token, ``log P_model`` over raw ids, ``P_counts`` and every gate input
(:func:`engramctl.model.serve.gate_fit.collect_gate_data`, what ``fit-gate`` fits on); each
feature set of :data:`engramctl.counts.gate.FEATURE_SETS` is then fitted on the fit halves
(both domains, each file weighing the same, as ``fit-gate`` does; and with ``--keep`` the
docs fit half) and scored on the other
halves exactly as ``eval`` mixes (λ per token, ``log((1-λ) P_model + λ P_counts)``). Also: the
build's gate, constant λs, and the best set fitted on the new domain alone.

    python scripts/gate_compare.py --root DIR [--counts C.zarr]

``DIR`` is a kept ``domain_adaptation.py --out DIR`` (its ``base``, ``base.zarr`` and split
files); without ``--counts`` the count memory is built in ``DIR/code-counts.zarr``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def halves(root: Path) -> dict:
    """Each held-out file cut by documents into ``fit`` and ``eval`` halves."""
    out = {}
    for domain in ("docs_heldout", "code_heldout"):
        docs = (root / f"{domain}.jsonl").read_text().splitlines()
        cut = len(docs) // 2
        for part, lines in (("fit", docs[:cut]), ("eval", docs[cut:])):
            out[domain, part] = root / f"{domain}-{part}.jsonl"
            out[domain, part].write_text("\n".join(lines) + "\n")
    return out


def build(root: Path) -> Path:
    from engramctl.counts import BuildCountsJob, build_counts
    from engramctl.layout import ResolvedLayout
    from engramctl.table.sources.table import open_table
    from engramctl.vocab import CanonicalVocab

    counts = root / "code-counts.zarr"
    if not counts.exists():
        with open_table(root / "base.zarr") as table:
            layout = table.layout
        built = build_counts(
            job=BuildCountsJob(inputs=(str(root / "code_train.jsonl"),), out=counts),
            vocab=CanonicalVocab.from_tokenizer("deepseek-v4"),
            layout=ResolvedLayout(layout, layout.layers, None, None, "base.zarr"),
        )  # fmt: skip
        print(f"build-counts {built.seconds:.1f} s, {built.tokens:,} tokens", flush=True)
    return counts


def mixed_loss(data: dict, lam: np.ndarray) -> float:
    p_model, p_counts = np.exp(data["model_logp"]), data["scores"][:, 0]
    return float(-np.mean(np.log((1 - lam) * p_model + lam * p_counts)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--counts", type=Path, default=None)
    args = parser.parse_args(argv)

    from engramctl.counts.gate import FEATURE_SETS, GateInputs, fit_gate, gate_lambda
    from engramctl.model.serve.gate_fit import KEEP_NATS, collect_gate_data, fit_kept
    from engramctl.model.serve.mixing import CountsSpec, open_counts_for_model
    from engramctl.model.serve.opening import ModelSpec, open_model
    from engramctl.table.sources.table import open_table

    root = args.root
    counts_path = args.counts or build(root)
    files = halves(root)
    data = {}
    started = time.perf_counter()
    with open_table(root / "base.zarr") as table:
        opened = open_model(ModelSpec(root / "base", table, "cpu", 1 << 20, True))
        counts = open_counts_for_model(CountsSpec(counts_path), opened.checkpoint)
        for key, path in files.items():
            data[key] = collect_gate_data(opened, counts, [path])
    print(f"collected in {time.perf_counter() - started:.1f} s", flush=True)
    M = counts.max_level
    domains = ("docs_heldout", "code_heldout")
    fit_parts = [data[d, "fit"] for d in domains]
    fit = {
        "model_logp": np.concatenate([p["model_logp"] for p in fit_parts]),
        "scores": np.concatenate([p["scores"] for p in fit_parts]),
        "inputs": GateInputs.concat([p["inputs"] for p in fit_parts]),
        "file": np.concatenate([np.full(len(p["model_logp"]), i) for i, p in enumerate(fit_parts)]),
    }  # fmt: skip
    rows = {}

    def score(name, lam_of, extra=""):
        rows[name] = {d: (mixed_loss(data[d, "eval"], lam := lam_of(data[d, "eval"])),
                          float(lam.mean())) for d in domains}  # fmt: skip
        rows[name]["note"] = extra

    for d in domains:
        e = data[d, "eval"]
        rows.setdefault("model alone", {})[d] = (float(-e["model_logp"].mean()), 0.0)
        rows.setdefault("counts alone", {})[d] = (float(-np.log(e["scores"][:, 0]).mean()), 1.0)
    build_gate = counts.store.meta["gate"]
    score("build gate (vs unigram)",
          lambda e: gate_lambda(build_gate["weights"], e["inputs"].evidence, M))  # fmt: skip
    for c in (0.05, 0.25, 0.5):
        score(f"constant λ {c}", lambda e, c=c: np.full(len(e["model_logp"]), c))
    for name, names in FEATURE_SETS.items():
        for keep in (False, True):
            t = time.perf_counter()
            gate = fit_kept(fit, M, names, np.array([keep, False]), KEEP_NATS)
            label = f"fit-gate --features {name}" + (" --keep docs" if keep else "")
            note = (f"{time.perf_counter() - t:.1f} s; keep {gate.get('keep')}; "
                    f"w={np.round(gate['weights'], 3).tolist()}")  # fmt: skip
            score(label, lambda e, g=gate: gate_lambda(g["weights"], e["inputs"], M,
                                                       names=g["features"]), note)  # fmt: skip
    code_fit = data["code_heldout", "fit"]
    gate = fit_gate(code_fit["scores"][:, 0], np.exp(code_fit["model_logp"]),
                    code_fit["inputs"], M, background="model",
                    features=FEATURE_SETS["all"])  # fmt: skip
    score(
        "--features all, fitted on the new domain only",
        lambda e, g=gate: gate_lambda(g["weights"], e["inputs"], M, names=g["features"]),
    )
    base = rows["model alone"]
    print("| gate | docs (old) mixed loss (Δ vs model) | mean λ | code (new) mixed loss "
          "(gain vs model) | mean λ |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        (dl, dm), (cl, cm) = r["docs_heldout"], r["code_heldout"]
        print(f"| {name} | {dl:.4f} ({dl - base['docs_heldout'][0]:+.4f}) | {dm:.3f} | "
              f"{cl:.4f} ({cl - base['code_heldout'][0]:+.4f}) | {cm:.3f} |")  # fmt: skip
    for name, r in rows.items():
        if r.get("note"):
            print(name, r["note"])
    sizes = {f"{d}/{p}": int(len(data[d, p]["model_logp"])) for d, p in data}
    print("scored tokens:", json.dumps(sizes))
    return rows


if __name__ == "__main__":
    main()
