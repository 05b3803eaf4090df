"""The end of a training run: the checkpoint first (temporary name), then the rows, then the
rename, so that a failure leaves the old state or the new one (issue 14, item 10).

:func:`save_run` writes the checkpoint of a run; its ``before_publish`` hook is
:func:`commit_rows`, which writes the trained rows and the run's record
(:mod:`engramctl.model.provenance`) into the table once the checkpoint is complete.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


def commit_rows(table, tables: dict, run: dict, *, out_of_core: bool) -> None:
    """Write the trained rows and the run's record (one manifest write), once the checkpoint
    is complete under its temporary name. A failure part way records the run as incomplete
    (the table's close writes the manifest of what was written), so no checkpoint matches it."""
    try:
        if not out_of_core:  # out-of-core rows are in the table already
            for rows in tables.values():
                rows.write_back(table, flush=False)
    except BaseException:
        table.record_run({**run, "incomplete": True})
        raise
    table.record_run(run)
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
) -> None:
    """Write the checkpoint of a run: weights, config with options and result, history.

    A table-only adaptation copies the base checkpoint's ``model.safetensors`` byte for byte and
    records the adaptation (base model, corpus, steps, table, moment store) in ``config.json``.
    """
    from .checkpoint import save_checkpoint

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
    )
