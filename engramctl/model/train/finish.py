"""Checkpoints of a training run: the checkpoint first (temporary name), then the rows, then the
rename, so that a failure leaves the old state or the new one (issue 14, item 10).

:func:`save_run` writes the checkpoint of a run; its ``before_publish`` hook is
:func:`commit_rows`, which writes the trained rows and the run's record
(:mod:`engramctl.model.provenance`) into the table once the checkpoint is complete.
:class:`RunWriter` takes a run's checkpoints: every ``--checkpoint-every`` steps with the
training state (:mod:`engramctl.model.train.resume`), and the last one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


def commit_rows(
    table,
    tables: dict,
    run: dict,
    *,
    out_of_core: bool,
    moments=None,
    previous_step: int = 0,
    step: int | None = None,
) -> None:
    """Write the trained rows and the run's record, once the checkpoint is complete under its
    temporary name. The record says ``incomplete`` (durably) before any chunk changes and is
    replaced by the complete one (with the table's and moment store's state) after the rows, so
    a kill part way is seen as such (and the temporary checkpoint can be committed again)."""
    table.record_run(
        {**run, "incomplete": True, "checkpoint_step": previous_step, "writing_step": step}
    )
    table.flush()
    for rows in tables.values():
        if out_of_core:  # what the write buffer holds (the rest is in the table already)
            rows.flush()
        else:
            rows.write_back(table, flush=False)
    record = {**run, "checkpoint_step": step}
    if moments is not None:
        record["moments_state"] = moments.state
    table.record_run(record)
    table.flush()


def save_run(
    result,  # train.TrainResult (train imports this module)
    *,
    model,
    model_vocab,
    config,  # train.TrainConfig
    table,
    vocab,
    overwrite: bool,
    extra_meta: dict | None,
    compare: dict | None,
    base=None,
    table_pin: dict | None = None,
    before_publish=None,
    write_extra=None,
    curve: bool = True,
) -> None:
    """Write the checkpoint of a run: weights, config with options and result, history.

    A table-only adaptation copies the base checkpoint's ``model.safetensors`` byte for byte and
    records the adaptation (base model, corpus, steps, table, moment store) in ``config.json``.
    """
    from ..checkpoint import save_checkpoint

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
                "moments": result.moments,
            }
    save_checkpoint(
        result.out_dir,
        model=model,
        model_vocab=model_vocab,
        meta=meta,
        history=result.history,
        vocab=vocab if config.engram else None,
        overwrite=overwrite,
        compare=compare,
        weights_file=weights_file,
        before_publish=before_publish,
        write_extra=write_extra,
        curve=curve,
    )


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
    moments: object | None = None  # the out-of-core moment store
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
        return step % every == 0 or any(
            getattr(t, "over_budget", False) for t in self.tables.values()
        )

    def save(self, result, *, final: bool) -> None:
        """Commit a checkpoint of ``result`` (``result.steps`` steps done); Ctrl-C waits for it."""
        import time

        from ..provenance import table_pin
        from .resume import finish_checkpoint, held_interrupts, write_state

        started = time.perf_counter()
        step, keep_state = result.steps, bool(self.config.checkpoint_every)
        run = None if self.run is None else {**self.run, "checkpoint_step": step}
        info = {
            **self.info,
            "step": step,
            "history": result.history,
            "run": run,
            "out_of_core": self.config.out_of_core,
            "result": result.to_dict(),
        }
        info["result"].pop("history")
        commit = None
        if run is not None:

            def commit():
                commit_rows(
                    self.table,
                    self.tables,
                    self.run,
                    out_of_core=self.config.out_of_core,
                    moments=self.moments,
                    previous_step=self.last_step,
                    step=step,
                )

        with held_interrupts():
            save_run(
                result,
                model=self.model,
                model_vocab=self.model_vocab,
                config=self.config,
                table=self.table,
                vocab=self.vocab,
                overwrite=self.overwrite or bool(self.last_step),
                extra_meta=self.extra_meta,
                compare=self.compare,
                base=self.base,
                table_pin=table_pin(self.run, self.table) if run is not None else None,
                before_publish=commit,
                write_extra=(
                    (
                        lambda tmp: write_state(
                            tmp,
                            info=info,
                            optimizers=self.optimizers,
                            tables=self.tables,
                            out_of_core=self.config.out_of_core,
                        )
                    )
                    if keep_state
                    else None
                ),
                curve=final,
            )
            self.last_step = step
            if final:
                finish_checkpoint(self.out_dir)
        if not final:
            self.seconds_spent += time.perf_counter() - started
            self.checkpoints += 1

    def resumed(self, step: int) -> RunWriter:
        return replace(self, last_step=step, overwrite=True)
