"""hash-stats: exact n-gram counting and the collision / occupancy report of a layout.

``counter`` keeps exact, mergeable counts of distinct n-grams per (layer, order); ``figures``
turns counts into per-head figures (numba kernels with numpy references); ``report`` holds the
report dataclasses and the ideal-hash formulas; ``run`` drives a single-process pass and
``run_dask`` the same pass over Dask workers; ``plot`` draws the report.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".counter": ("NgramCounter",),
    ".report": ("HashStatsReport", "OrderStats", "HeadStats", "SweepPoint"),
    ".run": ("HashStatsPlan", "plan_hash_stats", "run_hash_stats"),
    ".run_dask": ("run_hash_stats_dask",),
    ".plot": ("plot_report",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
