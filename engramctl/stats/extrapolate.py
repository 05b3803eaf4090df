"""``hash-stats --extrapolate TOKENS``: Heaps' law fitted during the pass, figures predicted at a
corpus larger than the one read.

During the pass, :class:`Checkpoints` records ``(tokens, distinct)`` per order after the batch
that crosses each checkpoint (geometric, 5% apart, from 1,000 tokens on; the pass cuts batches
small enough for about 200 of them). The checkpoints depend only on token counts, so
partitioned passes (which each see the same batches) add their partitions' distinct counts at
the same checkpoints.

:func:`fit_heaps` fits ``distinct = k * tokens^beta`` per order by least squares on
``log distinct`` against ``log tokens`` (checkpoints from 1% of the corpus on, where the curve
has settled). :func:`extrapolation` predicts the distinct n-grams at TOKENS (capped at TOKENS
and at ``C^n``) and every per-head figure of the layout and each ``--sweep`` size from the
ideal-hash formulas (:func:`engramctl.stats.sketch.ideal_layers`), and shows the fit's honesty:
fitted on the first 25% of the corpus only, its prediction for the whole corpus beside the
distinct count the pass found.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from .report import layers_to_dict

STEP = 1.05  # checkpoints this far apart
FIRST = 1_000  # tokens of the first checkpoint
CHECKPOINTS = 200  # about this many checkpoints per pass (batches are cut to allow them)
SETTLED = 0.01  # fit from this fraction of the corpus on
HONESTY = 0.25  # the check fits on this fraction of the corpus


def parse_tokens(text: str) -> float:
    """``"1e12"``, ``"2T"``, ``"500B"``, ``"3M"`` or an integer -> tokens.

    >>> parse_tokens("1e12"), parse_tokens("2.5B")
    (1000000000000.0, 2500000000.0)
    """
    value = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(value[-1:].lower(), 1.0)
    try:
        number = float(value[:-1] if scale != 1.0 else value)
    except ValueError:
        raise UsageError(
            f"--extrapolate: expected a number of tokens such as 1e12 or 500B, got {text!r}"
        ) from None
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--extrapolate must be a positive number of tokens, got {text!r}")
    return number * scale


def check_target(target: float, tokens: int) -> None:
    """Refuse a target at or below the tokens the pass will read."""
    if not math.isfinite(target) or target <= 0:
        raise UsageError(f"--extrapolate must be a positive number of tokens, got {target!r}")
    if target <= tokens:
        raise UsageError(
            f"--extrapolate {target:,.0f} is not above the ~{tokens:,} tokens this run reads; "
            "give a larger corpus size to predict"
        )


def batch_tokens_for(tokens: int, batch_tokens: int) -> int:
    """A batch size giving about :data:`CHECKPOINTS` checkpoints over ``tokens``."""
    return max(1024, min(batch_tokens, tokens // CHECKPOINTS))


class Checkpoints:
    """``{tokens: [distinct per order]}`` recorded after the batch crossing each checkpoint and
    at the end of each pass (partitioned passes add up at the same token counts)."""

    def __init__(self, orders):
        self.orders = tuple(orders)
        self.points: dict[int, list[int]] = {}
        self.restart()

    def restart(self) -> None:
        """Before a pass (each partition's pass meets the same checkpoints again)."""
        self._next = FIRST
        self._this_pass: set[int] = set()

    def __call__(self, counter, *, end: bool = False) -> None:
        """After a batch (``end``: after the pass's last one)."""
        tokens = counter.tokens
        if tokens in self._this_pass or (tokens < self._next and not end) or tokens == 0:
            return
        row = [int(counter.distinct(n)) for n in self.orders]
        old = self.points.get(tokens)
        self.points[tokens] = row if old is None else [a + b for a, b in zip(old, row, strict=True)]
        self._this_pass.add(tokens)
        while self._next <= tokens:
            self._next = max(self._next + 1, int(self._next * STEP))


def fit_heaps(tokens: np.ndarray, distinct: np.ndarray) -> tuple[float, float]:
    """``(k, beta)`` of ``distinct = k * tokens^beta`` by least squares in log-log."""
    keep = (tokens > 0) & (distinct > 0)
    x, y = np.log(tokens[keep]), np.log(distinct[keep])
    if x.shape[0] < 2 or np.ptp(x) == 0:
        raise ValueError("need two checkpoints at different token counts")
    beta, log_k = np.polyfit(x, y, 1)
    return float(math.exp(log_k)), float(beta)


def _predict(k: float, beta: float, tokens: float, cap: float) -> int:
    return int(min(k * tokens**beta, tokens, cap))


def extrapolation(plan, checkpoints: Checkpoints, tokens_read: int) -> dict:
    """The report's ``extrapolation`` section (empty when there is too little to fit)."""
    from .sketch import ideal_layers

    target = float(plan.extrapolate)
    rows = sorted(checkpoints.points.items())
    if target <= tokens_read:
        return {"tokens": target, "error": f"not above the {tokens_read:,} tokens read"}
    if len(rows) < 3:
        return {"tokens": target, "error": "too few checkpoints to fit (a larger corpus needed)"}
    t = np.array([r[0] for r in rows], dtype=np.float64)
    d = np.array([r[1] for r in rows], dtype=np.float64)
    settled = t >= SETTLED * tokens_read
    early = settled & (t <= HONESTY * tokens_read)
    orders, predicted = {}, {}
    C = plan.layout.vocab_size
    for i, n in enumerate(checkpoints.orders):
        k, beta = fit_heaps(t[settled], d[settled, i])
        predicted[n] = _predict(k, beta, target, float(C) ** n)
        entry = {"k": k, "beta": beta, "distinct": predicted[n], "actual_distinct": int(d[-1, i])}
        if early.sum() >= 3:
            k_early, beta_early = fit_heaps(t[early], d[early, i])
            guess = _predict(k_early, beta_early, tokens_read, float(C) ** n)
            entry["check"] = {
                "fitted_on_tokens": int(t[early][-1]),
                "predicted_distinct": guess,
                "actual_distinct": int(d[-1, i]),
                "relative_error": guess / d[-1, i] - 1.0,
            }
        orders[str(n)] = entry
    occurrences = int(target)
    sizes = [plan.layout.with_ngram_vocab([s] * (plan.layout.max_ngram - 1)) for s in plan.sweep]
    return {
        "tokens": target,
        "fitted_on_tokens": int(tokens_read),
        "checkpoints": [[int(a), list(b)] for a, b in rows],
        "orders": orders,
        "layers": layers_to_dict(ideal_layers(plan.layout, plan.layer_ids, predicted, occurrences)),
        "sweep": [
            {
                "ngram_vocab": list(lay.ngram_vocab),
                "layers": layers_to_dict(ideal_layers(lay, plan.layer_ids, predicted, occurrences)),
            }
            for lay in sizes
        ],
    }
