"""PNG plot of a cache plan (matplotlib, Agg backend, imported lazily).

One panel per Engram layer: hit rate against cache rows (log x) for each policy, and on a second
y axis the bytes per token the LRU cache pages in at each size (the row size times misses per
token). The pager's curve starts at the smallest cache it accepts.
"""

from __future__ import annotations

from pathlib import Path

from .._files import save_figure
from .plan import CachePlan

STYLE = {"lru": "o-", "pager": "x--", "static": "s-", "opt": "^:"}


def plot_plan(plan: CachePlan, path: str | Path) -> Path:
    """Write the plot of every layer of ``plan`` to ``path`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    layers = list(plan.layers.items())
    fig, axes = plt.subplots(1, len(layers), figsize=(6.2 * len(layers), 4.6), dpi=100)
    axes = [axes] if len(layers) == 1 else list(axes)
    for ax, (layer, lp) in zip(axes, layers, strict=True):
        for policy, points in lp.curves.items():
            shown = [p for p in points if p.hit_rate is not None]
            if shown:
                ax.plot(
                    [p.cache_rows for p in shown],
                    [100 * p.hit_rate for p in shown],
                    STYLE[policy],
                    label=policy,
                    ms=4,
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
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"{plan.cut}; batch {plan.batch}, {plan.warmup_batches} of {plan.batches} batches warm-up"
    )
    return save_figure(fig, path)
