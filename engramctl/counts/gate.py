"""The gate λ(context): how much of the count memory to mix into a model's distribution.

λ = sigmoid(w · x), ``x`` a few named features of the position (:data:`FEATURE_NAMES`). The
count memory's evidence at the longest level with data: ``log1p(count)``,
``log1p(distinct continuations)``, ``level / M``, and ``level_0 .. level_M`` (which level that
is, one-hot: with ``log1p`` of count and distinct this is a Witten-Bell-like per-order table,
``logit λ ≈ a_k + b log n - c log distinct``). A gate fitted against a model may also read the
model at the position: its entropy, ``log`` of its top token's probability, ``log P_counts`` of
that token (do the two agree?), and ``recent_gain``: how much better than the model the counts
scored the document's previous tokens, ``Σ d^j g_{t-1-j} / (1 + Σ d^j)`` with
``g = log P_counts(y) - log P_model(y)`` and ``d = RECENT_DECAY`` (0 at a document's start).
The last is what tells the domains apart (docs/counts.md, "The gate"): the evidence says how
much the counts know of a context, not whether the text is theirs.

The weights maximize the held-out log-likelihood of ``(1 - λ) P_background + λ P_counts``. At
build time the background is the unigram (the build has no model) and the features are the
evidence only: the fit learns how far each kind of evidence beats knowing nothing, and leans
towards the counts. ``engramctl fit-gate`` refits the gate against the model it will be mixed
with (:mod:`engramctl.model.serve.gate_fit`): the background is then that model's ``P_model`` on
held-out text, and the gate records the model's identity. ``--mix λ`` replaces the gate with a
constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import UsageError

FEATURES = ("bias", "log1p_count", "log1p_distinct", "level_fraction")  # the build's gate
# what each feature that reads the model needs from it (GateInputs' field)
MODEL_INPUTS = {
    "model_entropy": "model_entropy",
    "log_model_top": "model_top",
    "log_counts_of_model_top": "counts_of_model_top",
    "recent_gain": "recent_gain",
}
MODEL_FEATURES = (*FEATURES, "model_entropy")  # the gate fit-gate wrote before named sets
FEATURE_SETS = {  # fit-gate --features NAME
    "evidence": FEATURES,
    "entropy": MODEL_FEATURES,
    "levels": ("bias", "log1p_count", "log1p_distinct", "levels"),
    "agreement": (*MODEL_FEATURES, "log_model_top", "log_counts_of_model_top"),
    "recent": (*FEATURES, "recent_gain"),
    "all": (
        "bias",
        "log1p_count",
        "log1p_distinct",
        "levels",
        "model_entropy",
        "log_model_top",
        "log_counts_of_model_top",
        "recent_gain",
    ),  # fmt: skip
}
DEFAULT_FEATURE_SET = "recent"  # as good as "all" on the split, and no full-vocab pass
RECENT_DECAY = 0.98  # recent_gain's memory: a half-life of ~34 tokens
GAIN_CLIP = 20.0  # nats: one token's |g| counts at most this much in recent_gain
UNFITTED_LAMBDA = 0.25  # kNN-LM's in-domain λ: the gate of a corpus too small to hold a slice out
L2 = 1e-4  # keeps the weights finite when the held-out slice separates perfectly


@dataclass(frozen=True)
class GateInputs:
    """What the gate may read at ``P`` positions.

    Attributes
    ----------
    evidence : ``(P, 3)`` count, distinct continuations and level (0: no data) of the context.
    model_entropy : ``(P,)`` the model's entropy (nats, over its classes), or None.
    model_top : ``(P,)`` the model's probability of its most likely raw id, or None.
    counts_of_model_top : ``(P,)`` ``P_counts`` of that id, or None.
    recent_gain : ``(P,)`` :class:`RecentGain` at the positions, or None.
    """

    evidence: np.ndarray
    model_entropy: np.ndarray | None = None
    model_top: np.ndarray | None = None
    counts_of_model_top: np.ndarray | None = None
    recent_gain: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> GateInputs:
        """The inputs at the positions ``keep`` (a mask or indices) selects."""
        return replace(self, **{f: None if getattr(self, f) is None else getattr(self, f)[keep]
                                for f in ("evidence", *MODEL_INPUTS.values())})  # fmt: skip

    @staticmethod
    def concat(parts: list[GateInputs]) -> GateInputs:
        """Positions of several inputs, in order (a field is kept when every part has it)."""
        fields = {}
        for f in ("evidence", *MODEL_INPUTS.values()):
            values = [getattr(p, f) for p in parts]
            fields[f] = None if any(v is None for v in values) else np.concatenate(values)
        return GateInputs(**fields)


def expand_names(names, max_level: int) -> list[str]:
    """Feature names with ``levels`` spelled out as ``level_0 .. level_M``."""
    out = []
    for name in names:
        out += [f"level_{k}" for k in range(max_level + 1)] if name == "levels" else [name]
    return out


def model_inputs_needed(names) -> set[str]:
    """The :class:`GateInputs` fields besides the evidence that these features read."""
    return {MODEL_INPUTS[n] for n in names if n in MODEL_INPUTS}


def gate_features(inputs, max_level: int, names=None, model_entropy=None) -> np.ndarray:
    """``(P, F)`` features ``names`` (default: the build's four, or with ``model_entropy``
    the five of a gate fitted against a model) of :class:`GateInputs` (or an evidence array)."""
    if not isinstance(inputs, GateInputs):
        inputs = GateInputs(np.asarray(inputs, dtype=np.float64), model_entropy=model_entropy)
    if names is None:
        names = FEATURES if inputs.model_entropy is None else MODEL_FEATURES
    names = expand_names(names, max_level)
    evidence = np.asarray(inputs.evidence, dtype=np.float64)
    level = evidence[:, 2]
    x = np.empty((evidence.shape[0], len(names)))
    for j, name in enumerate(names):
        if name == "bias":
            x[:, j] = 1.0
        elif name == "log1p_count":
            x[:, j] = np.log1p(evidence[:, 0])
        elif name == "log1p_distinct":
            x[:, j] = np.log1p(evidence[:, 1])
        elif name == "level_fraction":
            x[:, j] = level / max_level
        elif name.startswith("level_") and name[6:].isdigit():
            x[:, j] = level == int(name[6:])
        elif name in MODEL_INPUTS:
            value = getattr(inputs, MODEL_INPUTS[name])
            if value is None:
                raise UsageError(f"this count memory's gate reads the model ({name}); mix it "
                                 "with a model, or give --mix")  # fmt: skip
            value = np.asarray(value, dtype=np.float64).reshape(-1)
            if name in ("log_model_top", "log_counts_of_model_top"):
                value = np.log(np.maximum(value, 1e-300))
            x[:, j] = value
        else:
            raise UsageError(f"unknown gate feature {name!r} (this engramctl knows "
                             f"{', '.join((*FEATURES, 'level_K', *MODEL_INPUTS))})")  # fmt: skip
    return x


def gate_names(gate: dict, weights) -> list[str]:
    """The feature names of a stored gate (a gate written before names were stored: by its
    number of weights, the build's four or those and the model's entropy)."""
    names = (gate or {}).get("features")
    if names:
        return list(names)
    return list(FEATURES if len(weights) == len(FEATURES) else MODEL_FEATURES)


def needs_model_entropy(weights, names=None) -> bool:
    """Does a gate with these weights (and feature names) read the model?"""
    names = names if names is not None else gate_names({}, weights)
    return bool(model_inputs_needed(names))


def gate_lambda(weights, inputs, max_level: int, model_entropy=None, names=None) -> np.ndarray:
    """λ per position from the gate's weights and each position's :class:`GateInputs` (or an
    evidence array, with the model's entropy there for a gate that reads it)."""
    weights = np.asarray(weights, dtype=np.float64)
    names = names if names is not None else gate_names({}, weights)
    if not isinstance(inputs, GateInputs):
        inputs = GateInputs(np.asarray(inputs, dtype=np.float64), model_entropy=model_entropy)
    z = gate_features(inputs, max_level, names) @ weights
    return 1.0 / (1.0 + np.exp(-z))


class RecentGain:
    """``recent_gain`` of positions in stream order, a batch at a time: per position the
    decayed mean of the gain ``g = log P_counts(y) - log P_model(y)`` over the same document's
    earlier positions, shrunk towards 0 by one pseudo-position,
    ``Σ d^j g_{t-1-j} / (1 + Σ d^j)`` (each ``|g|`` clipped at :data:`GAIN_CLIP`).

    The gate at a position reads only positions before it, whose tokens are known when it is
    scored (eval) or were generated (generate). A plain loop: one step per scored token, next
    to a model's forward pass it is not the cost."""

    def __init__(self, decay: float = RECENT_DECAY):
        self.decay = decay
        self.total = 0.0
        self.weight = 0.0

    @property
    def value(self) -> float:
        """The feature at the next position."""
        return self.total / (1.0 + self.weight)

    def push(self, gain: float, start: bool = False) -> None:
        """Add one scored position (``start``: it begins a document; nothing before counts)."""
        if start:
            self.total = self.weight = 0.0
        g = min(max(float(gain), -GAIN_CLIP), GAIN_CLIP)
        self.total = self.decay * self.total + g
        self.weight = self.decay * self.weight + 1.0

    def step(self, gain: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The feature at each of these positions (``starts[t]``: t begins a document), then
        their gains added."""
        out = np.empty(len(gain))
        for t in range(len(gain)):
            if starts[t]:
                self.total = self.weight = 0.0
            out[t] = self.value
            self.push(gain[t])
        return out


def check_mix(mix: float | None) -> float | None:
    """``--mix``: a constant λ in [0, 1], or ``None`` for the fitted gate."""
    if mix is None:
        return None
    if not isinstance(mix, int | float) or math.isnan(mix) or not 0.0 <= mix <= 1.0:
        raise UsageError(f"--mix must be a number in [0, 1] (the weight of the counts), got {mix}")
    return float(mix)


def unfitted_gate(reason: str) -> dict:
    """The gate stored when no held-out slice could be fitted: a constant λ."""
    bias = math.log(UNFITTED_LAMBDA / (1 - UNFITTED_LAMBDA))
    return {"fitted": False, "reason": reason, "features": list(FEATURES),
            "weights": [bias, 0.0, 0.0, 0.0]}  # fmt: skip


def fit_gate(
    p_counts: np.ndarray,
    p_background: np.ndarray,
    evidence,
    max_level: int,
    *,
    background: str = "unigram",
    model_entropy=None,
    features=None,
    sample_weight=None,
) -> dict:
    """Fit the gate's weights on held-out positions; the weights and the fit's figures.

    Parameters
    ----------
    p_counts, p_background : ``(P,)`` probabilities of each held-out target under the count
        memory and under the background it is mixed with (the unigram, or a model).
    evidence : :class:`GateInputs`, or the ``(P, 3)`` count, distinct continuations and level
        of each position's context.
    max_level : the memory's highest level (``max_ngram``).
    background : what ``p_background`` is: names the fit's ``heldout_loss_<background>``.
    model_entropy : ``(P,)`` the model's entropy at each position, with an evidence array.
    features : the feature names (``levels`` for the one-hot level); default the build's four,
        with ``model_entropy`` those and the entropy.
    sample_weight : ``(P,)`` each position's weight in the objective (default equal), e.g.
        so each held-out file counts the same whatever its length.
    """
    from scipy.optimize import minimize

    c = np.asarray(p_counts, dtype=np.float64)
    b = np.asarray(p_background, dtype=np.float64)
    if c.size == 0:
        return unfitted_gate("no held-out positions (the corpus is too small)")
    if not isinstance(evidence, GateInputs):
        evidence = GateInputs(np.asarray(evidence, dtype=np.float64), model_entropy=model_entropy)
    if features is None:
        features = FEATURES if evidence.model_entropy is None else MODEL_FEATURES
    names = expand_names(features, max_level)
    x = gate_features(evidence, max_level, names)
    scale = np.abs(x).max(axis=0)  # fit on features in [-1, 1]: L-BFGS converges, L2 is fair
    scale[scale == 0] = 1.0
    xs = x / scale
    sw = np.ones_like(c) if sample_weight is None else np.asarray(sample_weight, np.float64)
    sw = sw / sw.sum()

    def objective(w):
        lam = 1.0 / (1.0 + np.exp(-(xs @ w)))
        mix = (1 - lam) * b + lam * c
        value = -(sw @ np.log(mix)) + L2 * (w @ w)
        grad = -(sw * (c - b) / mix * lam * (1 - lam)) @ xs + 2 * L2 * w
        return value, grad

    result = minimize(objective, np.zeros(len(names)), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000})  # fmt: skip
    w = result.x / scale
    lam = 1.0 / (1.0 + np.exp(-(x @ w)))
    return {
        "fitted": True,
        "against": background,
        "features": names,
        "weights": [float(v) for v in w],
        "heldout_positions": int(c.size),
        "heldout_loss_counts": float(-np.mean(np.log(c))),
        f"heldout_loss_{background}": float(-np.mean(np.log(np.maximum(b, 1e-300)))),
        "heldout_loss_mixed": float(-np.mean(np.log((1 - lam) * b + lam * c))),
        "mean_lambda": float(lam.mean()),
        "converged": bool(result.success),
    }
