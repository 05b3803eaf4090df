"""``train --resume MODEL_DIR``: reopen a run's inputs from its checkpoint and continue it.

:func:`run_inputs` is the record a run keeps for it (its inputs as absolute paths);
:func:`plan_resume` reads what a periodic checkpoint recorded (the training options, the inputs:
corpus, held-out corpus, table, base model, ...) without opening anything else;
:func:`check_resume_flags` refuses flags that contradict it, naming both values (the run goes
on as it was started, or it would not end as the uninterrupted run does); :func:`resume_training`
opens the table, finds the checkpoint to continue from (finishing a commit a kill cut short, see
:mod:`engramctl.model.train.resume`), tokenizes the corpus again and calls
:func:`~engramctl.model.train.loop.train_model` with it.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..._files import read_json_file
from ...errors import EngramError, UsageError

# CLI option -> key of the recorded inputs (the training options are TrainConfig's fields)
INPUT_FLAGS = {
    "corpus": "corpus",
    "heldout": "heldout",
    "table": "table",
    "vocab": "vocab",
    "tokenizer": "tokenizer",
    "min_count": "min_count",
    "init_from": "init_from",
    "compare_with": "compare_with",
    "prior_runs": "prior_runs",
}


def run_inputs(*, table, **paths) -> dict:
    """What ``train --resume`` reopens: the inputs of the run, as absolute paths."""

    def absolute(value):
        return str(Path(value).resolve()) if isinstance(value, Path) else value

    return {**{k: absolute(v) for k, v in paths.items()}, "table": absolute(table)}


@dataclass
class ResumePlan:
    """What a run to resume was started with."""

    out_dir: Path
    meta: dict  # config.json of its newest checkpoint
    state: dict  # resume/state.json
    config: object  # train.TrainConfig
    inputs: dict


def plan_resume(model_dir: Path) -> ResumePlan:
    """The run recorded in ``model_dir`` (or in the temporary checkpoint a kill left beside it)."""
    from .loop import TrainConfig
    from .resume import checkpoint_candidates, checkpoint_step

    out_dir = Path(model_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EngramError(f"{out_dir} is a file, not a checkpoint directory of engramctl train")
    candidates = checkpoint_candidates(out_dir)
    if not candidates:
        raise EngramError(
            f"{out_dir} is not a checkpoint (give the --out of an engramctl train run)"
        )
    with_state = [c for c in candidates if c[2]]
    if not with_state:
        meta = candidates[0][1]
        done, steps = checkpoint_step(meta), int((meta.get("train") or {}).get("steps") or 0)
        if done >= steps:
            raise EngramError(f"{out_dir} already finished at step {done}; nothing to resume")
        raise EngramError(
            f"{out_dir} holds no training state (not written by train --checkpoint-every)"
        )
    _path, meta, state = max(with_state, key=lambda c: c[2]["step"])
    recorded = meta.get("train")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(recorded, dict) or set(recorded) - fields:
        raise EngramError(f"{out_dir}/config.json is damaged: its training options are unknown")
    try:
        config = TrainConfig(**recorded)
        config.validate()
    except (TypeError, UsageError) as exc:
        raise EngramError(f"{out_dir}/config.json is damaged: {exc}") from None
    inputs = dict(state["inputs"])
    if inputs.get("moments"):  # written before moments moved into the table's commits
        raise EngramError(
            f"{out_dir} was checkpointed by an older engramctl that kept the Adam moments in a "
            f"separate store ({inputs['moments']}); this version keeps them in the table's "
            "commits and cannot resume it: start the run again (train without --resume)"
        )
    return ResumePlan(out_dir, meta, state, config, inputs)


def _shown(value) -> str:
    return "(none)" if value is None else str(value)


def _same(given, recorded) -> bool:
    if isinstance(given, Path) or isinstance(recorded, str) and isinstance(given, str):
        return recorded is not None and Path(given).resolve() == Path(recorded).resolve()
    return given == recorded


def check_resume_flags(plan: ResumePlan, given: dict) -> None:
    """Refuse explicitly given flags that disagree with the run (``given``: option name -> value,
    as the command's parameters are named), naming both values."""
    recorded = {**dataclasses.asdict(plan.config), **plan.inputs}
    recorded["out"] = str(plan.out_dir)
    differences = []
    for name, value in given.items():
        key = INPUT_FLAGS.get(name, name)
        if key not in recorded:
            continue
        value = getattr(value, "value", value)  # an enum choice
        if key == "device" and value == "auto":
            continue
        if not _same(value, recorded[key]):
            flag = "--" + name.replace("_", "-")
            differences.append(f"{flag} {_shown(value)}, the run has {_shown(recorded[key])}")
    if differences:
        raise UsageError(
            f"train --resume continues {plan.out_dir} as it was started, and the flags disagree: "
            f"{'; '.join(differences)}. Drop them"
        )


def resume_training(plan: ResumePlan, *, open_table, on_step=None, outcome=None):
    """Continue the run of ``plan`` from its last checkpoint; returns its :class:`TrainResult`.

    ``open_table(path, mode)`` opens the table (the command's opener); ``outcome`` (a
    :class:`~engramctl.model.train.resume.RunOutcome`) gets the result as soon as the run ends,
    before the table is closed."""
    from ..checkpoint import load_checkpoint
    from .inputs import load_base, prepare_training_data
    from .loop import train_model
    from .resume import resume_point

    config, inputs = plan.config, plan.inputs
    with ExitStack() as stack:
        table = None
        if config.engram:
            table = open_table(Path(inputs["table"]), "r+")
            stack.callback(table.close)
            point = resume_point(plan.out_dir, table=table)
        else:
            point = resume_point(plan.out_dir)
        checkpoint = load_checkpoint(point.path, device=config.device)
        point.checkpoint = checkpoint
        base = None
        if inputs.get("init_from"):
            base = load_base(
                Path(inputs["init_from"]), table=table, vocab=checkpoint.vocab,
                device=config.device,
            )  # fmt: skip
        data = prepare_training_data(
            corpus=Path(inputs["corpus"]),
            heldout=Path(inputs["heldout"]) if inputs.get("heldout") else None,
            vocab=checkpoint.vocab,
            tokenizer_source=inputs.get("tokenizer"),
            seq_len=config.seq_len,
            min_count=int(inputs.get("min_count") or 1),
            model_vocab=checkpoint.model_vocab,
        )
        compare = None
        if inputs.get("compare_with"):
            history = Path(inputs["compare_with"]) / "history.json"
            if history.exists():
                compare = {Path(inputs["compare_with"]).name: read_json_file(history)}
        result = train_model(
            windows=data.windows,
            heldout=data.heldout,
            model_vocab=checkpoint.model_vocab,
            config=config,
            out_dir=plan.out_dir,
            table=table,
            vocab=checkpoint.vocab,
            overwrite=True,
            on_step=on_step,
            extra_meta=data.meta,
            compare=compare,
            base=base,
            prior_runs=inputs.get("prior_runs") or "refuse",
            inputs=inputs,
            resume=point,
        )
        if outcome is not None:
            outcome.result = result
        return result
