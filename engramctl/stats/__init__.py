"""hash-stats: exact n-gram counting and the collision / occupancy report of a layout.

``counter`` keeps exact, mergeable counts of distinct n-grams per (layer, order); ``figures``
turns counts into per-head figures (numba kernels with numpy references); ``report`` holds the
report dataclasses and the ideal-hash formulas; ``passes`` is the streaming pass every mode
shares and ``run`` plans and drives it; ``run_dask`` runs it over Dask workers; ``job`` is the
command as one call (plan, pass, report and plot files). Beyond one machine's memory:
``partition`` (+ ``partition_run``, ``partition_dask``) counts exactly in key-space partitions,
``sketch`` estimates with HyperLogLog sketches, ``extrapolate`` fits Heaps' law. ``plot`` draws
the report.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".counter": ("NgramCounter",),
    ".report": ("HashStatsReport", "OrderStats", "HeadStats", "SweepPoint"),
    ".run": ("HashStatsPlan", "plan_hash_stats", "run_hash_stats"),
    ".run_dask": ("run_hash_stats_dask",),
    ".job": ("HashStatsJob", "HashStatsOutcome", "run_hash_stats_job"),
    ".sketch": ("NgramSketch",),
    ".plot": ("plot_report",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
