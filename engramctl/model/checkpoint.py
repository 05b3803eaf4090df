"""Model checkpoints: a directory with ``config.json``, ``model.safetensors`` and the vocab.

- ``config.json``: the :class:`ModelConfig`, the training options and result, the table layout
  and canonical-vocab fingerprint the model was trained with (plain JSON).
- ``model.safetensors``: the backbone weights plus ``model_vocab.raw_ids`` (the token ids the
  output vocabulary covers). Never a pickle; the Engram rows live in the zarr table.
- ``vocab.parquet``: the canonical vocab (Engram models only), so eval needs no ``--vocab``.
- ``history.json`` and ``loss_curve.png``: the losses of the run.

The directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_directory, read_json_file
from ..errors import EngramError, UsageError
from .config_check import check_checkpoint_meta, check_weights_match

CHECKPOINT_FORMAT = "engramctl-model"
CHECKPOINT_VERSION = 1
REQUIRED_FILES = ("config.json", "model.safetensors")
RAW_IDS_KEY = "model_vocab.raw_ids"
OUTPUT_IDS_KEY = "model_vocab.output_ids"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its vocabularies and metadata."""

    model: object  # EngramLM
    model_vocab: object  # lm_data.ModelVocab
    meta: dict  # config.json contents
    vocab: object | None  # CanonicalVocab (Engram models)
    path: Path

    @property
    def layout(self):
        from ..layout import EngramLayout

        layout = self.meta.get("layout")
        return EngramLayout.from_dict(layout) if layout else None


def save_checkpoint(
    out_dir: Path,
    *,
    model,
    model_vocab,
    meta: dict,
    history: dict,
    vocab=None,
    overwrite: bool = False,
    compare: dict | None = None,
    weights_file: Path | None = None,
    curve: bool = True,
) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, then rename).

    ``weights_file``: copy this ``model.safetensors`` byte for byte instead of serializing the
    model (a table-only adaptation, whose weights are the base's); ``curve=False`` skips the
    loss-curve PNG. A training run writes more into the temporary directory before the rename:
    it uses :func:`checkpoint_directory` and :func:`write_checkpoint` itself.
    """
    with checkpoint_directory(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint(
            tmp,
            model=model,
            model_vocab=model_vocab,
            meta=meta,
            history=history,
            vocab=vocab,
            compare=compare,
            weights_file=weights_file,
            curve=curve,
            title=Path(out_dir).name,
        )
    return Path(out_dir)


@contextlib.contextmanager
def checkpoint_directory(out_dir: Path, *, overwrite: bool):
    """Yield the (created, empty) temporary directory of checkpoint ``out_dir``; when the block
    succeeds it is renamed into place (an existing checkpoint replaced if ``overwrite``)."""
    out_dir = Path(out_dir)
    check_checkpoint_target(out_dir, overwrite=overwrite)
    with atomic_directory(out_dir, replace=True) as tmp:
        tmp.mkdir(parents=True)
        yield tmp


def write_checkpoint(
    tmp: Path,
    *,
    model,
    model_vocab,
    meta: dict,
    history: dict,
    vocab=None,
    compare: dict | None = None,
    weights_file: Path | None = None,
    curve: bool = True,
    title: str = "",
) -> None:
    """The files of a checkpoint into directory ``tmp`` (see :func:`save_checkpoint`)."""
    import torch
    from safetensors.torch import save_file

    from .curves import save_loss_curve

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[RAW_IDS_KEY] = torch.from_numpy(np.asarray(model_vocab.raw_ids, dtype=np.int64))
    tensors[OUTPUT_IDS_KEY] = torch.from_numpy(np.asarray(model_vocab.output_ids, dtype=np.int64))
    if weights_file is not None:
        shutil.copyfile(weights_file, tmp / "model.safetensors")
    else:
        save_file(tensors, str(tmp / "model.safetensors"))
    doc = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": model.config.to_dict(),
        **meta,
    }
    (tmp / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    (tmp / "history.json").write_text(json.dumps(history))
    if vocab is not None:
        vocab.save(tmp / "vocab.parquet")
    if curve:
        save_loss_curve(history, tmp / "loss_curve.png", title=title, runs=compare)


def check_checkpoint_target(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse an existing output directory unless ``overwrite``; the parent must exist."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise EngramError(f"{out_dir} exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise EngramError(
            f"{out_dir} is a file, not a checkpoint directory; refusing to replace it"
        )
    if out_dir.exists() and not (out_dir / "config.json").exists() and any(out_dir.iterdir()):
        raise EngramError(f"{out_dir} is a non-empty directory that is not a checkpoint; refusing")
    if not out_dir.parent.exists():
        raise EngramError(f"directory {out_dir.parent} does not exist; create it first")


def read_checkpoint_meta(path: Path) -> dict:
    """``config.json`` of a checkpoint, checking that its files are all there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EngramError(
            f"{path} is a file, not a model directory (give the --out of engramctl train)"
        )
    if not path.is_dir():
        raise EngramError(f"model directory not found: {path} (give the --out of engramctl train)")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    if missing:
        raise EngramError(f"{path} is not a complete checkpoint: missing {', '.join(missing)}")
    meta = read_json_file(path / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise EngramError(f"{path} is not an engramctl model checkpoint")
    check_checkpoint_meta(meta, path / "config.json")
    if meta.get("format_version", 0) > CHECKPOINT_VERSION:
        raise EngramError(
            f"{path} has checkpoint format {meta['format_version']}; this engramctl reads up to "
            f"{CHECKPOINT_VERSION}: upgrade engramctl"
        )
    if meta.get("layout") and not (path / "vocab.parquet").exists():
        raise EngramError(f"{path} is not a complete checkpoint: missing vocab.parquet")
    return meta


def load_checkpoint(path: Path, *, device="cpu") -> Checkpoint:
    """Load a checkpoint directory (safetensors only, never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .data import ModelVocab
    from .transformer import EngramLM, ModelConfig

    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except UsageError as exc:  # a checkpoint's config is not the user's flags
        raise EngramError(f"{path / 'config.json'} is damaged: {exc}") from None
    check_weights_match(config, path / "model.safetensors")
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise EngramError(f"cannot read {path / 'model.safetensors'}: {exc}") from None
    if RAW_IDS_KEY not in tensors or OUTPUT_IDS_KEY not in tensors:
        raise EngramError(
            f"{path / 'model.safetensors'} lacks the model vocab; not an engramctl model"
        )
    model_vocab = ModelVocab(tensors.pop(RAW_IDS_KEY).numpy(), tensors.pop(OUTPUT_IDS_KEY).numpy())
    if (model_vocab.size, len(model_vocab.output_ids) + 1) != (
        config.vocab_size,
        config.output_vocab_size,
    ):
        raise EngramError(
            f"{path / 'model.safetensors'} does not match config.json: its model vocab has "
            f"{model_vocab.size} input and {len(model_vocab.output_ids) + 1} output ids, the "
            f"config {config.vocab_size} and {config.output_vocab_size}"
        )
    model = EngramLM(config)
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EngramError(
            f"{path / 'model.safetensors'} does not match config.json (missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.to(device).eval()
    vocab = None
    if meta.get("layout"):
        from ..vocab import CanonicalVocab

        vocab = CanonicalVocab.load(path / "vocab.parquet")
    return Checkpoint(model=model, model_vocab=model_vocab, meta=meta, vocab=vocab, path=path)
