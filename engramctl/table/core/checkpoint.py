"""Reading a model checkpoint's Engram tables: config, shard index, strict safetensors headers.

A checkpoint directory holds ``config.json`` (the ``engram_*`` keys, see
:func:`engramctl.layout.read_model_config`) and either ``model.safetensors.index.json`` (a
``weight_map`` from tensor name to shard file) with its shards, or one ``model.safetensors``.
Each Engram layer ``L`` has ``layers.L.engram.embed.weight`` (F8_E4M3 ``[rows, dim]``) and
``layers.L.engram.embed.scale`` (F8_E8M0 ``[rows, dim / 32]``), with or without a leading
``model.``. Nothing here reads tensor data: each shard's header passes the strict validator of
:mod:`engramctl.table.core.st_header`, then the Engram tensors' dtypes and shapes are checked
against the config, and :meth:`Checkpoint.engram_tensors` returns where each table's bytes lie, for
a streamed copy or a zero-copy link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..._files import read_json_file
from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ...model_config import CONFIG_NAME, EngramModelConfig, read_model_config
from .dtypes import FP8_SCALE_BLOCK
from .st_header import SafetensorsHeader, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_NAME = "layers.{layer}.engram.embed.weight"
SCALE_NAME = "layers.{layer}.engram.embed.scale"
NAME_PREFIXES = ("", "model.")
WEIGHT_DTYPE, SCALE_DTYPE = "F8_E4M3", "F8_E8M0"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes lie: ``[offset, offset + nbytes)`` of ``path``."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    file_size: int
    header_sha256: str


def read_shard_header(path) -> SafetensorsHeader:
    """Read and strictly validate a shard's safetensors header (no tensor data is read).

    The one validator of :mod:`engramctl.table.core.st_header` (integer offsets, known dtypes, byte
    sizes, no overlap or hole, ``__metadata__`` strings, nesting): a checkpoint shard and a
    single ``.safetensors`` import obey the same rules. What is particular to a checkpoint
    (Engram dtypes, shapes against the config) is checked by :meth:`Checkpoint.engram_tensors`.
    """
    return read_header(path)


def header_sha256(path) -> str:
    """sha256 of a safetensors file's length bytes and header (what a link records)."""
    return read_shard_header(path).header_sha256


def name_prefixes(names, limit: int = 12) -> list[str]:
    """Distinct tensor name shapes, numbers as ``*`` and cut after 3 parts (for messages).

    >>> name_prefixes(["model.layers.0.attn.wq", "model.layers.1.attn.wq", "lm_head.weight"])
    ['lm_head.weight', 'model.layers.*']
    """
    shapes = {".".join(re.sub(r"^\d+$", "*", p) for p in n.split(".")[:3]) for n in names}
    return sorted(shapes)[:limit]


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its config and which shard holds each tensor."""

    path: Path
    config: EngramModelConfig
    weight_map: dict[str, str]  # tensor name -> shard file name (relative to path)
    remote: object = None  # a checkpoint at a URL: ``location(name)`` and ``header(name)``

    def find(self, name: str) -> str | None:
        """The checkpoint's spelling of ``name`` (with or without ``model.``), or ``None``."""
        for prefix in NAME_PREFIXES:
            if prefix + name in self.weight_map:
                return prefix + name
        return None

    def tensor(self, name: str, headers: dict) -> TensorRef:
        """Locate a tensor (its shard's header read once into ``headers``)."""
        if self.remote is not None:
            shard = self.remote.location(self.weight_map[name])
            if shard not in headers:
                headers[shard] = self.remote.header(self.weight_map[name])
        else:
            shard = self.path / self.weight_map[name]
        if shard not in headers:
            if not shard.is_file():
                raise EngramError(
                    f"{self.path / INDEX_NAME} names shard {self.weight_map[name]} for {name!r}, "
                    f"but {shard} is missing"
                )
            headers[shard] = read_shard_header(shard)
        header = headers[shard]
        entry = header.tensors.get(name)
        if entry is None:
            raise EngramError(f"{shard} has no tensor {name!r} although the index says so")
        begin, end = entry["data_offsets"]
        return TensorRef(
            name,
            shard,
            entry["dtype"],
            tuple(entry["shape"]),
            header.data_start + begin,
            end - begin,
            header.size,
            header.header_sha256,
        )

    def engram_tensors(
        self, layout: EngramLayout, layers=None
    ) -> dict[int, tuple[TensorRef, TensorRef]]:
        """``{layer: (weight, scale)}`` of the Engram layers, dtypes and shapes checked."""
        layers = tuple(layout.layers if layers is None else layers)
        dim = self.config.head_dim
        found = {}
        headers: dict = {}
        for layer_id in layers:
            weight_name = self.find(WEIGHT_NAME.format(layer=layer_id))
            if weight_name is None:
                if not any(".engram.embed." in n for n in self.weight_map):
                    raise EngramError(
                        f"{self.path} holds no Engram tensors (no *.engram.embed.weight); its "
                        f"tensors are named {', '.join(name_prefixes(self.weight_map))}"
                    )
                raise EngramError(
                    f"{self.path} has no tensor {WEIGHT_NAME.format(layer=layer_id)} (Engram "
                    f"layer {layer_id} of the config)"
                )
            scale_name = self.find(SCALE_NAME.format(layer=layer_id))
            if scale_name is None:
                raise EngramError(
                    f"{self.path} has {weight_name} but no scale tensor "
                    f"{SCALE_NAME.format(layer=layer_id)}; fp8 rows need their ue8m0 scales"
                )
            weight = self.tensor(weight_name, headers)
            scale = self.tensor(scale_name, headers)
            rows = layout.layer_rows(layer_id)
            for ref, dtype, shape in (
                (weight, WEIGHT_DTYPE, (rows, dim)),
                (scale, SCALE_DTYPE, (rows, dim // FP8_SCALE_BLOCK)),
            ):
                if ref.dtype != dtype:
                    raise EngramError(
                        f"{ref.path}: {ref.name} has dtype {ref.dtype}, expected {dtype}"
                    )
                if ref.shape != shape:
                    raise EngramError(
                        f"{ref.path}: {ref.name} has shape {list(ref.shape)}, but the config "
                        f"gives {list(shape)} (rows = the sum of layer {layer_id}'s primes)"
                    )
            found[layer_id] = (weight, scale)
        return found


def is_checkpoint_dir(path) -> bool:
    """Whether ``path`` is a directory (a checkpoint to import), not a safetensors file."""
    return Path(path).is_dir()


def open_checkpoint(path) -> Checkpoint:
    """Open a checkpoint directory: its config and its tensor -> shard map (headers unread)."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a checkpoint directory")
    if not (path / CONFIG_NAME).is_file():
        raise UsageError(f"{path} has no {CONFIG_NAME}; a checkpoint directory needs one")
    config = read_model_config(path / CONFIG_NAME)
    index = path / INDEX_NAME
    if index.is_file():
        doc = read_json_file(index)
        try:
            weight_map = {str(k): str(v) for k, v in doc["weight_map"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngramError(f"{index} is not a safetensors index ({exc!r})") from None
        for name, shard in weight_map.items():
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise EngramError(f"{index}: shard {shard!r} of {name!r} is outside the directory")
    elif (path / SINGLE_NAME).is_file():
        header = read_shard_header(path / SINGLE_NAME)
        weight_map = dict.fromkeys(header.tensors, SINGLE_NAME)
    else:
        raise EngramError(f"{path} has neither {INDEX_NAME} nor {SINGLE_NAME}")
    return Checkpoint(path, config, weight_map)


__all__ = [
    "Checkpoint",
    "TensorRef",
    "open_checkpoint",
    "read_shard_header",
    "header_sha256",
    "is_checkpoint_dir",
    "WEIGHT_NAME",
    "SCALE_NAME",
    "INDEX_NAME",
]
