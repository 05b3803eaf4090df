"""Checkpoints of a training run: the checkpoint first (temporary name), then the rows, then the
rename, so that a failure leaves the old state or the new one (issue 14, item 10).

:meth:`RunWriter.save` is the run's save step, three plain calls in that order inside the
checkpoint's temporary directory: the checkpoint files (:func:`checkpoint_meta` says what its
``config.json`` holds) with, for ``--checkpoint-every``, the training state (a dict of
state_dicts, :mod:`engramctl.model.train.resume`); :func:`commit_rows`, which commits every
layer's trained rows to the table with the run's record (:mod:`engramctl.model.provenance`);
then the rename. :class:`RunWriter` takes a run's checkpoints: every ``--checkpoint-every``
steps, and the last one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


def commit_rows(table, tables: dict, run: dict, *, previous_step: int = 0, step: int | None = None):
    """Commit the trained rows of every layer and the run's record, once the checkpoint is
    complete under its temporary name. Every layer's rows (out of core with their moments and
    master copies as side columns) are staged (``rows.commit(table)``) and made ONE commit of
    the table, named in ``history`` by the run and its step. The record says ``incomplete``
    (durably) before the commit and is replaced by the complete one (with the table's state)
    after it, so a kill between the two is seen as such (and the temporary checkpoint's rows
    are committed again)."""
    table.record_run(
        {**run, "incomplete": True, "checkpoint_step": previous_step, "writing_step": step}
    )
    table.flush()
    commit_trained_rows(table, tables, run, step=step)
    table.record_run({**run, "checkpoint_step": step})
    table.flush()


def commit_trained_rows(table, tables: dict, run: dict, *, step: int | None) -> None:
    """Every layer's trained rows (``rows.commit(table)`` stages them) as ONE commit of the
    table, named in ``history`` by the run and its step; each layer is told its share of the
    commit's time (``rows.committed``)."""
    import time

    for rows in tables.values():
        rows.commit(table)
    started = time.perf_counter()
    made_by = {"kind": "train", "run_id": run.get("run_id"), "step": step}
    if table.commit(f"training run {run.get('run_id')}, step {step}", made_by=made_by):
        share = (time.perf_counter() - started) / max(1, len(tables))
        for rows in tables.values():
            rows.committed(share)


def checkpoint_meta(
    result,  # loop.TrainResult
    *,
    config,  # loop.TrainConfig
    table,
    vocab,
    extra_meta: dict | None,
    base=None,
    table_pin: dict | None = None,
) -> tuple[dict, Path | None]:
    """What a run's ``config.json`` holds beyond the model (options, result, layout, ...), and
    the weights file to copy instead of serializing the model (``None`` but for a table-only
    adaptation, which copies the base checkpoint's ``model.safetensors`` byte for byte and
    records the adaptation: base model, corpus, steps, table)."""
    layout = table.layout if config.engram else None
    meta = {
        "train": asdict(config),
        "result": {k: v for k, v in result.to_dict().items() if k != "history"},
        "layout": layout.to_dict() if layout is not None else None,
        "vocab_fingerprint": vocab.fingerprint if (vocab is not None and config.engram) else None,
        **(extra_meta or {}),
    }
    if table_pin is not None:
        meta["table_state"] = table_pin
    weights_file = None
    if base is not None:
        meta["init_from"] = {
            "model": str(base.path),
            "train": base.meta.get("train"),
            "corpus": base.meta.get("corpus"),
            "result": base.meta.get("result"),
        }
        if config.freeze_backbone:
            weights_file = Path(base.path) / "model.safetensors"
            meta["adaptation"] = {
                "kind": "table-only",
                "base_model": str(base.path),
                "corpus": (extra_meta or {}).get("corpus"),
                "steps": config.steps,
                "table": str(table.path),
            }
    return meta, weights_file


@dataclass
class RunWriter:
    """Takes the checkpoints of one run (see :mod:`engramctl.model.train.resume` for their
    state)."""

    out_dir: Path
    model: object
    model_vocab: object
    config: object  # train.TrainConfig
    table: object | None
    vocab: object | None
    optimizers: object
    tables: dict
    run: dict | None
    base: object | None = None
    overwrite: bool = False
    extra_meta: dict | None = None
    compare: dict | None = None
    info: dict = field(default_factory=dict)  # inputs and fingerprints for state.json
    last_step: int = 0  # step of the last committed checkpoint
    seconds_spent: float = 0.0  # periodic checkpoints' time in this process
    checkpoints: int = 0  # periodic checkpoints committed by this process

    def due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due after ``step`` steps (every N, or when an
        out-of-core write buffer holds more than its budget)."""
        every = self.config.checkpoint_every
        if not every or step >= self.config.steps:
            return False
        return step % every == 0 or any(rows.over_budget for rows in self.tables.values())

    def save(self, result, *, final: bool) -> None:
        """The save step: commit a checkpoint of ``result`` (``result.steps`` steps done) in the
        order checkpoint, rows, rename; Ctrl-C waits for it."""
        import time

        from ..checkpoint import checkpoint_directory, write_checkpoint
        from ..provenance import table_pin
        from .resume import finish_checkpoint, held_interrupts, training_state, write_state

        started = time.perf_counter()
        step = result.steps
        meta, weights_file = checkpoint_meta(
            result,
            config=self.config,
            table=self.table,
            vocab=self.vocab,
            extra_meta=self.extra_meta,
            base=self.base,
            table_pin=table_pin(self.run, self.table) if self.run is not None else None,
        )
        overwrite = self.overwrite or bool(self.last_step)
        with held_interrupts():
            with checkpoint_directory(self.out_dir, overwrite=overwrite) as tmp:
                write_checkpoint(  # 1. the checkpoint, under its temporary name
                    tmp,
                    model=self.model,
                    model_vocab=self.model_vocab,
                    meta=meta,
                    history=result.history,
                    vocab=self.vocab if self.config.engram else None,
                    compare=self.compare,
                    weights_file=weights_file,
                    curve=final,
                    title=self.out_dir.name,
                )
                if self.config.checkpoint_every:  # with the state to resume from
                    state = training_state(self.optimizers, self.tables)
                    write_state(tmp, info=self.state_info(result), state=state)
                if self.run is not None:  # 2. the rows, into the table
                    commit_rows(
                        self.table,
                        self.tables,
                        self.run,
                        previous_step=self.last_step,
                        step=step,
                    )
            # 3. renamed into place (leaving the block)
            self.last_step = step
            if final:
                finish_checkpoint(self.out_dir)
        if not final:
            self.seconds_spent += time.perf_counter() - started
            self.checkpoints += 1

    def state_info(self, result) -> dict:
        """``resume/state.json``: step, history, run record, inputs, fingerprints, result."""
        run = None if self.run is None else {**self.run, "checkpoint_step": result.steps}
        info = {
            **self.info,
            "step": result.steps,
            "history": result.history,
            "run": run,
            "out_of_core": self.config.out_of_core,
            "result": result.to_dict(),
        }
        info["result"].pop("history")
        return info

    def resumed(self, step: int) -> RunWriter:
        return replace(self, last_step=step, overwrite=True)
