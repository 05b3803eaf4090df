"""Checking a checkpoint's ``config.json`` before a model is built from it.

A hostile or damaged ``config.json`` must end in one sentence, not a ``TypeError`` deep in torch or
gigabytes allocated for a width nobody trained. :func:`check_checkpoint_meta` checks the JSON
types of every field the loader reads (the model's fields by their dataclass types, the layout,
the vocab fingerprint, the tokenizer record); :func:`check_weights_match` then compares every
parameter shape the config implies (computed on torch's ``meta`` device: nothing is allocated)
with the tensor shapes in the safetensors header, before any tensor is read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import EngramError

MAX_MODEL_INT = 2**31 - 1  # no model field (width, depth, vocab, positions) is larger
MAX_BRANCHES = 64  # hc_mult: modules per branch are built before any weight is compared


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _damaged(path: Path, what: str) -> EngramError:
    return EngramError(f"{path} is damaged: {what}; retrain or restore the checkpoint")


def check_model_fields(data, path: Path) -> None:
    """Types and ranges of ``config.json``'s ``model`` object (by :class:`ModelConfig`'s fields)."""
    from .transformer import ModelConfig

    if not isinstance(data, dict):
        raise _damaged(path, f'"model" is a {type(data).__name__}, not an object')
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _damaged(path, f'"model" has unknown fields {unknown}')
    for name, field in fields.items():
        if name not in data:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise _damaged(path, f'"model" lacks {name!r}')
            continue
        value = data[name]
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = 0  # the required fields are ints (vocab_size)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value) and 0 <= value <= MAX_MODEL_INT
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(
                _is_int(v) and 0 <= v <= MAX_MODEL_INT for v in value
            )
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise _damaged(path, f'"model" field {name!r} has the wrong type or range: {value!r}')


def check_checkpoint_meta(meta, path: Path) -> None:
    """The JSON types of everything the loader reads from ``config.json``."""
    if not isinstance(meta, dict):
        raise _damaged(path, "it is not a JSON object")
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise _damaged(path, f"format_version is {version!r}, not an integer")
    check_model_fields(meta.get("model"), path)
    layout = meta.get("layout")
    if layout is not None:
        from ..layout import EngramLayout

        if not isinstance(layout, dict):
            raise _damaged(path, '"layout" is not an object')
        try:
            EngramLayout.from_dict(layout)
        except (EngramError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise _damaged(path, f'"layout" is invalid ({exc})') from None
        if not isinstance(meta.get("vocab_fingerprint"), str):
            raise _damaged(path, '"vocab_fingerprint" is missing or not a string')
    tokenizer = meta.get("tokenizer", {})
    if not isinstance(tokenizer, dict) or not all(
        isinstance(tokenizer.get(k), str | None) for k in ("name", "sha256")
    ):
        raise _damaged(path, '"tokenizer" must be an object with string "name" and "sha256"')


def check_weights_match(config, weights: Path) -> None:
    """Refuse a config whose parameter shapes differ from ``weights``' safetensors header.

    The model is laid out on the ``meta`` device (no memory), so an absurd width fails here, in
    one line, instead of allocating gigabytes first.
    """
    import torch

    from ..table.core.st_header import read_header
    from .transformer import EngramLM

    header = read_header(weights)
    blocks = {name.split(".")[1] for name in header.tensors if name.startswith("blocks.")}
    if len(blocks) != config.n_layer or config.hc_mult > MAX_BRANCHES:
        raise EngramError(
            f"{weights} does not match config.json: {len(blocks)} blocks in the weights, "
            f"{config.n_layer} by the config (hc_mult {config.hc_mult})"
        )
    embedding = header.tensors.get("wte.weight", {}).get("shape")
    if embedding != [config.vocab_size, config.n_embd]:
        raise EngramError(
            f"{weights} does not match config.json: the token embedding is {embedding} in the "
            f"weights but {[config.vocab_size, config.n_embd]} by the config"
        )
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in EngramLM(config).state_dict().items()}
    for name, shape in expected.items():
        entry = header.tensors.get(name)
        if entry is None:
            raise EngramError(
                f"{weights} does not match config.json: it lacks tensor {name!r} {shape}"
            )
        if entry["shape"] != shape:
            raise EngramError(
                f"{weights} does not match config.json: {name!r} is {entry['shape']} in the "
                f"weights but {shape} by the config"
            )


__all__ = ["check_checkpoint_meta", "check_model_fields", "check_weights_match"]
