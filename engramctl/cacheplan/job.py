"""``cache-plan`` as one call: :func:`run_cache_plan_job` takes a :class:`CachePlanJob` (what was
asked), checks where the results go, plans the cache of the workload
(:func:`~engramctl.cacheplan.plan.plan_workload`) and writes the JSON document and the plot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..layout import ResolvedLayout
from ..rowcache.tiers import TierConfig
from .plan import DEFAULT_POINTS, POLICIES, CachePlan

__all__ = ["CachePlanJob", "run_cache_plan_job"]


@dataclass(frozen=True)
class CachePlanJob:
    """One ``cache-plan`` run as asked: the workload, how it is served, and where results go.

    The fields from ``tokenizer`` to ``spill_dir`` are those of
    :func:`~engramctl.cacheplan.plan.plan_workload`.
    """

    paths: tuple[str, ...]  # workload files (2-D .npy: one sequence per row)
    tokenizer: str = "deepseek-v4"  # for text; must be the one the vocab was built from
    batch: int = 16  # sequences per batch, as eval --batch
    seq_len: int = 128  # tokens per window of text
    sizes: tuple[int, ...] | None = None  # cache sizes in rows per layer (None: log-spaced)
    points: int = DEFAULT_POINTS  # without sizes: this many log-spaced sizes
    warmup_fraction: float = 0.1  # first batches warm the caches and are not counted
    dtype: str | None = None  # row dtype served (None: the table's or preset's)
    tokens_per_s: float | None = None  # target throughput: the bandwidth each size needs
    policies: tuple[str, ...] = POLICIES
    spill_dir: Path | None = None  # where opt spills the trace (None: the temporary directory)
    report: Path | None = None  # also write the JSON document here
    plot: Path | None = None  # write a PNG of hit rate against cache size here
    overwrite: bool = False  # replace existing report / plot files
    tiers: TierConfig | None = None  # the serving tiers whose two-tier view to add (--host-cache)
    host_static_out: Path | None = None  # write the warm-up's top rows for the host tier here


def run_cache_plan_job(
    *,
    job: CachePlanJob,
    vocab,
    layout: ResolvedLayout,
    progress: Callable[[str, int, int], None] | None = None,
    before_saving: Callable[[CachePlan], None] | None = None,
) -> CachePlan:
    """Plan the cache of ``job``'s workload for the layers ``layout`` picks; write its files.

    Parameters
    ----------
    job : the workload, the plan's choices and where the results go.
    vocab : the canonical vocab of the layout (:class:`engramctl.vocab.CanonicalVocab`).
    layout : the layout, the layers to plan and the row shape served
        (:func:`engramctl.layout.resolve_layout`); ``job.dtype`` overrides its dtype.
    progress : ``progress(stage, done, total)``, called while hashing.
    before_saving : called with the plan once it is made, before its files are written.

    Returns
    -------
    CachePlan
        The plan, also written to ``job.report`` (JSON) and ``job.plot`` (PNG) when given.
    """
    from .._files import atomic_write, check_not_an_input, check_writable_target
    from .plan import plan_workload

    outputs = (("--report", job.report), ("--plot", job.plot))
    for flag, target in (*outputs, ("--host-static-out", job.host_static_out)):
        if target is not None:
            check_not_an_input(target, job.paths, what=f"{flag} {target}")
            check_writable_target(target, overwrite=job.overwrite)
    plan = plan_workload(
        paths=list(job.paths), vocab=vocab, layout=layout.layout, layer_ids=layout.layer_ids,
        dim=layout.dim, dtype=job.dtype if job.dtype is not None else layout.dtype,
        tokenizer=job.tokenizer, batch=job.batch, seq_len=job.seq_len, sizes=job.sizes,
        points=job.points, warmup_fraction=job.warmup_fraction, tokens_per_s=job.tokens_per_s,
        policies=job.policies, spill_dir=job.spill_dir, progress=progress, tiers=job.tiers,
        host_static_out=job.host_static_out,
    )  # fmt: skip
    if before_saving is not None:
        before_saving(plan)
    if job.report is not None:
        with atomic_write(job.report, "w") as handle:
            handle.write(plan.to_json() + "\n")
    if job.plot is not None:
        from .plot import plot_plan

        plot_plan(plan, job.plot)
    return plan
