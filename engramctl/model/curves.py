"""Loss-curve PNGs: training loss (smoothed) and held-out loss per step, optionally two runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth(values, window: int = 20) -> np.ndarray:
    """Trailing moving average (shorter at the start).

    >>> smooth([1.0, 3.0, 5.0], window=2).tolist()
    [1.0, 2.0, 4.0]
    """
    values = np.asarray(values, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def save_loss_curve(
    history: dict, path: Path, *, title: str = "", runs: dict | None = None
) -> Path:
    """Plot one run's ``history`` (plus any ``runs`` ``{label: history}``) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_runs = {title or "this run": history, **(runs or {})}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (label, hist) in enumerate(all_runs.items()):
        color = f"C{i}"
        if hist.get("train_loss"):
            ax.plot(
                hist["step"],
                smooth(hist["train_loss"]),
                color=color,
                alpha=0.45,
                label=f"{label} train (smoothed)",
            )
        if hist.get("heldout"):
            steps, losses = zip(*hist["heldout"], strict=True)
            ax.plot(steps, losses, "o-", color=color, label=f"{label} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty history (0 steps) plots nothing
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
