"""PNG plots of a hash-stats report (matplotlib, Agg backend, imported lazily).

Left: occupancy and collision rates against rows per head (the layout's size and every
``--sweep`` size) with the ideal-uniform-hash curves. Right: the row-load histogram (rows holding
0, 1, 2, ... distinct n-grams) of the first head of each order against its Poisson expectation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._files import save_figure
from .report import HashStatsReport, OrderStats


def _points(report: HashStatsReport, layer: int, order: int) -> list[tuple[int, OrderStats]]:
    """``(rows per head, OrderStats)`` for the layout and each sweep size, by size."""
    index = order - 2
    points = [(report.layout["ngram_vocab"][index], report.layers[layer][order])]
    for point in report.sweep:
        points.append((point.ngram_vocab[index], point.layers[layer][order]))
    return sorted(points, key=lambda p: p[0])


def _ideal_curves(distinct: int, heads: int, sizes: np.ndarray):
    """Ideal occupancy, colliding distinct fraction and all-heads fraction over ``sizes``."""
    sizes = sizes.astype(np.float64)
    keep = np.log1p(-1.0 / sizes)
    occupancy = -np.expm1(distinct * keep)
    colliding = -np.expm1(max(distinct - 1, 0) * keep)
    return occupancy, colliding, colliding**heads


def plot_report(report: HashStatsReport, path: str | Path, *, layer: int | None = None) -> Path:
    """Write the two-panel PNG of one layer (default: the first analysed) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = layer if layer is not None else next(iter(report.layers))
    orders = sorted(report.layers[layer])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, order in enumerate(orders):
        color = colors[i % len(colors)]
        points = _points(report, layer, order)
        sizes = np.array([p[0] for p in points])
        stats = report.layers[layer][order]
        grid = np.geomspace(max(2, sizes.min() / 2), sizes.max() * 2, 60)
        occ, col, allh = _ideal_curves(stats.distinct, len(stats.heads), grid)
        left.plot(grid, occ, color=color, lw=0.8, ls=":")
        left.plot(grid, col, color=color, lw=0.8, ls="--")
        left.plot(grid, np.maximum(allh, 1e-12), color=color, lw=0.8, ls="-.")
        occupancy = [s.mean_occupancy for _, s in points]
        colliding = [s.mean_colliding_distinct_fraction for _, s in points]
        all_heads = [s.all_heads_colliding_occurrence_fraction for _, s in points]
        left.plot(
            sizes, occupancy, "o", color=color, mfc="none", ms=10, label=f"{order}-gram occupancy"
        )
        left.plot(sizes, colliding, "s", color=color, label=f"{order}-gram colliding distinct")
        left.plot(
            sizes, np.maximum(all_heads, 1e-12), "^", color=color,
            label=f"{order}-gram all-heads colliding occ.",
        )  # fmt: skip
    left.axvline(report.layout["ngram_vocab"][0], color="grey", lw=0.8, ls=":")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_ylim(1e-7, 1.5)
    left.set_xlabel("rows per head")
    left.set_ylabel("fraction")
    left.set_title(f"layer {layer}: measured (markers) vs ideal hash (lines); grey: layout")
    left.legend(fontsize=7, loc="lower left")
    left.grid(True, which="both", alpha=0.2)
    width = 0.8 / max(1, len(orders))
    for i, order in enumerate(orders):
        head = report.layers[layer][order].heads[0]
        histogram = np.array(head.row_load_histogram, dtype=np.float64)
        if histogram.size == 0 or head.distinct == 0:
            continue
        loads = np.arange(histogram.size)
        lam = head.distinct / head.rows
        poisson = [
            head.rows * math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) for k in loads
        ]
        color = colors[i % len(colors)]
        right.bar(
            loads + i * width, histogram, width=width, color=color, label=f"{order}-gram head 0"
        )
        right.plot(loads + i * width, poisson, "k_", ms=10)
    right.set_yscale("log")
    right.set_xlabel("distinct n-grams in a row (row load)")
    right.set_ylabel("rows")
    right.set_title("row-load histogram (black: Poisson, ideal hash)")
    right.legend(fontsize=7)
    fig.suptitle(
        f"{report.tokens:,} tokens, {report.documents:,} documents"
        + (" (partial)" if report.partial else "")
    )
    return save_figure(fig, path)
