"""Importing a safetensors file into a table, one chunk at a time (bounded memory).

:func:`import_safetensors` needs one ``[sum(primes), dim]`` tensor per layer (and the ue8m0
scales of an fp8 one, named as :mod:`engramctl.table.formats.safetensors` writes them); a file
written by ``engramctl export`` records its layout, against which layout flags are checked
(:func:`check_layout_flags`). :func:`import_safetensors_file` is ``import FILE``: the same from the
command's options (a vocab path, the layout flags, ``--config``). The table is assembled under a
temporary name and renamed into place, holding the writer lock from the check to the swap.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..._files import check_free_space, write_file_atomic
from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..build.create import CreateResult, build_meta, write_new_group
from ..build.replace import install_table, is_unborn, locked_path
from ..core.blocksums import chunk_block_crcs, merge_block_sums
from ..core.codec import chunk_key, crc32_of, encode_chunk
from ..core.dtypes import decode_rows, encode_rows, parse_dtype, storage_dtype
from ..core.fp8 import FP8_SCALE_BLOCK
from ..core.manifest import read_group, write_group_attrs
from ..core.meta import check_vocab_fingerprint
from ..core.rowinit import InitRecipe
from ..core.store import open_store
from ..sources.table import table_info
from .safetensors import (
    DEFAULT_NAME,
    DTYPE_OF_SAFETENSORS,
    SCALES_SUFFIX,
    layer_tensor_names,
    read_safetensors_header,
)

# the layout fields a user can give on the command line, and their flags
LAYOUT_FLAGS = {
    "preset": "--preset",
    "ngram_vocab": "--ngram-vocab",
    "max_ngram": "--max-ngram",
    "heads": "--heads",
    "layers": "--layers",
    "seed": "--seed",
    "pad_id": "--pad-id",
}


def recorded_layout(metadata: dict, *, where) -> EngramLayout | None:
    """The layout an ``engramctl export`` recorded in the file's metadata (``None``: none)."""
    text = metadata.get("engramctl_table") if isinstance(metadata, dict) else None
    if text is None:
        return None
    try:
        return EngramLayout.from_dict(json.loads(text)["layout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EngramError(
            f"{where}: the table metadata recorded in the file is damaged ({exc})"
        ) from None


def file_layout(path) -> EngramLayout | None:
    """The layout recorded in a safetensors file exported by engramctl, or ``None``."""
    _header, metadata, _start = read_safetensors_header(path)
    return recorded_layout(metadata, where=path)


def _given_layout_fields(flags: dict, vocab_size: int) -> dict:
    """``{field: value}`` the layout flags ask for, as layout values (a preset: all its fields)."""
    from ...layout import parse_int_list

    given = {k: v for k, v in flags.items() if v is not None}
    for key in ("ngram_vocab", "layers"):
        if isinstance(given.get(key), str):
            given[key] = parse_int_list(given[key], name=LAYOUT_FLAGS[key])
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}
    preset = fields.pop("preset", None)
    if preset is not None:
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        base = EngramLayout.from_preset(preset, vocab_size=vocab_size, **overrides).to_dict()
        base.pop("vocab_size", None)
        fields = {
            k: (v, f"--preset {preset} gives {k}") for k, v in base.items() if k not in fields
        }
        fields |= {k: (v, f"{LAYOUT_FLAGS[k]}") for k, v in given.items() if k != "preset"}
        return fields
    return {k: (v, LAYOUT_FLAGS[k]) for k, v in fields.items()}


def check_layout_flags(recorded: EngramLayout, flags: dict | None, *, where) -> None:
    """Refuse layout flags that disagree with the layout a file records, naming both values."""
    if not flags or all(v is None for v in flags.values()):
        return
    file_fields = recorded.to_dict()
    differences = []
    for key, (value, said) in _given_layout_fields(flags, recorded.vocab_size).items():
        value = list(value) if isinstance(value, tuple) else value
        theirs = file_fields.get(key)
        if value != theirs:
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            mine = ",".join(map(str, theirs)) if isinstance(theirs, list) else theirs
            differences.append(f"{said} {shown}, the file has {mine}")
    if differences:
        raise UsageError(
            f"{where} records the layout it was exported with, and the layout flags disagree: "
            f"{'; '.join(differences)}. Drop the layout flags (the file's layout is used)"
        )


def _import_layout(recorded, layout, layout_flags, *, where) -> EngramLayout:
    """The layout to import with: the file's when it records one (flags must agree)."""
    if recorded is None:
        if layout is None:
            raise UsageError(
                f"{where} records no layout (not exported by engramctl); give it with --preset "
                "and the layout flags"
            )
        return layout
    check_layout_flags(recorded, layout_flags, where=where)
    if layout is not None and layout.to_dict() != recorded.to_dict():
        a, b = layout.to_dict(), recorded.to_dict()
        differences = [f"{k} {a[k]} (given) vs {b[k]} (file)" for k in a if a[k] != b.get(k)]
        raise EngramError(
            f"{where} records another layout than the one given: {'; '.join(differences)}"
        )
    return recorded


def _source_array(path: Path, entry: dict, data_start: int, numpy_dtype) -> np.ndarray:
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    dtype = np.dtype(numpy_dtype).newbyteorder("<")
    if end == begin:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def _layer_sources(path, header, data_start, layout, name_template):
    """Per layer ``(values memmap, scales memmap or None, source dtype)``, checked."""
    sources, dims, dtypes = {}, set(), set()
    names = layer_tensor_names(name_template, layout.layers)
    for layer_id in layout.layers:
        name = names[layer_id]
        if name not in header:
            shown = ", ".join(sorted(header)[:8]) or "none"
            raise EngramError(
                f"{path} has no tensor {name!r} for layer {layer_id} (tensors: {shown}); "
                "pass --tensor-name with a {layer} placeholder"
            )
        entry = header[name]
        st_dtype = entry["dtype"]
        if st_dtype not in DTYPE_OF_SAFETENSORS:
            raise EngramError(
                f"{path}: tensor {name!r} has dtype {st_dtype}; expected one of "
                f"{', '.join(DTYPE_OF_SAFETENSORS)}"
            )
        dtype = DTYPE_OF_SAFETENSORS[st_dtype]
        rows = layout.layer_rows(layer_id)
        if len(entry["shape"]) != 2 or entry["shape"][0] != rows:
            raise EngramError(
                f"{path}: tensor {name!r} has shape {entry['shape']}, but layer {layer_id} of the "
                f"layout has {rows} rows (the sum of its head primes): expected [{rows}, dim]"
            )
        dim = entry["shape"][1]
        values = _source_array(path, entry, data_start, storage_dtype(dtype))
        scales = None
        if dtype == "float8_e4m3fn":
            scale_entry = header.get(name + SCALES_SUFFIX)
            want = [rows, dim // FP8_SCALE_BLOCK]
            if scale_entry is None or scale_entry["dtype"] != "U8" or scale_entry["shape"] != want:
                raise EngramError(
                    f"{path}: an F8_E4M3 tensor {name!r} needs ue8m0 scales "
                    f"{name + SCALES_SUFFIX!r} of U8 {want}"
                )
            scales = _source_array(path, scale_entry, data_start, np.uint8)
        sources[layer_id] = (values, scales)
        dims.add(dim)
        dtypes.add(dtype)
    if len(dims) != 1 or len(dtypes) != 1:
        raise EngramError(f"{path}: layers differ in dim {sorted(dims)} or dtype {sorted(dtypes)}")
    return sources, dims.pop(), dtypes.pop()


def import_safetensors(
    in_path,
    out_path,
    *,
    layout: EngramLayout | None = None,
    layout_flags: dict | None = None,
    vocab_fingerprint: str,
    name_template: str = DEFAULT_NAME,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    compressor: str = "none",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CreateResult:
    """Build a table from a safetensors file with one ``[sum(primes), dim]`` tensor per layer.

    A file exported by engramctl records its layout: it is used, and ``layout_flags`` (the
    layout fields the user gave: ``preset``, ``ngram_vocab``, ``max_ngram``, ``heads``, ``layers``,
    ``seed``, ``pad_id``; ``None`` for not given) or a ``layout`` that disagree with it are refused,
    naming both values. Other files need ``layout``.
    Shapes are checked against the layout. ``dtype`` (default: the file's) converts values
    (through float32) when it differs from the file's; otherwise rows are copied bit for bit.
    The table is assembled under a temporary name and renamed into place when complete.
    """
    started = time.perf_counter()
    in_path, out_path = Path(in_path), Path(out_path)
    header, metadata, data_start = read_safetensors_header(in_path)
    theirs = metadata.get("vocab_fingerprint")
    if theirs:
        check_vocab_fingerprint(theirs, vocab_fingerprint, what=f"{in_path}")
    recorded = recorded_layout(metadata, where=in_path)
    layout = _import_layout(recorded, layout, layout_flags, where=in_path)
    sources, dim, source_dtype = _layer_sources(in_path, header, data_start, layout, name_template)
    meta = build_meta(
        layout=layout,
        vocab_fingerprint=vocab_fingerprint,
        dim=dim,
        dtype=parse_dtype(dtype) if dtype else source_dtype,
        init=InitRecipe("zeros", 0.0, 0),
        chunk_rows=chunk_rows,
        compressor=compressor,
    )
    _check_import_target(out_path, overwrite=overwrite)
    total = sum(layer.n_chunks(meta.chunk_rows) for layer in meta.layers.values())
    check_free_space(out_path.parent, total * meta.chunk_bytes)
    tmp = out_path.with_name(f".{out_path.name}.importing")  # only the lock holder touches it
    try:
        with locked_path(out_path):  # held from the check to the swap: no writer slips in
            new_lock = None
            try:
                _check_import_target(out_path, overwrite=overwrite)
                shutil.rmtree(tmp, ignore_errors=True)
                write_new_group(tmp, meta)
                manifest = _copy_chunks(tmp, meta, sources, source_dtype, progress=progress)
                write_group_attrs(tmp, meta.with_status("complete"), manifest)
                os.sync()
                new_lock = install_table(tmp, out_path)  # the new table's lock, held
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if new_lock is not None:
                    new_lock.release()
    except OSError as exc:
        raise EngramError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    meta, manifest = read_group(out_path)
    return CreateResult(
        path=str(out_path),
        info=table_info(out_path, meta, manifest),
        resumed=False,
        chunks_written=total,
        chunks_skipped=0,
        bytes_written=total * meta.chunk_bytes,
        seconds=time.perf_counter() - started,
    )


def import_safetensors_file(
    in_path,
    out_path,
    *,
    vocab=None,
    preset: str | None = None,
    ngram_vocab: str | None = None,
    max_ngram: int | None = None,
    heads: int | None = None,
    layers: str | None = None,
    seed: int | None = None,
    pad_id: int | None = None,
    config=None,
    tensor_name: str = DEFAULT_NAME,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    compressor: str = "none",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CreateResult:
    """``import FILE``: :func:`import_safetensors` from the command's options.

    ``vocab`` is the canonical vocab's Parquet path (required); ``preset`` to ``pad_id`` are the
    layout flags (``None``: not given; ``ngram_vocab`` and ``layers`` as flag text) and
    ``config`` a model's config.json: a file that records its layout is checked against the
    flags, any other file (or a ``config``) takes the layout they resolve to.
    """
    from ...layout import LayoutRequest, resolve_layout
    from ...model_config import config_layout_source
    from ...vocab import CanonicalVocab

    if vocab is None:
        raise UsageError("importing a safetensors file needs --vocab")
    vocab_map = CanonicalVocab.load(vocab)
    flags = dict(preset=preset, ngram_vocab=ngram_vocab, max_ngram=max_ngram, heads=heads,
                 layers=layers, seed=seed, pad_id=pad_id)  # fmt: skip
    layout = None  # a file exported by engramctl records its layout: the flags are checked
    if file_layout(in_path) is None or config is not None:  # --config: compared too
        source = config_layout_source(config, vocab=vocab_map) if config is not None else None
        layout = resolve_layout(LayoutRequest(**flags), vocab=vocab_map, source=source).layout
    return import_safetensors(
        in_path,
        out_path,
        layout=layout,
        layout_flags=flags,
        vocab_fingerprint=vocab_map.fingerprint,
        name_template=tensor_name,
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=compressor,
        overwrite=overwrite,
        progress=progress,
    )


def _check_import_target(out_path: Path, *, overwrite: bool) -> None:
    """Refuse to replace anything but an engramctl table, and that only with ``overwrite``."""
    if not out_path.parent.is_dir():
        raise EngramError(f"directory {out_path.parent} does not exist; create it first")
    if not out_path.exists() or is_unborn(out_path):
        return
    try:
        read_group(out_path, check=False)  # a damaged table may be replaced
    except EngramError:
        raise EngramError(
            f"{out_path} exists and is not an engramctl table; refusing to touch it"
        ) from None
    if not overwrite:
        raise EngramError(f"{out_path} exists; pass --overwrite to replace it")


def _copy_chunks(tmp: Path, meta, sources: dict, source_dtype: str, *, progress) -> dict:
    """Write every chunk of the new table at ``tmp`` from the source tensors; its manifest."""
    total = sum(layer.n_chunks(meta.chunk_rows) for layer in meta.layers.values())
    manifest: dict = {layer_id: {} for layer_id in meta.layers}
    blocks: dict = {layer_id: {} for layer_id in meta.layers}
    done = 0
    for layer_id, (values, scales) in sources.items():
        for c in range(meta.layers[layer_id].n_chunks(meta.chunk_rows)):
            start, stop = meta.chunk_span(layer_id, c)
            rows = _chunk_from_source(meta, values, scales, source_dtype, start, stop)
            data = encode_chunk(meta, rows)
            write_file_atomic(tmp / chunk_key(layer_id, c), data, fsync=False)
            manifest[layer_id][c] = [crc32_of(data), memoryview(data).nbytes, "data"]
            crcs = chunk_block_crcs(meta, data)
            if crcs is not None:
                blocks[layer_id][c] = (manifest[layer_id][c][0], crcs)
            done += 1
            if progress:
                progress(done * meta.chunk_bytes, total * meta.chunk_bytes)
    merge_block_sums(open_store(tmp), meta, blocks)
    return manifest


def _chunk_from_source(meta, values, scales, source_dtype, start, stop) -> np.ndarray:
    """Stored rows of one chunk (full size, zero padded) from the source tensors."""
    rows = np.zeros((meta.chunk_rows, meta.row_width), dtype=meta.storage_dtype)
    n = stop - start
    if source_dtype == "float8_e4m3fn":
        raw = np.concatenate([values[start:stop], scales[start:stop]], axis=1)
    else:
        raw = np.asarray(values[start:stop])
    if source_dtype == meta.dtype:
        rows[:n] = raw
    else:
        rows[:n] = encode_rows(decode_rows(raw, source_dtype, meta.dim), meta.dtype)
    return rows
