"""cache-plan: how much fast memory serving a workload needs, from one pass over its traffic.

``trace`` cuts a workload exactly as ``eval`` does and records, per Engram layer, each batch's
distinct rows; ``stream`` feeds the batches through the passes without keeping the trace
(memory O(distinct rows)); ``lru`` computes the LRU and pager hit rates of every cache size from
one pass (stack distances); ``static`` scores a fixed cache of the warm-up's most-looked-up
rows; ``opt`` is Belady's optimum; ``plan`` ties them into one report (:func:`plan_cache`);
``plot`` draws it; ``job`` is the command as one call (the plan and its files).
torch-free: it imports only the corpus readers, hashing, layout, vocab and table metadata.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".plan": ("CachePlan", "LayerPlan", "CurvePoint", "plan_cache", "plan_workload"),
    ".trace": ("Workload", "LayerTrace", "read_workload", "build_traces"),
    ".plot": ("plot_plan",),
    ".job": ("CachePlanJob", "run_cache_plan_job"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
