"""engramctl checkpoints as lm-evaluation-harness models, and ``eval --lm-eval-tasks``.

:class:`EngramHarnessLM` implements the harness's ``LM`` interface over a
:class:`~engramctl.model.serve.opening.ModelRunner` (a checkpoint plus its rows, paged from the
table by the :class:`~engramctl.model.serve.paging.RowPager` or resident), batched:

- ``loglikelihood``: the scoring of ``eval --benchmark`` multiple choice
  (:func:`~engramctl.model.serve.evaluate.score_continuations`): context and continuation are
  encoded separately (no special tokens) and concatenated as token lists; an empty context is the
  EOS token. A task YAML with ``target_delimiter: ""`` thus scores exactly what engramctl's own
  multiple-choice eval scores.
- ``loglikelihood_rolling``: each document on its own, EOS-prefixed, cut into the harness's
  rolling windows of the model's length (every token scored once, the last window with full
  context), for word/byte perplexity and bits per byte.
- ``generate_until``: greedy decoding (the "unknown" output class is never emitted), stopping at
  an ``until`` string, EOS or ``max_gen_toks``; tasks asking for sampling are refused. With a
  count memory, each token is the argmax over raw ids of the mix
  (:class:`~engramctl.model.serve.mixing.MixedDecoder`, ``recent_gain`` started from the
  context as eval would score it).

:func:`run_lm_eval` resolves the tasks (harness names or a directory of task YAMLs, the
harness's ``include_path``), checks that engramctl can serve them and runs the harness's own
``simple_evaluate``. lm-eval is the optional extra ``engramctl[eval]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...errors import EngramError, UsageError
from .evaluate import score_continuations
from .opening import ModelRunner, ModelSpec, open_model

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'engramctl[eval]'"
SERVED_OUTPUT_TYPES = (
    "loglikelihood",
    "multiple_choice",
    "loglikelihood_rolling",
    "generate_until",
)
DEFAULT_MAX_GEN_TOKENS = 256


def import_lm_eval():
    """The ``lm_eval`` package, or one line saying how to install it."""
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401
    except ImportError:
        raise EngramError(INSTALL_HINT) from None
    return lm_eval


def harness_lm_class():
    """:class:`EngramHarnessLM`'s base is the harness's ``LM``; built on first use."""
    global _LM_CLASS
    if _LM_CLASS is None:
        _LM_CLASS = _make_class(import_lm_eval().api.model.LM)
    return _LM_CLASS


_LM_CLASS = None


def _make_class(base):
    class EngramHarnessLM(base):
        """An engramctl checkpoint with its (paged) table rows as a harness ``LM``."""

        def __init__(self, runner: ModelRunner, tokenizer, *, batch: int = 16, mixer=None):
            super().__init__()
            self.mixer = mixer  # a count memory mixed into every log-likelihood
            self.runner = runner
            self.tokenizer = tokenizer
            self.batch = batch
            self.seq_len = runner.model.config.block_size
            from ...corpus.stream import eos_id

            self.eos = eos_id(tokenizer)

        @property
        def device(self):
            return self.runner.device

        def encode(self, text: str) -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=False).ids

        # -------------------------------------------------------------- loglikelihood
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = []
            for request in requests:
                context, continuation = request.args
                pairs.append((self.encode(context) or [self.eos], self.encode(continuation)))
            return self._score(pairs)

        def _score(self, pairs):
            scores, greedy = score_continuations(self.runner, pairs, batch=self.batch,
                                                 mixer=self.mixer)  # fmt: skip
            return [(float(s), bool(g)) for s, g in zip(scores, greedy, strict=True)]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            pairs, owner = [], []
            for r, request in enumerate(requests):
                (text,) = request.args[:1]
                windows = get_rolling_token_windows(
                    token_list=self.encode(text),
                    prefix_token=self.eos,
                    max_seq_len=self.seq_len,
                    context_len=1,
                )
                for window in windows:
                    pairs.append(make_disjoint_window(window))
                    owner.append(r)
            totals = np.zeros(len(requests))
            if pairs:
                scores, _ = score_continuations(self.runner, pairs, batch=self.batch,
                                                mixer=self.mixer)  # fmt: skip
                np.add.at(totals, np.array(owner), scores)
            return [float(t) for t in totals]

        # ---------------------------------------------------------------- generation
        def generate_until(self, requests, disable_tqdm: bool = False):
            jobs = []
            for request in requests:
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                    raise EngramError(
                        f"task {getattr(request, 'task_name', None)!r} asks for sampled generation "
                        f"({kwargs}); engramctl's harness model decodes greedily only"
                    )
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                steps = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKENS))
                jobs.append((self.encode(context) or [self.eos], until, steps))
            out = []
            for start in range(0, len(jobs), self.batch):
                out.extend(self._greedy(jobs[start : start + self.batch]))
            return out

        def _greedy(self, jobs):
            """Greedy decoding of a batch of prompts, one token per step for each."""
            import torch

            output_ids = self.runner.model_vocab.output_ids
            seqs = [list(ids) for ids, _, _ in jobs]
            decoders = self._mixed_decoders(seqs) if self.mixer is not None else None
            made = [[] for _ in jobs]
            live = [steps > 0 for _, _, steps in jobs]
            texts = [""] * len(jobs)
            while any(live):
                rows = [i for i, alive in enumerate(live) if alive]
                inputs = np.zeros((len(rows), self.seq_len), dtype=np.int64)
                ends = []
                for k, i in enumerate(rows):
                    window = seqs[i][-self.seq_len :]
                    inputs[k, : len(window)] = window
                    ends.append(len(window) - 1)
                ((_, logits),) = list(self.runner.run([inputs]))
                last = logits[torch.arange(len(rows)), torch.tensor(ends)].float()
                if decoders is None:
                    last[:, 0] = float("-inf")  # the "unknown" class is no token
                    picks = output_ids[last.argmax(-1).cpu().numpy() - 1]
                else:  # the mix's argmax over raw ids
                    picks = [decoders[i].pick(seqs[i], last[k]) for k, i in enumerate(rows)]
                for k, i in enumerate(rows):
                    token = int(picks[k])
                    _, until, steps = jobs[i]
                    if token == self.eos:
                        live[i] = False
                        continue
                    seqs[i].append(token)
                    made[i].append(token)
                    texts[i] = self.tokenizer.decode(made[i], skip_special_tokens=False)
                    cut = [texts[i].find(u) for u in until if u and u in texts[i]]
                    if cut:
                        texts[i] = texts[i][: min(cut)]
                        live[i] = False
                    elif len(made[i]) >= steps:
                        live[i] = False
            return texts

        def _mixed_decoders(self, seqs):
            """One :class:`~engramctl.model.serve.mixing.MixedDecoder` per prompt, started
            after it (its ``recent_gain`` from the prompt, when the gate reads it)."""
            from .mixing import prompts_model_logp

            decoders = [self.mixer.decoder() for _ in seqs]
            if decoders and decoders[0].reads_prompt:
                scores = prompts_model_logp(self.runner, seqs, decoders[0].spread, eos=self.eos,
                                            batch=self.batch)  # fmt: skip
                for decoder, ids, logp in zip(decoders, seqs, scores, strict=True):
                    decoder.start(ids, logp)
            return decoders

    return EngramHarnessLM


# ------------------------------------------------------------------------------ task resolution
def resolve_tasks(spec: str):
    """``(task names, include_path or None, directory to run from or None)`` for TASKS.

    TASKS is a comma-separated list of harness task/group/tag names and at most one directory of
    task YAMLs (every task defined under it runs).
    """
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise UsageError("--lm-eval-tasks: give a task name or a directory of task YAMLs")
    dirs = [Path(item) for item in items if Path(item).is_dir()]
    if len(dirs) > 1:
        raise UsageError("--lm-eval-tasks: give at most one directory of task YAMLs")
    include = dirs[0].resolve() if dirs else None
    if include is not None and not any(include.rglob("*.yaml")):
        raise EngramError(f"--lm-eval-tasks: {dirs[0]} holds no task YAMLs (*.yaml)")
    names_only = [item for item in items if not Path(item).is_dir()]
    manager = TaskManager(
        include_path=str(include) if include else None,
        include_defaults=bool(names_only) or include is None,
    )
    names = list(names_only)
    if include is not None:
        found = sorted(
            name
            for name, entry in manager.task_index.items()
            if entry.yaml_path is not None
            and Path(entry.yaml_path).resolve().is_relative_to(include)
            and entry.kind.name in ("TASK", "PY_TASK")
        )
        if not found:
            raise EngramError(f"--lm-eval-tasks: {dirs[0]} defines no tasks (no 'task:' YAMLs)")
        names += found
    known = set(manager.all_tasks) | set(manager.all_groups) | set(manager.all_tags)
    unknown = [name for name in names_only if name not in known]
    if unknown:
        raise EngramError(
            f"--lm-eval-tasks: unknown task {unknown[0]!r} (not a harness task, group or tag, "
            "nor a directory); `lm-eval ls tasks` lists the known ones"
        )
    return names, manager, include


def check_served(loaded: dict) -> None:
    """Refuse tasks whose output type (or generation mode) engramctl cannot serve."""
    for name, task in loaded["tasks"].items():
        kind = task.OUTPUT_TYPE
        if kind not in SERVED_OUTPUT_TYPES:
            raise EngramError(
                f"task {name!r} has output type {kind!r}; engramctl serves "
                f"{', '.join(SERVED_OUTPUT_TYPES)}"
            )
        config = task.config
        for field in ("doc_to_image", "doc_to_audio"):
            if getattr(config, field, None):
                raise EngramError(
                    f"task {name!r} is multimodal ({field}); engramctl models read text only"
                )
        if kind == "generate_until":
            kwargs = dict(config.generation_kwargs or {})
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                raise EngramError(
                    f"task {name!r} asks for sampled generation (generate_until with "
                    f"{kwargs}); engramctl serves greedy generation only"
                )


@contextlib.contextmanager
def _working_directory(path: Path | None):
    """Run from ``path`` so a task YAML's relative ``data_files`` are read beside it."""
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


NETWORK_MODULES = ("requests", "urllib3", "huggingface_hub", "httpx", "aiohttp", "fsspec")


def download_failure(exc: BaseException) -> str | None:
    """Why a task's data could not be fetched (offline, no network, a data set not cached), or
    ``None`` for any other error; looks through the exception's causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module = type(exc).__module__ or ""
        if (
            isinstance(exc, ConnectionError)
            or module.startswith(NETWORK_MODULES)
            or (type(exc).__name__ in ("OfflineModeIsEnabled", "DatasetNotFoundError"))
        ):
            return str(exc).split("\n")[0][:200]
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _downloads_named(tasks: str):
    """A task whose data set must be downloaded, where the Hub cannot be reached: one line
    saying so and how to run it offline, not the harness's ``ConnectionError``."""
    try:
        yield
    except Exception as exc:
        reason = download_failure(exc)
        if reason is None:
            raise
        raise EngramError(
            f"--lm-eval-tasks {tasks}: a task's data set must be downloaded from the Hugging Face "
            f"Hub, which cannot be reached ({reason}); run it once with network access (the data "
            "is cached under HF_HOME and reused offline), or give a directory of task YAMLs whose "
            "data_files are local files, as sample_data/bench does"
        ) from None


# Loggers of the harness and the libraries it drives; quiet, only their errors pass.
HARNESS_LOGGERS = ("lm_eval", "datasets", "huggingface_hub", "evaluate", "transformers")


@contextlib.contextmanager
def _harness_quiet(quiet: bool):
    """Silence what the harness says besides its results: the WARNING lines of its loggers
    (a task's metric defaults, ...) and the progress bars of lm-eval, ``datasets`` and the Hub
    (tqdm on ``sys.stderr``). Errors still pass; levels and bars are restored afterwards."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in HARNESS_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    bars = None
    with contextlib.suppress(ImportError):
        from datasets.utils import logging as datasets_logging

        bars = datasets_logging.is_progress_bar_enabled()
        datasets_logging.disable_progress_bar()
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars:
            datasets_logging.enable_progress_bar()


def run_lm_eval(
    *,
    model: ModelSpec,
    tasks: str,
    limit: int | None = None,
    batch: int = 16,
    bootstrap_iters: int = 1000,
    quiet: bool = True,
    counts=None,
) -> dict:
    """Run the harness's ``simple_evaluate`` on a checkpoint (``model``: it, its table and how its
    rows are served); ``{"results", "table", "paging"}``.

    ``results``: the harness's results (``results``, ``groups``, ``versions``, ``n-shot``,
    ``higher_is_better``, ``n-samples``); ``table``: its printed result table (markdown);
    ``paging``: engramctl's paging counters (None for a baseline model). ``bootstrap_iters``:
    the harness's standard errors (closed form for means such as ``acc``; 0: none).
    ``quiet``: hide the harness's warnings and progress bars (``eval`` shows them with ``-v``).
    ``counts`` (a :class:`~engramctl.model.serve.mixing.CountsSpec`): every log-likelihood is
    the mix's (:class:`~engramctl.model.serve.mixing.SequenceMixer`), and generation tasks
    decode greedily from the mix (:class:`~engramctl.model.serve.mixing.MixedDecoder`).
    """
    import json

    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    import_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable, make_table

    model = replace(model, model_dir=Path(model.model_dir).resolve())
    with _harness_quiet(quiet):
        names, manager, include = resolve_tasks(tasks)
    opened = open_model(model)
    mixer = None
    if counts is not None:
        from ...corpus.stream import eos_id
        from .mixing import SequenceMixer, open_counts_for_model

        memory = open_counts_for_model(counts, opened.checkpoint)
        mixer = SequenceMixer(memory, opened.runner.model_vocab, counts.mix,
                              eos_id(opened.tokenizer))  # fmt: skip
    lm = harness_lm_class()(opened.runner, opened.tokenizer, batch=batch, mixer=mixer)
    with _working_directory(include), _harness_quiet(quiet), _downloads_named(tasks):
        try:
            check_served(manager.load(names))
        except (KeyError, ValueError, FileNotFoundError) as exc:
            if download_failure(exc) is not None:
                raise
            raise EngramError(f"--lm-eval-tasks: cannot load the tasks ({exc})") from None
        results = simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            log_samples=False,
            bootstrap_iters=bootstrap_iters,
            verbosity=None,
        )
    keep = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better")
    doc = {key: results[key] for key in keep if key in results}
    doc["n-samples"] = results.get("n-samples")
    doc = json.loads(json.dumps(doc, default=handle_non_serializable))
    return {
        "results": doc,
        "table": make_table(results),
        "paging": opened.paging(),
        "model": opened.describe(),
        "tokens": opened.runner.tokens,
    }
