"""The loss-curve PNG: the smoothed training line smooths over what the run has and ends at the
loss the run prints (a 20-step run is not averaged into a line far above it); steps are whole
numbers on the axis (issue 24 §3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.model.curves import loss_figure, smooth, smoothing_window


def smooth_reference(values, window):
    """Centred moving average, its half-width shrinking to stay inside the run at both ends."""
    n, half = len(values), window // 2
    out = []
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out.append(sum(values[i - h : i + h + 1]) / (2 * h + 1))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 20, allow_nan=False), min_size=0, max_size=300),
    st.integers(1, 41),
)
def test_smooth_matches_the_reference(values, window):
    got = smooth(values, window=window)
    assert got.tolist() == pytest.approx(smooth_reference(values, window), rel=1e-12, abs=1e-12)


def test_smooth_ends_at_the_last_and_starts_at_the_first_value():
    values = np.linspace(9.0, 5.0, 20) + np.random.default_rng(0).normal(0, 0.05, 20)
    line = smooth(values)
    assert line[-1] == pytest.approx(values[-1], rel=1e-12)
    assert line[0] == pytest.approx(values[0], rel=1e-12)


def test_a_straight_decline_is_not_lifted():
    values = np.linspace(9.0, 8.0, 300)
    assert np.allclose(smooth(values), values)  # a centred average has no lag on a line


def test_the_window_follows_the_run():
    assert smoothing_window(5) == 1
    assert smoothing_window(20) < 20 and smoothing_window(300) == 21
    assert all(smoothing_window(n) % 2 == 1 for n in range(1, 2000))


def test_short_run_plot_ends_at_the_printed_loss_with_integer_step_ticks():
    pytest.importorskip("matplotlib")
    losses = [8.91, 8.89, 8.89, 8.90, 8.87, 8.85, 8.85, 8.85, 8.81, 8.76]
    losses += [8.78, 8.73, 8.74, 8.70, 8.70, 8.62, 8.57, 8.55, 8.50, 8.44]
    history = {"step": list(range(1, 21)), "train_loss": losses, "heldout": [(10, 8.78)]}
    fig = loss_figure(history, title="m")
    try:
        ax = fig.axes[0]
        train = next(line for line in ax.get_lines() if "train" in line.get_label())
        assert train.get_ydata()[-1] == pytest.approx(losses[-1])
        assert train.get_xdata()[-1] == 20
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 20]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
