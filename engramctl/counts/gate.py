"""The gate λ(context): how much of the count memory to mix into a model's distribution.

λ = sigmoid(w · x) over the evidence of the context at the longest level with data:
``x = (1, log1p(count), log1p(distinct continuations), level / M)`` (all 0 but the bias when
no level has data). The weights maximize the held-out log-likelihood of
``(1 - λ) P_background + λ P_counts``. At build time the background is the unigram (the build
has no model): the fit learns how far each kind of evidence can be trusted against knowing
nothing, and leans towards the counts. ``engramctl fit-gate`` refits the gate against the model
it will be mixed with (:mod:`engramctl.model.serve.gate_fit`): the background is then that
model's ``P_model`` on held-out text, and the gate records the model's identity. ``--mix λ``
replaces the gate with a constant.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError

FEATURES = ("bias", "log1p_count", "log1p_distinct", "level_fraction")
# a gate fitted against a model also reads the model's confidence at the position
MODEL_FEATURES = (*FEATURES, "model_entropy")
UNFITTED_LAMBDA = 0.25  # kNN-LM's in-domain λ: the gate of a corpus too small to hold a slice out
L2 = 1e-4  # keeps the weights finite when the held-out slice separates perfectly


def gate_features(evidence: np.ndarray, max_level: int, model_entropy=None) -> np.ndarray:
    """``(P, 4)`` features from evidence ``(P, 3)``: count, distinct, level (0: no data);
    ``(P, 5)`` with the model's entropy (nats, over its classes) at each position."""
    evidence = np.asarray(evidence, dtype=np.float64)
    width = len(FEATURES) if model_entropy is None else len(MODEL_FEATURES)
    x = np.empty((evidence.shape[0], width))
    x[:, 0] = 1.0
    x[:, 1] = np.log1p(evidence[:, 0])
    x[:, 2] = np.log1p(evidence[:, 1])
    x[:, 3] = evidence[:, 2] / max_level
    if model_entropy is not None:
        x[:, 4] = np.asarray(model_entropy, dtype=np.float64).reshape(-1)
    return x


def needs_model_entropy(weights) -> bool:
    """Does a gate with these weights read the model's entropy (fitted against a model)?"""
    return len(weights) == len(MODEL_FEATURES)


def gate_lambda(weights, evidence: np.ndarray, max_level: int, model_entropy=None) -> np.ndarray:
    """λ per position from the gate's weights and each position's evidence (and the model's
    entropy there, for a gate fitted against a model: required then, ignored otherwise)."""
    if needs_model_entropy(weights):
        if model_entropy is None:
            raise UsageError("this count memory's gate was fitted against a model and reads its "
                             "entropy; mix it with a model, or give --mix")  # fmt: skip
    else:
        model_entropy = None
    z = gate_features(evidence, max_level, model_entropy) @ np.asarray(weights, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


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
    evidence: np.ndarray,
    max_level: int,
    *,
    background: str = "unigram",
    model_entropy=None,
) -> dict:
    """Fit the gate's weights on held-out positions; the weights and the fit's figures.

    Parameters
    ----------
    p_counts, p_background : ``(P,)`` probabilities of each held-out target under the count
        memory and under the background it is mixed with (the unigram, or a model).
    evidence : ``(P, 3)`` count, distinct continuations and level of each position's context.
    max_level : the memory's highest level (``max_ngram``).
    background : what ``p_background`` is: names the fit's ``heldout_loss_<background>``.
    model_entropy : ``(P,)`` the model's entropy at each position (a gate against a model):
        a fifth feature, so λ can follow the model's confidence.
    """
    from scipy.optimize import minimize

    c = np.asarray(p_counts, dtype=np.float64)
    b = np.asarray(p_background, dtype=np.float64)
    if c.size == 0:
        return unfitted_gate("no held-out positions (the corpus is too small)")
    x = gate_features(evidence, max_level, model_entropy)
    names = FEATURES if model_entropy is None else MODEL_FEATURES

    def objective(w):
        lam = 1.0 / (1.0 + np.exp(-(x @ w)))
        mix = (1 - lam) * b + lam * c
        value = -np.mean(np.log(mix)) + L2 * (w @ w)
        grad = -((c - b) / mix * lam * (1 - lam)) @ x / len(c) + 2 * L2 * w
        return value, grad

    result = minimize(objective, np.zeros(len(names)), jac=True, method="L-BFGS-B",
                      options={"maxiter": 500})  # fmt: skip
    w = result.x
    lam = 1.0 / (1.0 + np.exp(-(x @ w)))
    return {
        "fitted": True,
        "against": background,
        "features": list(names),
        "weights": [float(v) for v in w],
        "heldout_positions": int(c.size),
        "heldout_loss_counts": float(-np.mean(np.log(c))),
        f"heldout_loss_{background}": float(-np.mean(np.log(np.maximum(b, 1e-300)))),
        "heldout_loss_mixed": float(-np.mean(np.log((1 - lam) * b + lam * c))),
        "mean_lambda": float(lam.mean()),
        "converged": bool(result.success),
    }
