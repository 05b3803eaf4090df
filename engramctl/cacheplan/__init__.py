"""cache-plan: how much fast memory serving a workload needs, from one pass over its traffic.

``trace`` cuts a workload exactly as ``eval`` does and records, per Engram layer, each batch's
distinct rows; ``lru`` computes the LRU and pager hit rates of every cache size from one pass
(stack distances); ``static`` scores a fixed cache of the warm-up's most-looked-up rows; ``opt``
is Belady's optimum; ``plan`` ties them into one report (:func:`plan_cache`); ``plot`` draws it.
torch-free: it imports only the corpus readers, hashing, layout, vocab and table metadata.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "CachePlan": ".plan",
    "LayerPlan": ".plan",
    "plan_cache": ".plan",
    "plan_workload": ".plan",
    "build_traces": ".trace",
    "LayerTrace": ".trace",
    "plot_plan": ".plot",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
