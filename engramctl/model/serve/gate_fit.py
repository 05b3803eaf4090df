"""``engramctl fit-gate``: fit a count memory's gate λ against the model it will be mixed with.

``build-counts`` fits the gate against the unigram (the build has no model), and with a real
model that gate leans towards the counts. This fits it again on held-out text with the model
itself as the background: per scored target, ``log P_model`` over raw ids (the unknown class
spread as eval spreads it, :mod:`engramctl.model.serve.mixing`) and ``P_counts`` with the
context's evidence come from eval's own pass (:func:`~.evaluate.evaluate_lm`), and
:func:`engramctl.counts.gate.fit_gate` maximizes the likelihood of
``(1 - λ) P_model + λ P_counts``. The gate, the fit's figures and the model's identity
(:func:`~.mixing.model_identity`) replace the memory's gate as one commit
(:func:`engramctl.counts.store.write_gate`). Give held-out text of every domain the mix will
see (several ``--benchmark`` files): a gate fitted on the new domain alone learns where the
counts help, not where they hurt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...counts.gate import DEFAULT_FEATURE_SET, FEATURE_SETS
from ...errors import EngramError, UsageError

MIN_POSITIONS = 32  # fewer scored targets than this are no fit
KEEP_NATS = 0.005  # in sample: half the 0.01, a margin for text the fit never saw
MAX_KEEP_WEIGHT = 4096.0  # a kept file weighs at most this many times the others


def collect_gate_data(opened, counts, benchmarks: list[Path], *, batch: int = 16,
                      on_progress=None) -> dict:  # fmt: skip
    """Per scored target of each held-out file, as eval computes them: ``log P_model`` over raw
    ids (``model_logp``), the counts' scores (``scores``, ``(P, 4)``), every
    :class:`~engramctl.counts.gate.GateInputs` field (``inputs``) and which file (``file``)."""
    from ...corpus.stream import read_corpus_stream
    from ...counts.gate import GateInputs
    from .evaluate import evaluate_lm

    parts, files = [], []
    for f, bench in enumerate(benchmarks):
        corpus = read_corpus_stream(Path(bench), opened.tokenizer)
        if len(corpus.ids) < 2:
            raise EngramError(f"{bench} holds fewer than two tokens")
        collected: list = []
        evaluate_lm(opened.runner, corpus, opened.tokenizer, batch=batch,
                    on_progress=on_progress, counts=counts, collect=collected)  # fmt: skip
        parts += collected
        files += [np.full(len(c[0]), f) for c in collected]
    return {
        "model_logp": np.concatenate([c[0] for c in parts]),
        "scores": np.concatenate([c[1] for c in parts]),
        "inputs": GateInputs.concat([c[2] for c in parts]),
        "file": np.concatenate(files),
    }


def file_weights(file: np.ndarray) -> np.ndarray:
    """Per position, so each held-out file weighs the same in the fit whatever its length."""
    sizes = np.bincount(file)
    return 1.0 / sizes[file]


def fit_kept(data: dict, max_level: int, names, kept: np.ndarray, keep_nats: float) -> dict:
    """The gate fitted on ``data`` (each file weighing the same) with the files ``kept`` (a
    boolean per file) costing at most ``keep_nats`` nats/token each in sample: their weight in
    the objective doubles until they do (at most :data:`MAX_KEEP_WEIGHT`). ``gate["keep"]``
    says the weight used and each kept file's in-sample cost."""
    from ...counts.gate import fit_gate, gate_lambda

    p_counts, p_model = data["scores"][:, 0], np.exp(data["model_logp"])
    base = file_weights(data["file"])
    weight = 1.0
    while True:
        w = base * np.where(kept[data["file"]], weight, 1.0)
        gate = fit_gate(p_counts, p_model, data["inputs"], max_level, background="model",
                        features=names, sample_weight=w)  # fmt: skip
        lam = gate_lambda(gate["weights"], data["inputs"], max_level, names=gate["features"])
        nats = -np.log((1 - lam) * p_model + lam * p_counts) + data["model_logp"]
        costs = {int(f): float(nats[data["file"] == f].mean()) for f in np.flatnonzero(kept)}
        if all(c <= keep_nats for c in costs.values()) or weight >= MAX_KEEP_WEIGHT:
            break
        weight *= 2
    if costs:
        gate["keep"] = {"nats": keep_nats, "weight": weight, "costs": list(costs.values()),
                        "met": all(c <= keep_nats for c in costs.values())}  # fmt: skip
    return gate


def fit_counts_gate(*, model, counts_path: Path, benchmarks: list[Path], batch: int = 16,
                    on_progress=None, features: str = DEFAULT_FEATURE_SET,
                    keep: tuple[Path, ...] = (), keep_nats: float = KEEP_NATS) -> dict:  # fmt: skip
    """Fit the gate of the count memory at ``counts_path`` against ``model`` and store it.

    Parameters
    ----------
    model : :class:`~engramctl.model.serve.opening.ModelSpec`, the checkpoint and its table.
    counts_path : the count memory (built for the model's vocab, tokenizer and layout).
    benchmarks : held-out language-modelling files, scored as ``eval`` scores them.
    batch : windows per forward pass.
    features : the feature set (:data:`~engramctl.counts.gate.FEATURE_SETS`); each file
        weighs the same in the fit.
    keep : held-out text of a domain the model already knows (fitted on too): the mix may cost
        each such file at most ``keep_nats`` nats/token in sample (:func:`fit_kept`). The
        issue's promise ("the old domain within 0.01 nats") as a constraint of the fit rather
        than a hope: fitted for the average, a gate trades the old domain's nats for the new
        one's.
    on_progress : ``(done, total)`` windows of the current file.

    Returns
    -------
    dict
        The stored gate: weights, the fit's figures (held-out positions, losses of the model,
        the counts and the mix, mean λ), the model's path and identity, the files fitted on.
    """
    from ...counts import open_counts
    from ...counts.store import write_gate
    from .evaluate import benchmark_kind
    from .mixing import CountsSpec, model_identity, open_counts_for_model
    from .opening import open_model

    benchmarks = [*benchmarks, *keep]
    if not keep_nats >= 0:
        raise UsageError(f"--keep-nats must be >= 0, got {keep_nats}")
    if features not in FEATURE_SETS:
        raise UsageError(f"--features must be one of {', '.join(FEATURE_SETS)}, got {features!r}")
    for bench in benchmarks:
        if not Path(bench).exists():
            raise EngramError(f"benchmark not found: {bench}")
        if benchmark_kind(Path(bench)) != "lm":
            raise EngramError(f"{bench} is a multiple-choice file; fit the gate on held-out text")
    open_counts(counts_path)  # a damaged memory is named before the model loads
    opened = open_model(model)
    counts = open_counts_for_model(CountsSpec(Path(counts_path)), opened.checkpoint)
    data = collect_gate_data(opened, counts, benchmarks, batch=batch, on_progress=on_progress)
    model_logp = data["model_logp"]
    if model_logp.shape[0] < MIN_POSITIONS:
        raise EngramError(
            f"the benchmarks hold {model_logp.shape[0]} scored tokens; the gate needs at least "
            f"{MIN_POSITIONS}: give more held-out text"
        )
    kept = np.arange(len(benchmarks)) >= len(benchmarks) - len(keep)
    gate = fit_kept(data, counts.max_level, FEATURE_SETS[features], kept, keep_nats)
    gate["feature_set"] = features
    gate["heldout_loss_model"] = float(-model_logp.mean())  # exact, not from clipped probs
    model_dir = Path(model.model_dir).absolute()
    gate["model"] = {"path": str(model_dir), "identity": model_identity(model_dir)}
    gate["benchmarks"] = [str(b) for b in benchmarks]
    if keep:
        gate["keep"]["files"] = [str(k) for k in keep]
    previous = counts.store.meta.get("gate") or {}
    if previous.get("against", "unigram") == "unigram" and previous.get("fitted"):
        gate["build_gate"] = {k: previous[k] for k in ("weights", "mean_lambda") if k in previous}
    del counts, opened
    write_gate(counts_path, gate)
    return gate
