"""Exporting a table as a DeepSeek checkpoint: sharded safetensors, an index and a config.

:func:`export_checkpoint` writes, for each Engram layer ``L``, ``layers.L.engram.embed.weight``
(F8_E4M3 ``[rows, dim]``) and ``layers.L.engram.embed.scale`` (F8_E8M0 ``[rows, dim/32]``) into
shards of at most ``max_shard_size`` bytes (a tensor larger than that gets a shard of its own:
safetensors tensors are not split), ``model.safetensors.index.json`` naming the shard of each
tensor, and a ``config.json`` with the ``engram_*`` keys of the table's layout, so the directory
imports back (bit for bit for an fp8 table). A float table is quantized on the way (docs/format.md's
rule); the per-row relative error ``|q - x| / |x|`` (L2) is measured and returned.

Chunks are streamed: each chunk of rows is written with ``pwrite`` at its place in the weight
and in the scale tensor, so memory stays one chunk whatever the table size. Everything is
written into a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._files import check_free_space
from ..._system import format_bytes
from ...errors import EngramError, UsageError
from ...model_config import CONFIG_NAME, EngramModelConfig
from ..core.checkpoint import INDEX_NAME, SCALE_DTYPE, SCALE_NAME, WEIGHT_DTYPE, WEIGHT_NAME
from ..core.dtypes import FP8_SCALE_BLOCK, decode_rows, encode_rows
from ..sources.table import open_table

FP8 = "float8_e4m3fn"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class CheckpointExportResult:
    path: str
    shards: list[str]
    tensors: dict[str, list[int]]  # name -> shape
    bytes_written: int
    seconds: float
    quantized: bool  # a float table was quantized to e4m3 + ue8m0
    max_relative_error: float  # per-row L2 relative error (0 for an fp8 table)
    mean_relative_error: float

    def to_dict(self) -> dict:
        """The ``export --format deepseek --json`` document."""
        return {
            "out": self.path,
            "format": "deepseek",
            "shards": self.shards,
            "tensors": self.tensors,
            "bytes": self.bytes_written,
            "quantized": self.quantized,
            "max_relative_error": self.max_relative_error,
            "mean_relative_error": self.mean_relative_error,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """What was written, in one line (with the quantization error of a float table)."""
        error = (
            f"; quantized to e4m3 + ue8m0, relative error per row max "
            f"{self.max_relative_error:.4f}, mean {self.mean_relative_error:.4f}"
            if self.quantized
            else ""
        )
        return (
            f"{len(self.shards)} shards, {len(self.tensors)} tensors, "
            f"{format_bytes(self.bytes_written)} in {self.seconds:.1f}s{error}"
        )


def parse_shard_size(text) -> int:
    """``"5GB"`` (decimal units, as Hugging Face writes them), ``"4GiB"`` (binary) or bytes.

    >>> parse_shard_size("5GB"), parse_shard_size("1.5MiB"), parse_shard_size(100)
    (5000000000, 1572864, 100)
    """
    value = str(text).strip()
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}  # fmt: skip
    number = value.rstrip("BbIiKkMmGgTt ")
    unit = value[len(number) :].strip().upper()
    try:
        size = float(number) * units[unit]
        if not math.isfinite(size):  # nan, inf: no size
            raise ValueError(text)
    except (ValueError, KeyError):
        raise UsageError(
            f"--max-shard-size: expected e.g. 5GB, 500MB or 4GiB, got {text!r}"
        ) from None
    if size < 1:
        raise UsageError(f"--max-shard-size must be positive, got {text!r}")
    return int(size)


def safetensors_header(tensors: list[tuple[str, str, list[int], int]], metadata=None) -> bytes:
    """Length-prefixed header for ``(name, dtype, shape, nbytes)`` laid out back to back."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob


def plan_shards(tensors: list[tuple], max_bytes: int) -> list[list[tuple]]:
    """Group tensors ``(name, dtype, shape, nbytes)`` in order into shards of at most
    ``max_bytes`` data bytes; a tensor larger than that is a shard of its own.

    >>> [[t[0] for t in s] for s in plan_shards([("a", "", [], 3), ("b", "", [], 3)], 5)]
    [['a'], ['b']]
    """
    shards: list[list[tuple]] = []
    size = 0
    for tensor in tensors:
        if not shards or size + tensor[3] > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor[3]
    return shards


def export_checkpoint(
    table_path,
    out_dir,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
    commits_dir=None,
) -> CheckpointExportResult:
    """Write a table as a DeepSeek-style checkpoint directory (see the module docstring).

    ``max_shard_size``: bytes, or text such as ``"5GB"`` (:func:`parse_shard_size`).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    max_shard_size = parse_shard_size(max_shard_size)
    _check_target(out_dir, overwrite=overwrite)
    table = open_table(table_path, storage_options=storage_options, commits_dir=commits_dir)
    try:
        meta = table.meta
        config = _model_config(meta)
        tensors = _checkpoint_tensors(meta)
        shards = plan_shards(tensors, max_shard_size)
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        total = sum(t[3] for t in tensors)
        check_free_space(out_dir.parent, total + 2**20 * len(shards))
        with _staged(out_dir) as tmp:
            where, errors = _write_shards(tmp, table, dict(zip(names, shards, strict=True)),
                                          progress=progress, total=total)  # fmt: skip
            weight_map = {t[0]: where[t[0]][0] for t in tensors}
            _write_index_and_config(tmp, weight_map, total, config, table)
    finally:
        table.close()
    count, worst, summed = errors
    return CheckpointExportResult(
        str(out_dir),
        names,
        {t[0]: t[2] for t in tensors},
        total + sum(len(safetensors_header(s)) for s in shards),
        time.perf_counter() - started,
        meta.dtype != FP8,
        worst,
        summed / count if count else 0.0,
    )


def _check_target(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite``, a file, or a missing parent."""
    if out_dir.exists() and not overwrite:
        raise EngramError(f"{out_dir} exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise EngramError(f"{out_dir} is a file; give a directory name")
    if not out_dir.parent.is_dir():
        raise EngramError(f"directory {out_dir.parent} does not exist; create it first")


def _model_config(meta) -> EngramModelConfig:
    """The ``engram_*`` config of the table's layout; refuses a dim that is no ue8m0 block
    multiple."""
    if meta.dim % FP8_SCALE_BLOCK:
        raise UsageError(
            f"--format deepseek needs dim divisible by {FP8_SCALE_BLOCK} (ue8m0 blocks), "
            f"the table has {meta.dim}"
        )
    return EngramModelConfig.from_layout(meta.layout, head_dim=meta.dim)


def _checkpoint_tensors(meta) -> list[tuple[str, str, list[int], int]]:
    """``(name, dtype, shape, nbytes)`` of each layer's weight and scale, in file order."""
    width = meta.dim // FP8_SCALE_BLOCK
    tensors = []
    for layer_id, layer in meta.layers.items():
        for name, dtype, cols in (
            (WEIGHT_NAME, WEIGHT_DTYPE, meta.dim),
            (SCALE_NAME, SCALE_DTYPE, width),
        ):
            tensors.append(
                (name.format(layer=layer_id), dtype, [layer.rows, cols], layer.rows * cols)
            )
    return tensors


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``out_dir``, renamed to ``out_dir`` (replacing it) when
    the block ends well and removed however it ends; an OSError in the block is one line."""
    tmp = out_dir.with_name(f".{out_dir.name}.exporting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError as exc:
        raise EngramError(f"cannot write {out_dir}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_shards(tmp: Path, table, shards: dict, *, progress, total: int):
    """Write every shard (header, then each chunk of rows at its place); returns where each
    tensor's data starts ``{name: (shard, offset)}`` and the quantization error measures."""
    fds, where = {}, {}
    for shard_name, shard in shards.items():
        header = safetensors_header(shard)
        fd = fds[shard_name] = os.open(tmp / shard_name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, header)
        os.ftruncate(fd, len(header) + sum(t[3] for t in shard))
        offset = len(header)
        for tensor in shard:
            where[tensor[0]] = (shard_name, offset)
            offset += tensor[3]
    errors = _write_rows(table, fds, where, progress, total)
    for fd in fds.values():
        os.fsync(fd)
        os.close(fd)
    return where, errors


def _write_index_and_config(tmp: Path, weight_map: dict, total: int, config, table) -> None:
    """``model.safetensors.index.json`` and a ``config.json`` that records the table exported."""
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    doc = config.to_dict() | {
        "engramctl_export": {
            "table": str(table.path),
            "vocab_fingerprint": table.meta.vocab_fingerprint,
        }
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")


def relative_row_errors(values: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """``|q - x| / |x|`` per row (L2), rows with ``|x| = 0`` left out.

    >>> relative_row_errors(np.array([[3.0, 4.0], [0, 0]]), np.array([[3.0, 5.0], [0, 0]]))
    array([0.2])
    """
    norms = np.linalg.norm(values, axis=1)
    keep = norms > 0
    return np.linalg.norm(quantized[keep] - values[keep], axis=1) / norms[keep]


def _write_rows(table, fds, where, progress, total) -> tuple[int, float, float]:
    """Stream every chunk into the shards; returns (rows measured, max error, error sum)."""
    meta = table.meta
    width = meta.dim // FP8_SCALE_BLOCK
    done, count, worst, summed = 0, 0, 0.0, 0.0
    for layer_id, layer in meta.layers.items():
        weight = where[WEIGHT_NAME.format(layer=layer_id)]
        scale = where[SCALE_NAME.format(layer=layer_id)]
        for c in range(layer.n_chunks(meta.chunk_rows)):
            start, stop = meta.chunk_span(layer_id, c)
            raw = table.read_chunk(layer_id, c)[: stop - start]  # one chunk, not kept mapped
            if meta.dtype == FP8:
                rows = raw
            else:
                values = decode_rows(raw, meta.dtype, meta.dim)
                rows = encode_rows(values, FP8)
                errors = relative_row_errors(values, decode_rows(rows, FP8, meta.dim))
                if errors.size:
                    count += errors.size
                    worst = max(worst, float(errors.max()))
                    summed += float(errors.sum())
            _pwrite(
                fds[weight[0]],
                np.ascontiguousarray(rows[:, : meta.dim]),
                weight[1] + start * meta.dim,
            )
            _pwrite(
                fds[scale[0]], np.ascontiguousarray(rows[:, meta.dim :]), scale[1] + start * width
            )
            done += (stop - start) * (meta.dim + width)
            if progress:
                progress(done, total)
    return count, worst, summed


def _pwrite(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


__all__ = ["export_checkpoint", "CheckpointExportResult", "safetensors_header", "plan_shards"]
