"""Mixing a count memory into a model's next-token distribution, and scoring either alone.

Per token ``P = (1 - λ(ctx)) P_model + λ(ctx) P_counts`` in probability space, λ from the
memory's fitted gate (:mod:`engramctl.counts.gate`) or a constant ``--mix``. Every loss is over
raw token ids, so the three are comparable: the model predicts ids seen ``--min-count`` times
plus an "unknown" class, and the unknown class's probability is spread over the ids it stands
for in proportion to the count memory's unigram level ``P_0`` (the checkpoint records no unigram
of its training corpus; ``P_0`` is > 0 for every id). The model's own figure over its classes
stays in the report as ``model_vocab_loss``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...counts import CountsModel, check_mix, open_counts
from ...errors import EngramError


@dataclass(frozen=True)
class CountsSpec:
    """The count memory an ``eval``/``generate`` mixes in, and its λ (None: the fitted gate)."""

    path: Path
    mix: float | None = None

    def __post_init__(self) -> None:
        check_mix(self.mix)


def open_counts_for_model(spec: CountsSpec, checkpoint) -> CountsModel:
    """The count memory of ``spec`` checked against a checkpoint: the same vocab, tokenizer and
    layout (a memory built for another is refused, naming what differs)."""
    store = open_counts(spec.path)
    meta = store.meta
    vocab = checkpoint.vocab
    recorded = checkpoint.meta.get("tokenizer") or {}
    where = f"the count memory {spec.path}"
    if vocab is not None and meta["vocab_fingerprint"] != vocab.fingerprint:
        raise EngramError(
            f"{where} was built for vocab {meta['vocab_fingerprint']}, the model has "
            f"{vocab.fingerprint}; build it with the model's vocab"
        )
    sha = (meta.get("tokenizer") or {}).get("sha256")
    if recorded.get("sha256") and sha and sha != recorded["sha256"]:
        raise EngramError(
            f"{where} was built with tokenizer {sha[:12]}, the model with "
            f"{recorded['sha256'][:12]}; build it with the model's tokenizer"
        )
    if checkpoint.layout is not None and meta["layout"] != checkpoint.layout.to_dict():
        raise EngramError(
            f"{where} has layout {meta['layout']}, the model's table {checkpoint.layout.to_dict()}"
            "; build it with --like the model's table"
        )
    return CountsModel(store, vocab if vocab is not None else store.vocab())


def model_identity(model_dir: Path) -> dict:
    """What names a checkpoint for the gate: the sha256 of its ``config.json`` (its config,
    training options and result) and its weights file's size. Cheap to check at every eval."""
    model_dir = Path(model_dir)
    config = (model_dir / "config.json").read_bytes()
    return {
        "config_sha256": hashlib.sha256(config).hexdigest(),
        "weights_bytes": (model_dir / "model.safetensors").stat().st_size,
    }


def gate_model_mismatch(gate: dict, model_dir: Path) -> str | None:
    """Why the memory's gate was not fitted for the model at ``model_dir`` (None: it was)."""
    fitted_for = (gate or {}).get("model")
    if not fitted_for:
        return ("the count memory's gate was fitted against the unigram, not a model; fit it "
                f"for this one: engramctl fit-gate COUNTS --model {model_dir} ...")  # fmt: skip
    if fitted_for.get("identity") != model_identity(model_dir):
        return (f"the count memory's gate was fitted for the model {fitted_for.get('path')}, "
                f"not {model_dir}; refit it: engramctl fit-gate COUNTS --model {model_dir} "
                "...")  # fmt: skip
    return None


def open_counts_alone(spec: CountsSpec) -> tuple[CountsModel, object]:
    """A count memory with its own vocab, and the tokenizer it was built with (sha256-checked)."""
    from ...tokenizer import load_checked_tokenizer

    store = open_counts(spec.path)
    tok = store.meta.get("tokenizer") or {}
    tokenizer = load_checked_tokenizer(
        tok.get("name") or "deepseek-v4", sha256=tok.get("sha256") or None,
        built="the count memory was built with",
    )[0]  # fmt: skip
    return CountsModel(store, store.vocab()), tokenizer


def unknown_log_spread(model_vocab, p0: np.ndarray) -> np.ndarray:
    """``log`` of the share of the unknown class each raw id gets (``-inf`` for the ids the
    model predicts itself): ``P_0(y)`` over the sum of ``P_0`` outside the model's outputs."""
    outside = np.ones(p0.shape[0], dtype=bool)
    known = model_vocab.output_ids[model_vocab.output_ids < p0.shape[0]]
    outside[known] = False
    mass = float(p0[outside].sum())
    spread = np.full(p0.shape[0], -np.inf)
    if mass > 0:
        spread[outside] = np.log(p0[outside] / mass)
    return spread


def stream_scores(counts: CountsModel, stream: np.ndarray, windows: int, seq_len: int):
    """Counts scores ``(windows, seq_len, 4)`` of each window position's target (the stream's
    context before it, not just the window's)."""
    scores = counts.score_stream(stream)
    padded = np.zeros((windows * seq_len, 4))
    padded[: scores.shape[0]] = scores
    padded[scores.shape[0] :, 0] = 1.0  # padding targets (masked out)
    return padded.reshape(windows, seq_len, 4)


@dataclass
class MixTotals:
    """Summed nats of each scorer over the scored targets, and the λs."""

    model: float = 0.0
    counts: float = 0.0
    mixed: float = 0.0
    lam: float = 0.0
    scored: int = 0

    def add(self, model_logp, counts_p, lam) -> None:
        """Add one batch's masked targets: ``log P_model`` (raw ids), ``P_counts``, λ."""
        mixed = np.log((1 - lam) * np.exp(model_logp) + lam * counts_p)
        self.model -= float(model_logp.sum())
        self.counts -= float(np.log(counts_p).sum())
        self.mixed -= float(mixed.sum())
        self.lam += float(lam.sum())
        self.scored += int(lam.size)

    def metrics(self, n_bytes: int | None, *, with_model: bool = True) -> dict:
        def bpb(nats):
            return nats / math.log(2) / n_bytes if n_bytes else None

        n = max(self.scored, 1)
        out = {"counts_loss": self.counts / n, "counts_bits_per_byte": bpb(self.counts)}
        if with_model:
            out |= {
                "model_loss": self.model / n, "model_bits_per_byte": bpb(self.model),
                "mixed_loss": self.mixed / n, "mixed_bits_per_byte": bpb(self.mixed),
                "mean_lambda": self.lam / n,
            }  # fmt: skip
        return out


def evaluate_counts_lm(counts: CountsModel, corpus) -> dict:
    """Loss, perplexity and bits per byte of the count memory alone over a corpus stream."""
    stream = np.asarray(corpus.ids, dtype=np.int64)
    if stream.shape[0] < 2:
        raise EngramError("the benchmark holds fewer than two tokens")
    p = counts.score_stream(stream)[:, 0]
    nats = float(-np.log(p).sum())
    loss = nats / p.shape[0]
    n_bytes = corpus.text_bytes
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else None,
        "scored_tokens": int(p.shape[0]),
        "bytes": n_bytes,
        "counts_loss": loss,
    }


def mixed_distribution(
    counts: CountsModel,
    history: list[int],
    model_probs: np.ndarray,
    model_vocab,
    spread: np.ndarray,
    mix: float | None = None,
) -> tuple[np.ndarray, float]:
    """``(P over raw ids, λ)`` for ``generate``: the model's classes (``model_probs``, class 0
    the unknown one) mapped to raw ids, the unknown class spread as in
    :func:`unknown_log_spread`, mixed with ``P_counts(. | history)``."""
    positive = model_probs[model_probs > 0]
    entropy = float(-(positive * np.log(positive)).sum())  # over the model's classes
    p_counts, lam = counts.next_distribution(history, entropy)
    lam = lam if mix is None else float(mix)
    p_model = np.exp(spread) * float(model_probs[0])
    known = model_vocab.output_ids < p_model.shape[0]
    p_model[model_vocab.output_ids[known]] = model_probs[1:][known]
    return (1 - lam) * p_model + lam * p_counts, lam


def pick_raw_token(p: np.ndarray, *, temperature: float, top_k: int | None, generator) -> int:
    """A raw id from a distribution over raw ids: argmax at temperature 0, else a sample from
    ``p ** (1 / temperature)`` (renormalized) over the ``top_k`` most likely."""
    import torch

    if temperature == 0:
        return int(np.argmax(p))
    logp = np.log(np.maximum(p, 1e-300)) / temperature
    if top_k is not None and top_k < logp.shape[0]:
        kth = np.partition(logp, -top_k)[-top_k]
        logp = np.where(logp >= kth, logp, -np.inf)
    weights = torch.from_numpy(np.exp(logp - logp.max()))
    return int(torch.multinomial(weights, 1, generator=generator))
