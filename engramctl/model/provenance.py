"""Which training run wrote a table's rows, and whether a checkpoint still matches its table.

A run that writes rows appends a record to the table's commits log (``runs``: run id, checkpoint,
time, steps, mode, and ``state``, the checksum of the rows it left; see
:meth:`engramctl.table.sources.table.Table.record_run`) in the same rename as the commit of its
rows. Its checkpoint pins that run (``table_state`` in ``config.json``: table path and run id).

- ``train`` on a table that an earlier run trained would change that model's rows: it is refused
  unless the user says ``--continue`` (train on from those rows) or ``--overwrite-rows``, or the
  run starts from the checkpoint that trained the table (``--init-from`` that model).
- ``eval`` compares the checkpoint's pin with the table: when the table's last run is another one,
  or its rows changed after that run, it warns (``--strict-table``: refuses).
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

from ..errors import EngramError, UsageError

PRIOR_RUN_POLICIES = ("refuse", "continue", "overwrite")


def check_prior_runs(table, policy: str = "refuse", *, base_meta: dict | None = None) -> None:
    """Refuse to train rows another run trained, unless ``policy`` says how (or ``base_meta``,
    the ``config.json`` of ``--init-from``, is the checkpoint of the table's last run)."""
    if policy not in PRIOR_RUN_POLICIES:
        raise UsageError(f"prior-run policy must be one of {PRIOR_RUN_POLICIES}, got {policy!r}")
    runs = table.runs
    if not runs or policy != "refuse":
        return
    last = runs[-1]
    pin = (base_meta or {}).get("table_state") or {}
    if pin.get("run_id") == last.get("run_id"):
        return  # starting from the model that trained these rows
    step, steps = last.get("checkpoint_step"), last.get("steps")
    if isinstance(step, int) and isinstance(steps, int) and step < steps:
        raise EngramError(
            f"{table.path} holds rows of run {last.get('run_id')}, which stopped at step {step} "
            f"of {steps}: continue it with engramctl train --resume {last.get('checkpoint')}, "
            "or pass --continue / --overwrite-rows to start another run on these rows"
        )
    raise EngramError(
        f"{table.path} holds rows trained by run {last.get('run_id')} (checkpoint "
        f"{last.get('checkpoint')}; {len(runs)} run(s) in all): training would change that "
        "model's rows. Pass --continue to train on from them, or --overwrite-rows to replace "
        "them knowingly (or train a copy of the table)"
    )


def new_run(out_dir: Path, *, steps: int, policy: str) -> dict:
    """The record of a run about to write rows (its state is added when it is recorded)."""
    return {
        "run_id": uuid.uuid4().hex[:16],
        "checkpoint": str(Path(out_dir).resolve()),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": steps,
        "mode": {"refuse": "new", "continue": "continue", "overwrite": "overwrite-rows"}[policy],
    }


def table_pin(run: dict, table) -> dict:
    """What a checkpoint records of its table: where it was and which run wrote its rows."""
    return {"path": str(table.path), "run_id": run["run_id"]}


def table_mismatch(meta: dict, table) -> str | None:
    """Why ``table`` no longer holds the rows the checkpoint (``config.json`` ``meta``) was
    trained with, or ``None`` (also for checkpoints older than the pins)."""
    pin = meta.get("table_state")
    if not pin:
        return None
    runs = table.runs
    last = runs[-1] if runs else {}
    if last.get("run_id") != pin.get("run_id"):
        ours = next((r for r in runs if r.get("run_id") == pin.get("run_id")), None)
        if ours is None:
            return (
                f"the table {table.path} holds no rows of this checkpoint's run "
                f"{pin.get('run_id')} (its last run is {last.get('run_id')})"
            )
        return (
            f"the table {table.path} was trained again after this checkpoint (run "
            f"{last.get('run_id')}, checkpoint {last.get('checkpoint')})"
        )
    if last.get("incomplete"):
        return f"the run {last.get('run_id')} that wrote the table's rows did not finish"
    if table.state != last.get("state"):
        return f"the rows of {table.path} changed after this checkpoint's run wrote them"
    return None


def check_table_pin(meta: dict, table, *, strict: bool) -> str | None:
    """:func:`table_mismatch` as a warning to show, or an error when ``strict``."""
    problem = table_mismatch(meta, table)
    if problem is not None and strict:
        raise EngramError(f"{problem}; pass the table the model was trained with")
    return problem


def checkpoint_table_problem(model_dir: Path, table, *, strict: bool = False) -> str | None:
    """:func:`check_table_pin` for the checkpoint directory ``model_dir``."""
    from .checkpoint import read_checkpoint_meta

    return check_table_pin(read_checkpoint_meta(Path(model_dir)), table, strict=strict)
