"""Streaming a table to safetensors, one chunk at a time (bounded memory), and the format's
names and dtypes (shared with the import, :mod:`engramctl.table.formats.safetensors_import`).

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
offsets relative to the end of the header) and the raw little-endian tensor bytes. We write the
header ourselves so row blocks can be streamed straight from the chunks.

Tensors per layer ``L``: ``layer_<L>`` ``[rows, dim]`` in F32, F16, BF16 or F8_E4M3; fp8 tables
add ``layer_<L>.scales`` ``[rows, dim / 32]`` U8 (ue8m0 exponents: scale ``2**(s - 127)``),
since safetensors has no dtype for a value-plus-scale row. Round trips are bit-for-bit.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._files import atomic_write, check_free_space
from ..._outputs import check_output_target
from ..._system import format_bytes
from ...errors import UsageError
from ..core.dtypes import storage_dtype
from ..core.fp8 import FP8_SCALE_BLOCK
from ..core.st_header import read_header
from ..sources.table import open_table

SAFETENSORS_DTYPE = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
}
DTYPE_OF_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPE.items()}
DEFAULT_NAME = "layer_{layer}"
SCALES_SUFFIX = ".scales"


@dataclass(frozen=True)
class ExportResult:
    path: str
    tensors: dict[str, list[int]]  # name -> shape
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict:
        """The ``export --json`` document."""
        return {
            "out": self.path,
            "tensors": self.tensors,
            "bytes": self.bytes_written,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """What was written, in one line: ``"2 tensors, 1.5 MiB in 0.1s"``."""
        return (
            f"{len(self.tensors)} tensors, {format_bytes(self.bytes_written)} in "
            f"{self.seconds:.1f}s"
        )


def layer_tensor_names(name_template: str, layer_ids) -> dict[int, str]:
    """The safetensors tensor name of each layer from ``--tensor-name``; raises
    :class:`UsageError` on a template that does not format or names two layers alike."""
    try:
        names = {layer_id: name_template.format(layer=layer_id) for layer_id in layer_ids}
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"--tensor-name {name_template!r} is not a valid template ({type(exc).__name__}: "
            f"{exc}); use {{layer}} for the layer id, e.g. {DEFAULT_NAME!r}"
        ) from None
    if len(set(names.values())) != len(names):
        raise UsageError(
            f"--tensor-name {name_template!r} gives every layer the same name; include a "
            f"{{layer}} placeholder, e.g. {DEFAULT_NAME!r}"
        )
    return names


def _tensor_plan(meta, name_template: str) -> list[tuple[str, int, str, list[int], int]]:
    """``(name, layer, part, shape, nbytes)`` of every tensor, in file order."""
    plan = []
    names = layer_tensor_names(name_template, meta.layers)
    for layer_id, layer in meta.layers.items():
        name = names[layer_id]
        itemsize = storage_dtype(meta.dtype).itemsize
        plan.append(
            (name, layer_id, "values", [layer.rows, meta.dim], layer.rows * meta.dim * itemsize)
        )
        if meta.dtype == "float8_e4m3fn":
            width = meta.dim // FP8_SCALE_BLOCK
            plan.append(
                (name + SCALES_SUFFIX, layer_id, "scales", [layer.rows, width], layer.rows * width)
            )
    return plan


def export_safetensors(
    table_path,
    out_path,
    *,
    overwrite: bool = False,
    name_template: str = DEFAULT_NAME,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
    commits_dir=None,
) -> ExportResult:
    """Write a table to one safetensors file, streaming chunk by chunk.

    Unwritten (lazy) chunks are exported as their init values. ``progress(done, total)`` gets
    bytes. The file is written under a temporary name and renamed into place.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    check_output_target(out_path, overwrite=overwrite)  # before the pass, not after
    table = open_table(table_path, storage_options=storage_options, commits_dir=commits_dir)
    meta = table.meta
    plan = _tensor_plan(meta, name_template)
    header: dict = {
        "__metadata__": {
            "format": "engramctl-table-export",
            "engramctl_table": json.dumps(meta.to_dict()),
            "vocab_fingerprint": meta.vocab_fingerprint,
            "dtype": meta.dtype,
        }
    }
    offset = 0
    for name, _layer, _part, shape, nbytes in plan:
        dtype = "U8" if name.endswith(SCALES_SUFFIX) else SAFETENSORS_DTYPE[meta.dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # pad so the data starts 8-byte aligned
    total = offset
    check_free_space(out_path.parent, 8 + len(blob) + total)
    done = 0
    with atomic_write(out_path) as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for _name, layer_id, part, _shape, _nbytes in plan:
            for c in range(meta.layers[layer_id].n_chunks(meta.chunk_rows)):
                start, stop = meta.chunk_span(layer_id, c)
                rows = table.read_chunk(layer_id, c)[: stop - start]
                if meta.dtype == "float8_e4m3fn":
                    rows = rows[:, : meta.dim] if part == "values" else rows[:, meta.dim :]
                data = np.ascontiguousarray(rows)
                handle.write(memoryview(data).cast("B"))
                done += data.nbytes
                if progress:
                    progress(done, total)
    table.close()
    tensors = {name: shape for name, _l, _p, shape, _n in plan}
    return ExportResult(
        str(out_path), tensors, 8 + len(blob) + total, time.perf_counter() - started
    )


# ------------------------------------------------------------------------------ read
def read_safetensors_header(path: Path) -> tuple[dict, dict, int]:
    """``(tensors, metadata, data_start)`` of a safetensors file, strictly validated
    (:func:`engramctl.table.core.st_header.read_header`)."""
    header = read_header(path)
    return header.tensors, header.metadata, header.data_start
