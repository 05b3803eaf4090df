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
from functools import cached_property
from pathlib import Path

import numpy as np

from ...counts import CountsModel, check_mix, open_counts
from ...counts.gate import RECENT_DECAY, GateInputs, RecentGain
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


class MixPass:
    """The mix over eval's windows, one batch at a time: λ per position from the gate (and
    what it reads of the model: its entropy, its top token, the counts' recent gain over it)
    and the three losses (:class:`MixTotals`).

    ``stream`` is the benchmark's raw ids; ``raw_targets`` the ``(windows, seq_len)`` targets
    of eval's windows of it (in stream order, padding at the end); ``eos`` the id that
    separates documents (``recent_gain`` restarts after it); ``everything``: compute every
    model input (for ``fit-gate``, which chooses among them), not only those the gate reads."""

    def __init__(self, counts: CountsModel, stream, raw_targets: np.ndarray, model_vocab,
                 *, mix: float | None, eos: int, everything: bool = False):  # fmt: skip
        stream = np.asarray(stream, dtype=np.int64)
        windows, seq_len = raw_targets.shape
        self.raw_targets = np.clip(raw_targets, 0, counts.p0.shape[0] - 1)
        self.counts, self.mix, self.model_vocab = counts, mix, model_vocab
        self.scores = stream_scores(counts, stream, windows, seq_len)
        fields = {"model_entropy", "model_top", "counts_of_model_top", "recent_gain"}
        self.reads = fields if everything else (set() if mix is not None else counts.gate_reads)
        self.spread = unknown_log_spread(model_vocab, counts.p0)
        self.unknown_top = int(np.argmax(self.spread))  # the unknown class's likeliest raw id
        size = windows * seq_len
        self.rows = None
        if "counts_of_model_top" in self.reads:
            rows = counts.context_rows(stream[:-1]) if stream.shape[0] > 1 else None
            self.rows = np.zeros((size, counts.columns), dtype=np.int64)
            if rows is not None:
                self.rows[: rows.shape[0]] = rows
        starts = np.zeros(size, dtype=bool)
        starts[0] = True  # a target after an EOS starts a document
        n = min(size, stream.shape[0] - 1)
        starts[1:n] |= stream[1:n] == eos
        self.starts = starts.reshape(windows, seq_len)
        self.recent = RecentGain()
        self.totals = MixTotals()

    def batch(self, sl: slice, logits, class_logp: np.ndarray, targets: np.ndarray):
        """``(log P_model over raw ids, counts scores, GateInputs, λ)`` of a batch's ``(B, T)``
        positions (flattened), from the model's ``logits`` and ``log P`` of each target class."""
        raw_logp = class_logp + np.where(targets == 0, self.spread[self.raw_targets[sl]], 0.0)
        raw_logp = raw_logp.reshape(-1)
        scores = self.scores[sl].reshape(-1, 4)
        fields = {}
        if self.reads & {"model_entropy", "model_top", "counts_of_model_top"}:
            fields = self.model_fields(sl, logits)
        if "recent_gain" in self.reads:
            gain = np.log(scores[:, 0]) - raw_logp
            fields["recent_gain"] = self.recent.step(gain, self.starts[sl].reshape(-1))
        inputs = GateInputs(scores[:, 1:4], **fields)
        lam = self.counts.gate(scores, self.mix, inputs=inputs)
        return raw_logp, scores, inputs, lam

    def model_fields(self, sl: slice, logits) -> dict:
        """The model's entropy, its top raw id's probability and ``P_counts`` of that id."""
        import torch

        logq = torch.log_softmax(logits.float(), dim=-1)
        entropy = (-(logq.exp() * logq).sum(-1)).double().cpu().numpy().reshape(-1)
        known_lp, known_cls = logq[..., 1:].max(-1)
        known_lp = known_lp.double().cpu().numpy().reshape(-1)
        unknown_lp = logq[..., 0].double().cpu().numpy().reshape(-1) + self.spread.max()
        ids = self.model_vocab.output_ids[known_cls.cpu().numpy().reshape(-1)]
        top = np.where(unknown_lp > known_lp, self.unknown_top, ids)
        top = np.clip(top, 0, self.counts.p0.shape[0] - 1)
        fields = {"model_entropy": entropy, "model_top": np.exp(np.maximum(known_lp, unknown_lp))}
        if self.rows is not None:
            rows = self.rows[sl.start * self.starts.shape[1] : sl.stop * self.starts.shape[1]]
            fields["counts_of_model_top"] = self.counts.score_rows(rows[: top.shape[0]], top)[:, 0]
        return fields


@dataclass(frozen=True)
class SequenceMixer:
    """Scores a continuation by the mix (multiple choice, lm-evaluation-harness): per scored
    token ``log((1 - λ) P_model + λ P_counts)`` over raw ids, λ as eval computes it over the
    sequence (its context is the document's start, for ``recent_gain`` too)."""

    counts: CountsModel
    model_vocab: object
    mix: float | None
    eos: int

    @cached_property
    def spread(self) -> np.ndarray:
        return unknown_log_spread(self.model_vocab, self.counts.p0)

    def score(self, ids: list[int], logits, class_logp, targets, scored) -> tuple[float, bool]:
        """``(summed mixed log-likelihood, greedy?)`` of the scored positions of one sequence:
        ``ids`` its raw ids, ``logits`` ``(1, T, classes)``, ``class_logp``/``targets``/
        ``scored`` ``(T,)`` per input position (``log P`` of the target class, the class, and
        whether it is a continuation token). Greedy: the mix's argmax over raw ids is the
        token at every scored position."""
        T = targets.shape[0]
        raw = np.full((1, T), self.eos, dtype=np.int64)
        n = len(ids) - 1
        raw[0, :n] = ids[1:]
        mixing = MixPass(self.counts, np.asarray(ids, np.int64), raw, self.model_vocab,
                         mix=self.mix, eos=self.eos)  # fmt: skip
        raw_logp, scores, _, lam = mixing.batch(slice(0, 1), logits, class_logp[None, :],
                                                targets[None, :])  # fmt: skip
        picked = np.flatnonzero(scored)
        p_model, p_counts, lam = np.exp(raw_logp[picked]), scores[picked, 0], lam[picked]
        mixed = np.log((1 - lam) * p_model + lam * p_counts)
        greedy = all(self._argmax(ids[: t + 1], logits[0, t], lam[k]) == ids[t + 1]
                     for k, t in enumerate(picked))  # fmt: skip
        return float(mixed.sum()), bool(greedy)

    def decoder(self) -> MixedDecoder:
        """A :class:`MixedDecoder` of this mix (one per generated sequence)."""
        return MixedDecoder(self.counts, self.model_vocab, self.mix, self.eos)

    def _argmax(self, history: list[int], logits, lam: float) -> int:
        """The raw id the mix puts first after ``history`` (the counts' whole distribution)."""
        import torch

        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
        p_model = model_raw_distribution(probs, self.model_vocab, self.spread)
        p_counts = self.counts.distribution_after(history)[0]
        return int(np.argmax((1 - lam) * p_model + lam * p_counts))


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


def model_raw_distribution(model_probs: np.ndarray, model_vocab, spread: np.ndarray):
    """The model's distribution over its classes (class 0 the unknown one) as one over raw
    ids: each known class at its id, the unknown class spread by ``exp(spread)``
    (:func:`unknown_log_spread`)."""
    p_model = np.exp(spread) * float(model_probs[0])
    known = model_vocab.output_ids < p_model.shape[0]
    p_model[model_vocab.output_ids[known]] = model_probs[1:][known]
    return p_model


def mixed_distribution(
    counts: CountsModel,
    history: list[int],
    model_probs: np.ndarray,
    model_vocab,
    spread: np.ndarray,
    mix: float | None = None,
    recent: float = 0.0,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """``(P over raw ids, λ, P_model over raw ids, P_counts)`` for ``generate``: the model's
    classes (``model_probs``, class 0 the unknown one) mapped to raw ids, the unknown class
    spread as in :func:`unknown_log_spread`, mixed with ``P_counts(. | history)``; ``recent``
    is the counts' recent gain over the model so far (:class:`~engramctl.counts.gate.RecentGain`),
    for a gate that reads it."""
    positive = model_probs[model_probs > 0]
    entropy = float(-(positive * np.log(positive)).sum())  # over the model's classes
    p_model = model_raw_distribution(model_probs, model_vocab, spread)
    p_counts, lam = counts.next_distribution(history, entropy, model_raw=p_model,
                                             recent_gain=recent)  # fmt: skip
    lam = lam if mix is None else float(mix)
    return (1 - lam) * p_model + lam * p_counts, lam, p_model, p_counts


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


def raw_target_logp(logits, raw_targets, model_vocab, spread: np.ndarray) -> np.ndarray:
    """``log P_model`` over raw ids of each target (the unknown class spread as
    :func:`unknown_log_spread` spreads it), from the model's ``logits`` ``(..., T, classes)`` at
    the positions before them; ``raw_targets`` ``(..., T)``. The scale eval scores on."""
    import torch

    raw_targets = np.asarray(raw_targets, dtype=np.int64)
    targets = model_vocab.encode_targets(raw_targets)
    logq = torch.log_softmax(logits.float(), dim=-1)
    picked = logq.gather(-1, torch.from_numpy(targets).to(logq.device).unsqueeze(-1))
    class_logp = picked.squeeze(-1).double().cpu().numpy()
    raw = np.clip(raw_targets, 0, spread.shape[0] - 1)
    return class_logp + np.where(targets == 0, spread[raw], 0.0)


# recent_gain forgets: a target this far back weighs < 1e-9 (RECENT_DECAY ** horizon); all the
# older ones together move the feature by ~1e-6 at most (|g| <= GAIN_CLIP): they are not scored
RECENT_HORIZON = math.ceil(math.log(1e-9) / math.log(RECENT_DECAY))


def prompt_scored_from(length: int, window: int) -> int:
    """Where the scoring of a prompt of ``length`` tokens starts for ``recent_gain``: the
    start of eval's window (a multiple of ``window``) that holds the first of its last
    :data:`RECENT_HORIZON` targets (0 for a prompt no longer)."""
    return max(0, length - 1 - RECENT_HORIZON) // window * window


def prompts_model_logp(runner, prompts: list, spread: np.ndarray, *, eos: int,
                       batch: int) -> list[np.ndarray]:  # fmt: skip
    """``log P_model`` over raw ids of each prompt's tokens after its first (from
    :func:`prompt_scored_from` on, what :meth:`MixedDecoder.start` reads), as ``eval
    --benchmark`` scores a stream: the model's windows of it (:func:`~engramctl.corpus.stream.
    lm_windows`), rows from ``runner``'s source; all prompts' windows in one batched pass."""
    from ...corpus.stream import lm_windows

    seq_len = runner.model.config.block_size
    out = [np.zeros(0) for _ in prompts]
    parts = []
    for i, ids in enumerate(prompts):
        if len(ids) >= 2:
            tail = np.asarray(ids[prompt_scored_from(len(ids), seq_len) :], np.int64)
            parts.append((i, *lm_windows(tail, seq_len, pad=eos)))
    if not parts:
        return out
    windows = np.concatenate([w for _, w, _ in parts])
    inputs = np.ascontiguousarray(windows[:, :-1])
    chunks = [inputs[s : s + batch] for s in range(0, inputs.shape[0], batch)]
    logp, done = np.empty(windows[:, 1:].shape), 0
    for _, logits in runner.run(iter(chunks)):
        n = logits.shape[0]
        logp[done : done + n] = raw_target_logp(logits, windows[done : done + n, 1:],
                                                runner.model_vocab, spread)  # fmt: skip
        done += n
    at = 0
    for i, w, mask in parts:
        out[i] = logp[at : at + w.shape[0]][mask]
        at += w.shape[0]
    return out


class MixedDecoder:
    """Decoding one sequence from the mix ``(1 - λ) P_model + λ P_counts`` over raw ids, a
    token per step (``generate --counts``, the harness's ``generate_until`` with ``--counts``).

    The gate's ``recent_gain`` is eval's (:class:`MixPass`): the counts' gain over the model on
    the document's tokens before the position. :meth:`start` feeds it the prompt's tokens (both
    distributions are known there: the model's from its forward pass over the prompt, the
    counts' from each token's context), so the first generated position reads what eval reads
    at that position of the same text; :meth:`pick` then adds each generated token's gain (a
    token drawn from the mix, whose gain that choice biases). A generated EOS starts a new
    document (``recent_gain`` restarts), as in eval.

    Attributes
    ----------
    lambdas : λ at each step picked so far.
    prompt_gain : ``recent_gain`` at the first generated position (None: not computed, the
        gate does not read it).
    """

    def __init__(self, counts: CountsModel, model_vocab, mix: float | None, eos: int):
        self.counts, self.model_vocab, self.mix, self.eos = counts, model_vocab, mix, eos
        self.spread = unknown_log_spread(model_vocab, counts.p0)
        self.recent = RecentGain()
        self.lambdas: list[float] = []
        self.prompt_gain: float | None = None

    @property
    def reads_prompt(self) -> bool:
        """Does λ depend on the prompt's scores (a fitted gate reading ``recent_gain``)? When
        not, :meth:`start` need not be called and the prompt costs nothing."""
        return self.mix is None and "recent_gain" in self.counts.gate_reads

    def start(self, ids, model_logp) -> None:
        """Begin after the prompt ``ids`` (raw, ``T >= 1``): ``model_logp`` is ``log P_model``
        over raw ids (:func:`raw_target_logp`) of the last ``len(model_logp)`` of ``ids[1:]``,
        all of them or at least the last :data:`RECENT_HORIZON` (:func:`prompt_scored_from`);
        the counts score the same targets after the stream before them, documents cut at EOS
        as eval cuts them."""
        ids = np.asarray(ids, dtype=np.int64)
        model_logp = np.asarray(model_logp, dtype=np.float64).reshape(-1)
        m, n = model_logp.shape[0], ids.shape[0]
        if m > max(n - 1, 0) or (m < n - 1 and m < RECENT_HORIZON):
            raise ValueError(f"{m} model scores for {n} prompt ids")
        self.recent = RecentGain()
        if m:
            first = n - m  # the first scored target; the counts read its n-gram before it
            p_counts = self.counts.score_stream(ids[max(0, first - self.counts.max_level) :])
            gain = np.log(p_counts[-m:, 0]) - model_logp
            starts = ids[first - 1 : n - 1] == self.eos  # a target after an EOS starts a document
            starts[0] = True  # the document's start, or the horizon
            self.recent.step(gain, starts)
        if n and ids[-1] == self.eos:
            self.recent = RecentGain()
        self.prompt_gain = self.recent.value

    def pick(self, history: list[int], logits, *, temperature: float = 0.0,
             top_k: int | None = None, generator=None) -> int:  # fmt: skip
        """The next raw id after ``history`` from the mix, the model's ``logits`` (one
        position, over its classes) mixed with ``P_counts(. | history)``
        (:func:`pick_raw_token`: greedy at temperature 0); its λ goes to :attr:`lambdas` and
        the counts' gain on it into ``recent_gain``."""
        import torch

        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
        p, lam, p_model, p_counts = mixed_distribution(
            self.counts, history, probs, self.model_vocab, self.spread, self.mix, self.recent.value
        )
        self.lambdas.append(lam)
        token = pick_raw_token(p, temperature=temperature, top_k=top_k, generator=generator)
        self.recent.push(np.log(max(p_counts[token], 1e-300)) - np.log(max(p_model[token], 1e-300)))
        if token == self.eos:  # what follows begins a document
            self.recent = RecentGain()
        return token

    def report(self, path) -> dict:
        """What ``generate``'s report says of the mix: the memory, λ or "gate", λ per step."""
        return {
            "path": str(path), "mix": "gate" if self.mix is None else self.mix,
            "mean_lambda": float(np.mean(self.lambdas)) if self.lambdas else None,
            "lambda": [float(v) for v in self.lambdas], "prompt_recent_gain": self.prompt_gain,
        }  # fmt: skip
