"""PNG plot of a cache plan (matplotlib, Agg backend, imported lazily).

One panel per Engram layer: hit rate against cache rows (log x) for each policy, and on a second
y axis the bytes per token the LRU cache pages in at each size (the row size times misses per
token). The pager's curve starts at the smallest cache it accepts; where it has no point, its
legend entry says from how many rows it has one.

Each policy keeps one colour and marker whichever policies are plotted; LRU, static and optimum
markers are hollow and the pager's cross is drawn on top, so a pager point lying on another
policy's point (at large caches they often agree) stays visible. Titles are wrapped to fit the
figure, which is never narrower than a one-line title needs (9 inches, 900 px).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .._files import save_figure
from .plan import CachePlan

# Style per policy: the same whatever policies a plan has. Hollow markers let a point another
# policy shares show through; the pager (what eval measures) is drawn last and on top.
STYLE = {
    "lru": {"marker": "o", "ls": "-", "color": "C0", "ms": 7, "mfc": "none", "zorder": 3},
    "static": {"marker": "s", "ls": "-", "color": "C2", "ms": 7, "mfc": "none", "zorder": 2},
    "opt": {"marker": "^", "ls": ":", "color": "C3", "ms": 8, "mfc": "none", "zorder": 2},
    "pager": {"marker": "x", "ls": "--", "color": "C1", "ms": 8, "mew": 2, "zorder": 5},
}
ORDER = ("lru", "static", "opt", "pager")  # drawing order: the pager last
PANEL_WIDTH = 6.2  # inches per layer
MIN_WIDTH = 9.0  # inches: a one-layer figure still fits its title


def _fit(text_artist, width_px: float) -> None:
    """Wrap a title at word boundaries so that it is no wider than ``width_px``."""
    renderer = text_artist.get_figure().canvas.get_renderer()
    text = text_artist.get_text()
    measured = text_artist.get_window_extent(renderer).width
    if measured <= width_px or len(text) < 2:
        return
    chars = max(10, int(len(text) * width_px / measured))
    while chars > 10:
        text_artist.set_text(textwrap.fill(text, chars))
        if text_artist.get_window_extent(renderer).width <= width_px:
            return
        chars -= 4


def plan_figure(plan: CachePlan):
    """The matplotlib figure of every layer of ``plan`` (closed by :func:`plot_plan`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    layers = list(plan.layers.items())
    width = max(MIN_WIDTH, PANEL_WIDTH * len(layers))
    fig, axes = plt.subplots(1, len(layers), figsize=(width, 4.8), dpi=100)
    axes = [axes] if len(layers) == 1 else list(axes)
    for ax, (layer, lp) in zip(axes, layers, strict=True):
        for policy in sorted(lp.curves, key=lambda p: ORDER.index(p) if p in ORDER else 9):
            shown = [p for p in lp.curves[policy] if p.hit_rate is not None]
            label = policy
            if policy == "pager":
                label = f"pager (from {lp.pager_min_rows:,} rows)"
            ax.plot(
                [p.cache_rows for p in shown],
                [100 * p.hit_rate for p in shown],
                label=label,
                **STYLE.get(policy, {"marker": "."}),
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 100)
        ax.set_xlabel("cache rows (this layer)")
        ax.set_ylabel("hit rate (%)")
        ax.grid(True, which="both", alpha=0.2)
        ax.set_title(
            f"layer {layer}: {lp.distinct_rows:,} rows touched, "
            f"{lp.unique_rows_per_batch_mean:,.0f} per batch"
        )
        reference = lp.curves.get("lru") or next(iter(lp.curves.values()))
        shown = [p for p in reference if p.bytes_per_token is not None]
        if shown:
            twin = ax.twinx()
            twin.plot(
                [p.cache_rows for p in shown],
                [p.bytes_per_token for p in shown],
                color="grey",
                lw=0.8,
                label="bytes/token paged",
            )
            twin.set_ylabel(f"bytes/token paged ({plan.row_bytes} B rows)", color="grey")
            twin.set_ylim(bottom=0)
            ax.set_zorder(twin.get_zorder() + 1)  # the policies' points above the grey line
            ax.patch.set_visible(False)
        ax.legend(fontsize=8, loc="upper left")
    suptitle = fig.suptitle(
        f"{plan.cut}; batch {plan.batch}, {plan.warmup_batches} of {plan.batches} batches warm-up"
    )
    _fit(suptitle, 0.96 * fig.bbox.width)
    for ax in axes:
        _fit(ax.title, ax.get_window_extent().width)
    fig.tight_layout()
    return fig


def plot_plan(plan: CachePlan, path: str | Path) -> Path:
    """Write the plot of every layer of ``plan`` to ``path`` (PNG, atomically)."""
    return save_figure(plan_figure(plan), path)
