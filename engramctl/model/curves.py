"""Loss-curve PNGs: training loss (smoothed) and held-out loss per step, optionally two runs.

The training line is a centred moving average over a window that follows the run's length
(:func:`smoothing_window`), its half-width shrinking at both ends, so the line starts at the
first step's loss and ends at the last one: the loss the run prints. A trailing average over a
fixed 20 steps ended a 20-step run at its mean, far above the printed loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_WINDOW = 21  # steps averaged at most (a 300-step demo run: 21)


def smoothing_window(n_steps: int) -> int:
    """The odd number of steps averaged for a run of ``n_steps``: about a tenth of the run,
    at most :data:`MAX_WINDOW` (a run of under 20 steps is not smoothed).

    >>> [smoothing_window(n) for n in (5, 20, 60, 300)]
    [1, 3, 7, 21]
    """
    return min(MAX_WINDOW, max(1, n_steps // 10) | 1)


def smooth(values, window: int | None = None) -> np.ndarray:
    """Centred moving average over ``window`` steps (default: :func:`smoothing_window`), its
    half-width shrinking near the ends so that every point averages steps on both sides
    equally; the first and last points are the values themselves.

    >>> smooth([1.0, 3.0, 5.0, 10.0], window=3).tolist()
    [1.0, 3.0, 6.0, 10.0]
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if window is None:
        window = smoothing_window(n)
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(n)
    half = np.minimum(window // 2, np.minimum(idx, n - 1 - idx))
    lo, hi = idx - half, idx + half + 1
    return (csum[hi] - csum[lo]) / (hi - lo)


def loss_figure(history: dict, *, title: str = "", runs: dict | None = None):
    """The matplotlib figure of one run's ``history`` (plus any ``runs`` ``{label: history}``):
    smoothed training loss and held-out loss against whole-numbered steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    all_runs = {title or "this run": history, **(runs or {})}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (label, hist) in enumerate(all_runs.items()):
        color = f"C{i}"
        if hist.get("train_loss"):
            window = smoothing_window(len(hist["train_loss"]))
            smoothed = f"smoothed over {window} steps" if window > 1 else "per step"
            ax.plot(
                hist["step"],
                smooth(hist["train_loss"], window),
                color=color,
                alpha=0.45,
                label=f"{label} train ({smoothed})",
            )
        if hist.get("heldout"):
            steps, losses = zip(*hist["heldout"], strict=True)
            ax.plot(steps, losses, "o-", color=color, label=f"{label} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty history (0 steps) plots nothing
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_loss_curve(
    history: dict, path: Path, *, title: str = "", runs: dict | None = None
) -> Path:
    """Plot one run's ``history`` (plus any ``runs`` ``{label: history}``) to a PNG."""
    import matplotlib.pyplot as plt

    fig = loss_figure(history, title=title, runs=runs)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
