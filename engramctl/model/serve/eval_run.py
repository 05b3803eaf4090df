"""``engramctl eval`` as one library call: :func:`run_eval` takes the command's options
(:class:`EvalRequest`), refuses what cannot run, opens the checkpoint's table and runs what was
asked (a benchmark, :func:`~engramctl.model.serve.evaluate.evaluate`; the gates of a text,
:func:`~engramctl.model.serve.evaluate.explain_gates`; lm-evaluation-harness tasks,
:func:`~engramctl.model.serve.lm_eval_adapter.run_lm_eval`), writing the JSON report if asked.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from ...rowcache.tiers import DEFAULT_PREFETCH_DEPTH, DEFAULT_READ_THREADS, TierConfig
from .opening import default_open_table


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """The options of ``engramctl eval``, named as the command's parameters."""

    model: Path | None
    benchmark: Path | None
    table: Path | None
    device: str
    batch: int
    cache_rows: int
    resident: bool
    explain: str | None
    lm_eval_tasks: str | None
    limit: int | None
    tokenizer: str | None
    report: Path | None
    overwrite: bool
    strict_table: bool
    harness_output: bool = False  # lm-eval's warnings and progress bars (eval -v)
    counts: Path | None = None  # a count memory to mix in (or, without model, to score alone)
    mix: float | None = None  # a constant λ instead of the memory's fitted gate
    host_cache: str | None = None  # host-RAM row cache, e.g. "8G" (None: no host tier)
    host_static: Path | None = None  # the host tier's static rows (None: LRU host tier)
    prefetch_depth: int = DEFAULT_PREFETCH_DEPTH  # batches whose rows are read ahead
    read_threads: int = DEFAULT_READ_THREADS  # reads in flight on a cold table

    def tiers(self) -> TierConfig:
        """The serving tiers asked for, checked (:class:`~engramctl.rowcache.tiers.TierConfig`)."""
        return TierConfig.from_options(
            cache_rows=self.cache_rows, host_cache=self.host_cache, host_static=self.host_static,
            read_threads=self.read_threads, prefetch_depth=self.prefetch_depth,
        )  # fmt: skip

    def resolved(self) -> EvalRequest:
        """The request with every path absolute: the harness runs a task directory's YAMLs
        from that directory, and a relative table read after that would miss its chunks (and
        read as damaged). A tokenizer given as a path that exists is resolved too."""

        def absolute(path):  # a path that is not there is left as given (and refused as such)
            return path if path is None or not Path(path).exists() else Path(path).absolute()

        tokenizer = self.tokenizer
        if tokenizer is not None and Path(tokenizer).exists():
            tokenizer = str(Path(tokenizer).absolute())
        return dataclasses.replace(
            self, model=absolute(self.model), benchmark=absolute(self.benchmark),
            table=absolute(self.table), tokenizer=tokenizer, counts=absolute(self.counts),
            host_static=absolute(self.host_static),
            report=None if self.report is None else Path(self.report).absolute(),
        )  # fmt: skip

    def check(self) -> None:
        """Refuse options that do not go together, and a report that may not be written."""
        from ..._files import check_not_an_input, check_writable_target
        from ...counts import check_mix

        check_mix(self.mix)
        self.tiers()
        if self.mix is not None and self.counts is None:
            raise UsageError("--mix weighs a count memory: give --counts too")
        if self.model is None:
            if self.counts is None:
                raise UsageError("give --model (with --table), or --counts to score a count memory")
            if self.benchmark is None or self.explain or self.lm_eval_tasks or self.table:
                raise UsageError(
                    "without --model, eval scores the count memory on --benchmark only"
                )
        if self.lm_eval_tasks is not None and (
            self.benchmark is not None or self.explain is not None
        ):
            raise UsageError("--lm-eval-tasks runs on its own: drop --benchmark/--explain")
        if self.limit is not None and self.lm_eval_tasks is None:
            raise UsageError("--limit applies to --lm-eval-tasks only")
        if self.benchmark is None and self.explain is None and self.lm_eval_tasks is None:
            raise UsageError("give --benchmark FILE, --explain TEXT (or both), or --lm-eval-tasks")
        if self.report is not None:
            inputs = (self.benchmark, self.model, self.table, self.counts)
            check_not_an_input(self.report, inputs, what=f"--report {self.report}")
            check_writable_target(self.report, overwrite=self.overwrite)


@dataclass(frozen=True)
class EvalOutput:
    """What ``eval`` produced: the report (``--json``, ``--report``) and the harness's table."""

    doc: dict
    harness_table: str | None  # lm-evaluation-harness's results table (with --lm-eval-tasks)


def run_eval(
    request: EvalRequest,
    *,
    open_table: Callable = default_open_table,
    on_warning: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalOutput:
    """Run ``engramctl eval``.

    ``open_table(path)`` opens the table (a test may route it to a double); ``on_warning(problem)``
    hears that the table's rows changed since the checkpoint (``strict_table``: an error
    instead); ``on_progress(done, total)`` follows a benchmark's batches.
    """
    from .evaluate import evaluate, explain_gates
    from .mixing import CountsSpec
    from .opening import ModelSpec, open_model_table

    r = request.resolved()  # before anything can change the working directory
    r.check()
    doc: dict = {}
    counts = None if r.counts is None else CountsSpec(r.counts, r.mix)
    if r.model is None:
        doc = evaluate(model=None, benchmark=r.benchmark, counts=counts).to_dict()
        _write_report(r, doc)
        return EvalOutput(doc, None)
    with open_model_table(r.model, r.table, strict=r.strict_table, open_table=open_table) as opened:
        if opened.problem is not None and on_warning is not None:
            on_warning(opened.problem)
        spec = ModelSpec(
            r.model, opened.table, r.device, r.cache_rows, r.resident, r.tokenizer, r.tiers()
        )
        if r.lm_eval_tasks is not None:
            from .lm_eval_adapter import run_lm_eval

            doc = run_lm_eval(model=spec, tasks=r.lm_eval_tasks, limit=r.limit, batch=r.batch,
                              quiet=not r.harness_output, counts=counts)  # fmt: skip
        if r.benchmark is not None:
            result = evaluate(model=spec, benchmark=r.benchmark, batch=r.batch,
                              on_progress=on_progress, counts=counts)  # fmt: skip
            doc = result.to_dict()
        if r.explain is not None:
            doc["explain"] = explain_gates(model=spec, text=r.explain, counts=counts)
    harness_table = doc.pop("table", None)
    _write_report(r, doc)
    return EvalOutput(doc, harness_table)


def _write_report(request: EvalRequest, doc: dict) -> None:
    if request.report is not None:
        from ..._files import atomic_write

        with atomic_write(request.report, "w") as handle:
            handle.write(json.dumps(doc, indent=2))
