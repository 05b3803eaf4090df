"""Resumable training: periodic checkpoints that hold a run's whole state, and ``--resume``.

With ``train --checkpoint-every N`` the run commits a checkpoint every N steps: the model
checkpoint directory (``config.json``, ``model.safetensors``, vocab, ``history.json``) plus
``resume/``: ``state.safetensors`` (the backbone AdamW moments, the sparse row Adam state of the
rows trained so far with their float32 master values, or an out-of-core run's write buffer: the
rest of an out-of-core run's row state is in the table's commits) and
``state.json`` (step, run record, the inputs to reopen, fingerprints of the token windows).

A commit follows issue 14's order: the checkpoint is written complete under a temporary name
(``.<out>.tmp-<pid>``); the table's run record is marked ``incomplete`` (``writing_step``); the
rows (out of core with their moments and master copies) are written as one commit; the record is
replaced by the complete one (``checkpoint_step``, the table state); the directory is renamed into
place. Ctrl-C is held back for that span. A kill anywhere leaves the previous checkpoint with
the table it pins, or a complete temporary checkpoint whose rows :func:`resume_point` writes
again (they are in its state: a redo log) before it renames it into place.

Resuming rebuilds every piece of state and continues the data order at the checkpoint's step,
so the run ends bit-identical to one that never stopped (CPU, same ``--threads``); the in-memory
path keeps float32 rows, so the master values of the trained rows come from the checkpoint, not
from the table (which holds them rounded to its dtype).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._files import glob_escape, pid_is_dead, read_json_file
from ...errors import EngramError, Interrupted

STATE_DIR = "resume"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_VERSION = 1


def windows_digest(windows: np.ndarray | None) -> str | None:
    """A fingerprint of token windows (resuming on a changed corpus is refused)."""
    if windows is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(windows, dtype=np.int64).tobytes()).hexdigest()[:32]


def check_same_data(state: dict, fingerprints: dict) -> None:
    """Refuse to resume on token windows other than the checkpoint's (a changed corpus)."""
    for key, what in (("windows", "training corpus"), ("heldout", "held-out corpus")):
        if state.get(key) != fingerprints[key]:
            raise EngramError(
                f"the {what} is not the one the checkpoint was trained on (its token windows "
                "changed); the run cannot resume: restore the corpus or start a new run"
            )


@dataclass
class RunOutcome:
    """What a run has come to, for :func:`interrupts_outside_the_steps`: ``result`` once the
    run returned (its last checkpoint in place)."""

    result: object = None


@contextlib.contextmanager
def interrupts_outside_the_steps(out_dir, *, resuming: bool):
    """Word a Ctrl-C that lands outside the steps: while a run is prepared (the corpus read, the
    model built) or after it finished (the table closed, the summary printed). The steps say
    their own (:func:`interrupted_message`); one sentence either way, never a bare
    "interrupted"."""
    outcome = RunOutcome()
    try:
        yield outcome
    except KeyboardInterrupt:
        if outcome.result is not None:
            message = f"interrupted; the run had finished: checkpoint {out_dir}"
        elif resuming:
            message = (
                f"interrupted before training resumed; the checkpoint in {out_dir} is unchanged: "
                f"continue with engramctl train --resume {out_dir}"
            )
        else:
            message = "interrupted before the first step: nothing was saved"
        raise Interrupted(message) from None


def interrupted_message(done: int, writer, tables: dict) -> str:
    """What a Ctrl-C leaves: the last checkpoint and how to resume, or that nothing was kept."""
    config, out = writer.config, writer.out_dir
    if writer.last_step >= config.steps:
        return f"interrupted; the run had finished: checkpoint {out}"
    if writer.last_step and config.checkpoint_every:
        return (
            f"interrupted at step {done} of {config.steps}; the checkpoint of step "
            f"{writer.last_step} is in {out}: continue with engramctl train --resume {out}"
        )
    if config.checkpoint_every:
        return (
            f"interrupted at step {done} of {config.steps}, before the first checkpoint (every "
            f"{config.checkpoint_every} steps): nothing was saved"
        )
    lost = ""
    if any(rows.wrote_rows for rows in tables.values()):  # out of core, rows written on the way
        lost = "; some trained rows reached the table, which records the run as incomplete"
    return (
        f"interrupted at step {done} of {config.steps}: nothing was saved (train "
        f"--checkpoint-every N saves a checkpoint every N steps to resume from){lost}"
    )


# --------------------------------------------------------------------------- the training state
def training_state(optimizers, tables: dict) -> dict:
    """A run's training state as nanoGPT keeps it, a dict of state_dicts: ``backbone`` (the AdamW
    state per parameter index) and, under each rows kind's ``state_key``, every layer's rows."""
    state: dict = {"backbone": backbone_state(optimizers.backbone)}
    for layer, rows in tables.items():
        state.setdefault(rows.state_key, {})[str(layer)] = rows.state_dict()
    return state


def load_training_state(optimizers, tables: dict, state: dict) -> None:
    """Put a checkpoint's training state back into the optimizers and every layer's rows."""
    restore_backbone(optimizers.backbone, state.get("backbone") or {})
    for layer, rows in tables.items():
        rows.load_state_dict(state[rows.state_key][str(layer)])


def backbone_state(optimizer) -> dict:
    """The AdamW state (per parameter index: step, exp_avg, exp_avg_sq)."""
    if optimizer is None:
        return {}
    return {str(index): dict(state) for index, state in optimizer.state_dict()["state"].items()}


def restore_backbone(optimizer, state: dict) -> None:
    if optimizer is None:
        return
    current = optimizer.state_dict()
    if len(state) != sum(len(g["params"]) for g in current["param_groups"]):
        raise EngramError("the checkpoint's optimizer state does not match the model")
    state = {int(index): dict(values) for index, values in state.items()}
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def flat_tensors(state: dict, prefix: str = "") -> dict:
    """A nested state as the flat named tensors of ``state.safetensors`` (``rows.0.ids``)."""
    import torch

    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_tensors(value, name + ".")
        elif isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu().contiguous()
        else:
            out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def nested_state(tensors: dict) -> dict:
    """The flat named tensors of ``state.safetensors`` as the nested training state."""
    state: dict = {}
    for name, value in tensors.items():
        *path, last = name.split(".")
        node = state
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return state


def write_state(tmp: Path, *, info: dict, state: dict) -> None:
    """``resume/state.safetensors`` (the training state) and ``resume/state.json`` into a
    checkpoint being written."""
    from safetensors.torch import save_file

    folder = Path(tmp) / STATE_DIR
    folder.mkdir()
    save_file(flat_tensors(state), str(folder / STATE_TENSORS))
    doc = {"format": "engramctl-train-state", "format_version": STATE_VERSION, **info}
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=1))  # history keys in run order


def read_state(path: Path) -> dict:
    """``resume/state.json`` of a checkpoint (``{}`` when it has none)."""
    file = Path(path) / STATE_DIR / STATE_JSON
    if not file.exists():
        return {}
    try:
        doc = read_json_file(file)
    except EngramError as exc:
        raise EngramError(f"{exc}; the run cannot resume from it") from None
    if not isinstance(doc, dict) or doc.get("format") != "engramctl-train-state":
        raise EngramError(f"{file} is not an engramctl training state")
    for key, kind in (("step", int), ("history", dict), ("inputs", dict)):
        if not isinstance(doc.get(key), kind):
            raise EngramError(f"{file} is damaged: {key!r} missing or not a {kind.__name__}")
    return doc


def read_training_state(path: Path) -> dict:
    """The training state of a checkpoint (``resume/state.safetensors``), nested."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / STATE_DIR / STATE_TENSORS
    try:
        return nested_state(load_file(str(file)))
    except (SafetensorError, OSError) as exc:
        raise EngramError(f"cannot read {file}: {exc}; the run cannot resume from it") from None


# --------------------------------------------------------------------------- Ctrl-C held back
@contextlib.contextmanager
def held_interrupts():
    """Hold back a first Ctrl-C until the block ends (then raise it); a second one goes through.

    A commit (rows written, checkpoint renamed) must not stop half way on a Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def on_sigint(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- finding the point
@dataclass
class ResumePoint:
    """A checkpoint to resume from: its directory, ``config.json``, state and step."""

    path: Path
    meta: dict
    state: dict
    step: int
    checkpoint: object | None = None  # its loaded Checkpoint, once loaded

    @property
    def run(self) -> dict:
        return self.state["run"]

    def training_state(self) -> dict:
        return read_training_state(self.path)


def checkpoint_candidates(out_dir: Path) -> list[tuple[Path, dict, dict]]:
    """``out_dir`` and complete temporary checkpoints beside it left by killed runs."""
    from ..checkpoint import read_checkpoint_meta

    found = []
    paths = [out_dir] if out_dir.is_dir() else []
    pattern = f".{glob_escape(out_dir.name)}.tmp-*"
    for sibling in sorted(out_dir.parent.glob(pattern)):
        pid = sibling.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and pid_is_dead(int(pid)):
            paths.append(sibling)
    for path in paths:
        try:
            meta, state = read_checkpoint_meta(path), read_state(path)
            if state and not (path / STATE_DIR / STATE_TENSORS).is_file():
                raise EngramError(f"{path} lacks {STATE_DIR}/{STATE_TENSORS}")
        except EngramError:
            if path == out_dir:
                raise
            continue  # a temporary checkpoint the kill cut short: never committed
        found.append((path, meta, state))
    return found


def checkpoint_step(meta: dict) -> int:
    result = meta.get("result") or {}
    return int(result.get("steps") or 0)


def resume_point(out_dir: Path, *, table=None) -> ResumePoint:
    """The checkpoint of ``out_dir`` to resume from, checked against the table; a commit a kill
    cut short is finished first (rows written again, renamed)."""
    out_dir = Path(out_dir)
    candidates = checkpoint_candidates(out_dir)
    if not candidates:
        raise EngramError(
            f"{out_dir} is not a checkpoint (give the --out of an engramctl train run)"
        )
    main = next((c for c in candidates if c[0] == out_dir), None)
    if main is not None and not main[2]:
        meta = main[1]
        steps = (meta.get("train") or {}).get("steps")
        if checkpoint_step(meta) >= int(steps or 0):
            raise EngramError(f"{out_dir} already finished at step {checkpoint_step(meta)}")
        raise EngramError(
            f"{out_dir} holds no training state to resume from (it was not written by "
            "train --checkpoint-every)"
        )
    usable = [c for c in candidates if c[2]]
    if table is None:  # --no-engram: the newest complete checkpoint
        path, meta, state = max(usable, key=lambda c: c[2]["step"])
        return _publish(out_dir, ResumePoint(path, meta, state, state["step"]))
    runs = table.runs
    last = runs[-1] if runs else {}
    run_id = usable[0][2]["run"]["run_id"]
    if last.get("run_id") != run_id:
        raise EngramError(
            f"the table {table.path} was trained by another run (last run "
            f"{last.get('run_id')}) after this checkpoint's run {run_id}; it cannot resume"
        )
    by_step = {c[2]["step"]: c for c in reversed(usable)}  # the directory itself first
    if not last.get("incomplete"):
        chosen = by_step.get(last.get("checkpoint_step"))
        if chosen is None or table.state != last.get("state"):
            raise EngramError(
                f"the rows of {table.path} changed after the checkpoint of step "
                f"{last.get('checkpoint_step')}; the run cannot resume bit-identically"
            )
        return _publish(out_dir, ResumePoint(chosen[0], chosen[1], chosen[2], chosen[2]["step"]))
    chosen = by_step.get(last.get("writing_step"))
    if chosen is not None and chosen[0] != out_dir:  # finish the commit the kill cut short
        state = chosen[2]
        redo_rows(table, read_training_state(chosen[0]), step=state["step"])
        table.record_run({**state["run"]})
        table.flush()
        return _publish(out_dir, ResumePoint(chosen[0], chosen[1], state, state["step"]))
    raise EngramError(
        f"the run {run_id} stopped while writing rows to {table.path} and the checkpoint it "
        "was writing is gone; the table's rows are a mix (engramctl verify shows it): restore "
        "the table from a copy or start the run again with --overwrite-rows"
    )


def _publish(out_dir: Path, point: ResumePoint) -> ResumePoint:
    """Rename a temporary checkpoint into place (a kill came between its rows and its rename)."""
    if point.path == out_dir:
        return point
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(point.path, out_dir)
    point.path = out_dir
    return point


def redo_rows(table, state: dict, *, step: int) -> None:
    """Write the rows (with their side columns) of a checkpoint's commit again, as one commit
    (idempotent). A kill cut the first attempt short at a commit boundary (commits are all or
    nothing), so there is nothing to repair, only rows to write again."""
    from .out_of_core import wants_master
    from .rows import commit_writes

    for layer, ids, values, side in commit_writes(state, master=wants_master(table)):
        if len(ids):
            table.write_rows(layer, ids, values, flush=False, side=side)
    run_id = (table.runs[-1] if table.runs else {}).get("run_id")
    made_by = {"kind": "train", "run_id": run_id, "step": step, "redo": True}
    table.commit(f"training run {run_id}, step {step} (written again)", made_by=made_by)
    table.flush()


def finish_checkpoint(out_dir: Path) -> None:
    """Drop the training state of a finished run's checkpoint (it resumes nothing)."""
    shutil.rmtree(Path(out_dir) / STATE_DIR, ignore_errors=True)
