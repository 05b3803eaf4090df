"""``hash-stats`` as one call: :func:`run_hash_stats_job` takes a :class:`HashStatsJob` (what was
asked), checks where the results go, plans the pass (:func:`~engramctl.stats.run.plan_hash_stats`),
counts here or on Dask workers, and saves the JSON report and the plot.

The output targets are checked before the pass (a refusal after an hour of counting loses the
hour); a target that fails after the pass (the disk filled) gets a fallback file in the temporary
directory instead (:func:`engramctl._outputs.save_with_fallback`), and the outcome says where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .._outputs import Saved
from ..corpus.files import CorpusOptions
from ..errors import UsageError
from ..layout import ResolvedLayout
from .report import HashStatsReport
from .run import HashStatsPlan

__all__ = ["HashStatsJob", "HashStatsOutcome", "run_hash_stats_job"]


@dataclass(frozen=True)
class HashStatsJob:
    """One ``hash-stats`` run as asked: the corpus, how to count it, and where the results go.

    ``sweep``, ``limit_tokens``, ``max_memory``, ``threads``, ``partitions``, ``spill_dir``,
    ``estimate`` and ``extrapolate`` are those of :func:`~engramctl.stats.run.plan_hash_stats`.
    """

    inputs: tuple[str, ...]  # corpus files, directories or globs
    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    tokenizer: str = "deepseek-v4"  # for text input; must be the one the vocab was built from
    sweep: tuple[int, ...] = ()  # also report these rows per head
    limit_tokens: int | None = None  # stop after this many tokens
    max_memory: int | None = None  # bytes (None: 75% of RAM)
    threads: int | None = None  # None: the CPU cores
    partitions: int | None = None  # None: 1, or the smallest K that fits max_memory
    spill_dir: str | None = None  # where partitions keep their n-grams (None: TMPDIR)
    estimate: bool = False  # HyperLogLog sketches and ideal-hash figures
    extrapolate: float | None = None  # also predict the figures at this many tokens
    report: Path | None = None  # also write the JSON report here
    plot: Path | None = None  # write a PNG of the row loads here
    overwrite: bool = False  # replace existing report / plot files
    scheduler: str | None = None  # a Dask scheduler address or local:N (None: count here)

    def __post_init__(self) -> None:
        if self.estimate and self.plot is not None:
            raise UsageError(
                "--plot draws row-load histograms, which only exact counting gives; drop "
                "--estimate or --plot"
            )


@dataclass(frozen=True)
class HashStatsOutcome:
    """The report of a run and where its files went (in the order report, plot)."""

    report: HashStatsReport
    saved: tuple[Saved, ...] = ()

    @property
    def failed(self) -> bool:
        """A target failed after the pass (its file went to a fallback instead)."""
        return any(item.failure is not None for item in self.saved)


def run_hash_stats_job(
    *,
    job: HashStatsJob,
    vocab,
    layout: ResolvedLayout,
    on_plan: Callable[[HashStatsPlan], None] | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    before_saving: Callable[[HashStatsReport], None] | None = None,
) -> HashStatsOutcome:
    """Run ``job`` over the layers ``layout`` picks and save its files.

    Parameters
    ----------
    job : what to count and where the results go.
    vocab : the canonical vocab of the layout (:class:`engramctl.vocab.CanonicalVocab`).
    layout : the layout and the layers to report (:func:`engramctl.layout.resolve_layout`).
    on_plan : called with the plan once the inputs are found and the memory bounded, before the
        pass starts.
    progress : called after each batch with ``(bytes done, bytes total, documents, tokens)``.
    before_saving : called with the report once the pass is over, before its files are written.

    Returns
    -------
    HashStatsOutcome
        The report (``partial`` if interrupted) and the files saved.
    """
    from .._files import check_not_an_input
    from .._outputs import check_output_target
    from .run import load_matching_tokenizer, plan_hash_stats

    for flag, target in (("--report", job.report), ("--plot", job.plot)):
        if target is not None:
            check_not_an_input(target, job.inputs, what=f"{flag} {target}")
            check_output_target(target, overwrite=job.overwrite)  # before the pass, not after
    plan = plan_hash_stats(
        job.inputs, layout=layout.layout, layer_ids=layout.layer_ids, options=job.corpus,
        sweep=job.sweep, limit_tokens=job.limit_tokens, max_memory=job.max_memory,
        threads=job.threads, partitions=job.partitions, spill_dir=job.spill_dir,
        estimate=job.estimate, extrapolate=job.extrapolate,
    )  # fmt: skip
    tokenizer = load_matching_tokenizer(job.tokenizer, vocab) if plan.needs_tokenizer else None
    if on_plan is not None:
        on_plan(plan)
    report = _count(plan, job.scheduler, vocab=vocab, tokenizer=tokenizer, progress=progress)
    if before_saving is not None:
        before_saving(report)
    return HashStatsOutcome(report, _save(report, job))


def _count(plan, scheduler, **kwargs) -> HashStatsReport:
    """The pass: here (:func:`.run.run_hash_stats`) or on Dask workers (:mod:`.run_dask`)."""
    if scheduler:
        from .run_dask import run_hash_stats_dask

        return run_hash_stats_dask(plan, scheduler=scheduler, **kwargs)
    from .run import run_hash_stats

    return run_hash_stats(plan, **kwargs)


def _save(report: HashStatsReport, job: HashStatsJob) -> tuple[Saved, ...]:
    """Write the report and the plot; a target that fails now does not lose the pass."""
    from .._files import atomic_write
    from .._outputs import save_with_fallback

    saved = []
    if job.report is not None:

        def write_report(path):
            with atomic_write(path, "w") as handle:
                handle.write(report.to_json())

        saved.append(save_with_fallback(job.report, write_report))
    if job.plot is not None:
        from .plot import plot_report

        saved.append(save_with_fallback(job.plot, lambda path: plot_report(report, path)))
    return tuple(saved)
