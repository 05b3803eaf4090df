"""hash-stats: exact n-gram counting and the collision / occupancy report of a layout.

``counter`` keeps exact, mergeable counts of distinct n-grams per (layer, order); ``figures``
turns counts into per-head figures (numba kernels with numpy references); ``report`` holds the
report dataclasses and the ideal-hash formulas; ``run`` drives a single-process pass and
``run_dask`` the same pass over Dask workers; ``plot`` draws the report.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "NgramCounter": ".counter",
    "HashStatsReport": ".report",
    "OrderStats": ".report",
    "HeadStats": ".report",
    "SweepPoint": ".report",
    "HashStatsPlan": ".run",
    "plan_hash_stats": ".run",
    "run_hash_stats": ".run",
    "run_hash_stats_dask": ".run_dask",
    "plot_report": ".plot",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
