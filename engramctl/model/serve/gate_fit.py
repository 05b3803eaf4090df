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

from ...errors import EngramError

MIN_POSITIONS = 32  # fewer scored targets than this are no fit


def fit_counts_gate(*, model, counts_path: Path, benchmarks: list[Path], batch: int = 16,
                    on_progress=None) -> dict:  # fmt: skip
    """Fit the gate of the count memory at ``counts_path`` against ``model`` and store it.

    Parameters
    ----------
    model : :class:`~engramctl.model.serve.opening.ModelSpec`, the checkpoint and its table.
    counts_path : the count memory (built for the model's vocab, tokenizer and layout).
    benchmarks : held-out language-modelling files, scored as ``eval`` scores them.
    batch : windows per forward pass.
    on_progress : ``(done, total)`` windows of the current file.

    Returns
    -------
    dict
        The stored gate: weights, the fit's figures (held-out positions, losses of the model,
        the counts and the mix, mean λ), the model's path and identity, the files fitted on.
    """
    from ...corpus.stream import read_corpus_stream
    from ...counts import open_counts
    from ...counts.gate import fit_gate
    from ...counts.store import write_gate
    from .evaluate import benchmark_kind, evaluate_lm
    from .mixing import CountsSpec, model_identity, open_counts_for_model
    from .opening import open_model

    for bench in benchmarks:
        if not Path(bench).exists():
            raise EngramError(f"benchmark not found: {bench}")
        if benchmark_kind(Path(bench)) != "lm":
            raise EngramError(f"{bench} is a multiple-choice file; fit the gate on held-out text")
    open_counts(counts_path)  # a damaged memory is named before the model loads
    opened = open_model(model)
    counts = open_counts_for_model(CountsSpec(Path(counts_path)), opened.checkpoint)
    collected: list = []
    for bench in benchmarks:
        corpus = read_corpus_stream(Path(bench), opened.tokenizer)
        if len(corpus.ids) < 2:
            raise EngramError(f"{bench} holds fewer than two tokens")
        evaluate_lm(opened.runner, corpus, opened.tokenizer, batch=batch,
                    on_progress=on_progress, counts=counts, collect=collected)  # fmt: skip
    model_logp = np.concatenate([c[0] for c in collected])
    scores = np.concatenate([c[1] for c in collected])
    entropy = np.concatenate([c[2] for c in collected])
    if model_logp.shape[0] < MIN_POSITIONS:
        raise EngramError(
            f"the benchmarks hold {model_logp.shape[0]} scored tokens; the gate needs at least "
            f"{MIN_POSITIONS}: give more held-out text"
        )
    gate = fit_gate(scores[:, 0], np.exp(model_logp), scores[:, 1:4], counts.max_level,
                    background="model", model_entropy=entropy)  # fmt: skip
    gate["heldout_loss_model"] = float(-model_logp.mean())  # exact, not from clipped probs
    model_dir = Path(model.model_dir).absolute()
    gate["model"] = {"path": str(model_dir), "identity": model_identity(model_dir)}
    gate["benchmarks"] = [str(b) for b in benchmarks]
    previous = counts.store.meta.get("gate") or {}
    if previous.get("against", "unigram") == "unigram" and previous.get("fitted"):
        gate["build_gate"] = {k: previous[k] for k in ("weights", "mean_lambda") if k in previous}
    del counts, opened
    write_gate(counts_path, gate)
    return gate
