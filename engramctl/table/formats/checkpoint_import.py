"""Importing a model checkpoint's Engram tables: a streamed copy, or a zero-copy link.

:func:`import_checkpoint` opens the checkpoint (:mod:`engramctl.table.core.checkpoint`), takes the
layout from its ``config.json`` (checked against the vocab) and then either

- copies (default): reads each chunk's rows from the shards (``pread`` into one reusable buffer,
  so memory stays bounded whatever the table size), refuses NaN codes and NaN scales naming the
  first row, writes the chunk (temporary name + rename) and records its checksum. The table is
  created with status ``initializing`` and its checkpoint's identity (file sizes, header hashes);
  an interrupted copy is resumed by running the same command again, like ``init-table``; or
- links (``link=True``): writes only metadata recording where each layer's tensors lie
  (:mod:`engramctl.table.sources.linked`); takes seconds and kilobytes at any size.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..._files import check_free_space, write_file_atomic
from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from ..build.chunks import (
    ChunkRecord,
    ManifestRecorder,
    chunk_is_valid,
    remove_stale_chunk_files,
    write_chunks_in_pool,
)
from ..build.create import CreateResult, build_meta, write_group_files
from ..build.replace import install_table, is_unborn, locked_path
from ..core.blocksums import chunk_block_crcs
from ..core.checkpoint import Checkpoint, open_checkpoint
from ..core.codec import chunk_key, crc32_of, encode_chunk
from ..core.dtypes import decode_rows, encode_rows, parse_dtype
from ..core.fp8_check import InvalidRowsError, check_fp8_rows
from ..core.manifest import read_group
from ..core.meta import TableMeta
from ..core.rowinit import InitRecipe
from ..core.store import open_store
from ..sources.linkblocks import LINK_TIME_BYTES, linked_bytes, record_all_link_sums
from ..sources.linked import (
    COPY_MODE,
    LINK_MODE,
    SourceReader,
    Span,
    local_reader,
    sources_record,
)
from ..sources.remote import is_remote, open_remote_checkpoint, public_options
from ..sources.table import table_info

log = logging.getLogger(__name__)
FP8 = "float8_e4m3fn"
COPY_WORKERS = 4  # threads reading, checking and writing chunks (I/O bound: a few suffice)


def checkpoint_vocab(checkpoint_dir, vocab_path=None):
    """The vocab given, or one built from the checkpoint's ``tokenizer.json``."""
    from ...vocab import CanonicalVocab

    if vocab_path is not None:
        return CanonicalVocab.load(vocab_path)
    if is_remote(checkpoint_dir):
        raise UsageError(f"{checkpoint_dir} is a URL; pass --vocab (from engramctl build-vocab)")
    tokenizer = Path(checkpoint_dir) / "tokenizer.json"
    if not tokenizer.is_file():
        raise UsageError(
            f"{checkpoint_dir} has no tokenizer.json; pass --vocab (from engramctl build-vocab)"
        )
    return CanonicalVocab.from_tokenizer(tokenizer)


def checkpoint_layout(checkpoint: Checkpoint, vocab) -> EngramLayout:
    """The config's layout for ``vocab`` (both config checks applied, pad id validated)."""
    layout = checkpoint.config.layout(vocab_size=vocab.canonical_vocab_size)
    layout.pad_canonical_id(vocab)
    return layout


def _select_layers(layout: EngramLayout, layers) -> tuple[int, ...]:
    if layers is None:
        return layout.layers
    unknown = [layer for layer in layers if layer not in layout.layers]
    if unknown or not layers:
        raise UsageError(
            f"--layers {list(layers)}: the checkpoint's Engram layers are {list(layout.layers)}"
        )
    return tuple(dict.fromkeys(layers))


def _table_meta(
    layout, vocab_fingerprint, dim, dtype, chunk_rows, compressor, layers, sources, status
) -> TableMeta:
    meta = build_meta(
        layout=layout,
        vocab_fingerprint=vocab_fingerprint,
        dim=dim,
        dtype=dtype,
        init=InitRecipe("zeros", 0.0, 0),  # never read: every chunk is written from data
        chunk_rows=chunk_rows,
        compressor=compressor,
    )
    data = meta.to_dict()
    data["layers"] = {k: v for k, v in data["layers"].items() if int(k) in layers}
    data["status"] = status
    data["sources"] = sources
    return TableMeta.from_dict(data)


def _existing_import(out_path: Path) -> TableMeta | None:
    """The metadata of the table at ``out_path`` (``None``: nothing there, or the slot of an
    import or init interrupted before its table arrived); anything else is refused."""
    if not out_path.exists():
        if not out_path.parent.is_dir():
            raise EngramError(f"directory {out_path.parent} does not exist; create it first")
        return None
    if is_unborn(out_path):
        return None
    try:
        old, _ = read_group(out_path)
    except EngramError:
        raise EngramError(
            f"{out_path} exists and is not an engramctl table; refusing to touch it"
        ) from None
    return old


def _prepare_target(out_path: Path, meta: TableMeta, *, overwrite: bool) -> bool:
    """Refuse an existing output or accept its replacement; returns True when an unfinished
    copy is resumed. The caller holds the writer lock of ``out_path``."""
    old = _existing_import(out_path)
    if old is None or overwrite:
        return False
    same = old.recipe_dict() == meta.recipe_dict() and old.sources == meta.sources
    if old.status == "initializing" and meta.sources["mode"] == COPY_MODE and same:
        return True
    if old.status == "initializing" and meta.sources["mode"] == COPY_MODE:
        raise EngramError(
            f"{out_path} is an unfinished import of another checkpoint or with other settings; "
            "rerun the same command to resume, or pass --overwrite"
        )
    raise EngramError(f"{out_path} exists; pass --overwrite to replace it")


def _check_link_options(link: bool, *, dtype: str, compressor: str) -> None:
    """Refuse what a link cannot do: convert the rows, or compress chunks it does not have."""
    if link and dtype != FP8:
        raise UsageError(
            f"--link with --dtype {dtype}: a link reads the checkpoint's fp8 bytes as they are "
            "and cannot convert; drop --link to copy and convert"
        )
    if link and compressor != "none":
        raise UsageError("--link with --compressor: a link has no chunks to compress")


def _import_plan(checkpoint: Checkpoint, vocab, layers, out_path: Path, *, link: bool, dtype: str,
                 chunk_rows: int | None, compressor: str,
                 remote: dict | None = None) -> tuple[dict, TableMeta]:  # fmt: skip
    """The checkpoint tensors of the selected layers, and the new table's metadata recording
    where they lie (a link: status complete; a copy: initializing until every chunk is in)."""
    layout = checkpoint_layout(checkpoint, vocab)
    selected = _select_layers(layout, layers)
    tensors = checkpoint.engram_tensors(layout, selected)
    mode = LINK_MODE if link else COPY_MODE
    if remote is not None:
        remote = {**remote, "identities": checkpoint.remote.identities}
    sources = sources_record(
        tensors, out_path, mode=mode, checkpoint=checkpoint.path, remote=remote
    )
    status = "complete" if link else "initializing"
    meta = _table_meta(
        layout,
        vocab.fingerprint,
        checkpoint.config.head_dim,
        dtype,
        chunk_rows,
        compressor,
        selected,
        sources,
        status,
    )
    return tensors, meta


def import_checkpoint(
    checkpoint_dir,
    out_path,
    *,
    vocab,
    layers=None,
    link: bool = False,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    compressor: str = "none",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
    cache_dir=None,
) -> CreateResult:
    """Import (copy) or link the Engram tables of a checkpoint directory into a table.

    Parameters
    ----------
    checkpoint_dir : path
        Holds ``config.json`` and ``model.safetensors.index.json`` + shards, or one
        ``model.safetensors``.
    out_path : path
        The table to write.
    vocab : CanonicalVocab
        Its canonical size must be the config's ``engram_compressed_vocab_size``.
    layers : sequence of int, optional
        Import only these Engram layers (default: all of the config's).
    link : bool
        Record where the rows lie instead of copying them (read-only, zero-copy).
    dtype : str, optional
        Convert the rows (copy only; default: keep float8_e4m3fn bit for bit).
    progress : callable, optional
        ``progress(bytes done, bytes total)`` while copying (or reading linked tensors once to
        record their block checksums).
    storage_options : dict, optional
        fsspec options of a checkpoint at a URL (``s3://``, ``http(s)://``, ``hf://``: linked
        only); recorded in the table without credentials (``key``, ``secret``, ``token``).
    cache_dir : path, optional
        A link to a URL: keep fetched blocks here (checked before they are kept and when read
        back).
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    dtype = parse_dtype(dtype) if dtype else FP8
    _check_link_options(link, dtype=dtype, compressor=compressor)
    remote = _remote_options(checkpoint_dir, link, storage_options, cache_dir)
    if remote is not None:
        checkpoint = open_remote_checkpoint(str(checkpoint_dir), storage_options)
    else:
        checkpoint = open_checkpoint(checkpoint_dir)
    tensors, meta = _import_plan(checkpoint, vocab, layers, out_path, link=link, dtype=dtype,
                                 chunk_rows=chunk_rows, compressor=compressor,
                                 remote=remote)  # fmt: skip
    _existing_import(out_path)  # refuse to touch something else before taking any lock
    try:
        written, skipped, resumed = _import_locked(
            out_path,
            meta,
            tensors,
            link=link,
            overwrite=overwrite,
            progress=progress,
            storage_options=storage_options,
        )
    except OSError as exc:  # the lock, the new group, the swap: one line naming the output
        raise EngramError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    meta, manifest = read_group(out_path)
    return CreateResult(
        str(out_path),
        table_info(out_path, meta, manifest),
        resumed,
        written,
        skipped,
        written * meta.chunk_bytes,
        time.perf_counter() - started,
    )


def _import_locked(out_path: Path, meta: TableMeta, tensors, *, link: bool, overwrite: bool,
                   progress, storage_options=None) -> tuple[int, int, bool]:  # fmt: skip
    """Resume, create or replace the table holding its writer lock from the check to the last
    chunk (a second import to the same path gets the lock message); a new table (metadata, no
    chunks) is built beside and swapped in whole, then filled in place so a rerun resumes.
    Returns ``(chunks written, chunks skipped, resumed)``."""
    with locked_path(out_path):
        resumed = _prepare_target(out_path, meta, overwrite=overwrite)
        if resumed:
            return (*_copy_rows(out_path, tensors, resumed=True, progress=progress), True)
        if not link:  # the table replaced (if any) is removed before the first chunk is copied
            chunks = sum(layer.n_chunks(meta.chunk_rows) for layer in meta.layers.values())
            freed = sum(f.stat().st_size for f in out_path.rglob("*") if f.is_file())
            check_free_space(out_path.parent, max(0, chunks * meta.chunk_bytes - freed))
        beside = out_path.with_name(f".{out_path.name}.creating")  # only the lock holder
        shutil.rmtree(beside, ignore_errors=True)
        try:
            write_group_files(beside, meta)
            new_lock = install_table(beside, out_path)  # the old table or slot goes
        finally:
            shutil.rmtree(beside, ignore_errors=True)
        try:
            if link:
                _record_link_sums(out_path, meta, progress, storage_options)
                return 0, 0, False
            return (*_copy_rows(out_path, tensors, resumed=False, progress=progress), False)
        finally:
            new_lock.release()


def import_checkpoint_dir(
    checkpoint_dir,
    out_path,
    *,
    vocab=None,
    layers: str | None = None,
    link: bool = False,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    compressor: str = "none",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    storage_options: list[str] | dict | None = None,
    cache_dir=None,
) -> CreateResult:
    """``import CKPT_DIR``: :func:`import_checkpoint` from the command's options.

    ``vocab`` is the canonical vocab's Parquet path (default: built from the checkpoint's
    ``tokenizer.json``) and ``layers`` the ``--layers`` text (``"1,15"``).
    """
    from ...layout import parse_int_list

    vocab_map = checkpoint_vocab(checkpoint_dir, vocab)
    return import_checkpoint(
        checkpoint_dir,
        out_path,
        vocab=vocab_map,
        layers=parse_int_list(layers, name="--layers") if layers is not None else None,
        link=link,
        dtype=dtype,
        chunk_rows=chunk_rows,
        compressor=compressor,
        overwrite=overwrite,
        progress=progress,
    )


def _remote_options(checkpoint_dir, link: bool, storage_options, cache_dir) -> dict | None:
    """What a link to a URL records (``None`` for a local checkpoint); refuses what only
    applies to one of them."""
    if not is_remote(checkpoint_dir):
        if storage_options:
            raise UsageError("--storage-option applies to a checkpoint at a URL (s3://, https://)")
        if cache_dir is not None:
            raise UsageError(
                "--cache-dir applies to a link to a URL (a local shard is read in place)"
            )
        return None
    if not link:
        raise UsageError(
            f"{checkpoint_dir} is a URL: a remote checkpoint is linked (pass --link), or "
            "download it and import the copy"
        )
    if cache_dir is not None and not Path(cache_dir).parent.is_dir():
        raise UsageError(f"--cache-dir {cache_dir}: its parent directory does not exist")
    return {"storage_options": public_options(storage_options), "cache_dir": cache_dir}


def _record_link_sums(out_path: Path, meta: TableMeta, progress, storage_options=None) -> None:
    """Block checksums of the linked tensors, read once now when that is cheap (at most
    ``LINK_TIME_BYTES``) or the tensors are remote (every remote read is checked against them);
    else a note says how to record them later."""
    remote = any(is_remote(name) for name in meta.sources["files"])
    if linked_bytes(meta) > LINK_TIME_BYTES and not remote:
        log.warning(
            "%s: the linked tensors are too large to checksum now; run engramctl verify --deep "
            "(or verify --add-block-checksums) to record their block checksums, after which "
            "every block is checked as it is first read",
            out_path,
        )
        return
    record_all_link_sums(
        out_path,
        meta,
        lambda layer_id: local_reader(out_path, meta.sources, layer_id, storage_options),
        progress,
    )


# ----------------------------------------------------------------------------- the copy
def _valid_copied_chunks(store, manifest: dict, resumed: bool) -> set[tuple[int, int]]:
    """Chunks of an unfinished copy that are on disk with their recorded checksum."""
    valid = set()
    if resumed:
        for layer_id, chunks in manifest.items():
            for c in list(chunks):
                if chunk_is_valid(store, layer_id, c, chunks[c]):
                    valid.add((layer_id, c))
                else:
                    del chunks[c]
    return valid


def _copy_chunk(meta, tensors, readers: queue.Queue, out_path: Path, layer_id: int, c: int):
    """Read, check, convert and write one chunk; returns its :class:`ChunkRecord`."""
    reader_set = readers.get()  # each worker thread reads into its own buffers
    try:
        start, stop = meta.chunk_span(layer_id, c)
        rows = reader_set[layer_id].rows(start, stop)
        where = f"{tensors[layer_id][0].path} (layer {layer_id})"
        check_fp8_rows(rows[: stop - start], meta.dim, first_row=start, where=where)
        if meta.dtype != FP8:
            rows = encode_rows(decode_rows(rows, FP8, meta.dim), meta.dtype)
        data = encode_chunk(meta, rows)
        write_file_atomic(out_path / chunk_key(layer_id, c), data, fsync=False)
        blocks = chunk_block_crcs(meta, data)
        return ChunkRecord(layer_id, c, crc32_of(data), memoryview(data).nbytes, blocks)
    finally:
        readers.put(reader_set)


def _reader_pool(tensors, chunk_rows: int, workers: int) -> queue.Queue:
    """One set of per-layer source readers (own buffers) for each worker thread."""
    readers: queue.Queue = queue.Queue()
    for _ in range(workers):
        readers.put(
            {
                layer_id: SourceReader(Span.of(weight), Span.of(scale), chunk_rows)
                for layer_id, (weight, scale) in tensors.items()
            }
        )
    return readers


def _copy_rows(out_path: Path, tensors, *, resumed: bool, progress, workers=None):
    """Write every chunk not yet valid from a few threads (reads, checks and writes overlap).

    The manifest is kept by the one :class:`~engramctl.table.build.chunks.ManifestRecorder` (flushed
    every couple of seconds and however the run ends, so a rerun resumes). On a NaN row the
    unfinished table is removed and the first bad row (in layer, row order) is named.
    """
    store = open_store(out_path)
    meta, manifest = read_group(store)
    remove_stale_chunk_files(store, meta)  # a killed copy's .0.tmp-<pid> files
    valid = _valid_copied_chunks(store, manifest, resumed)
    todo = [
        (layer_id, c)
        for layer_id, layer in meta.layers.items()
        for c in range(layer.n_chunks(meta.chunk_rows))
        if (layer_id, c) not in valid
    ]
    recorder = ManifestRecorder(
        store, meta, manifest, chunks_total=len(todo), source="data",
        progress=(lambda p: progress(p.bytes_done, p.bytes_total)) if progress else None,
    )  # fmt: skip
    workers = max(1, min(COPY_WORKERS, workers or os.cpu_count() or 1))
    readers = _reader_pool(tensors, meta.chunk_rows, workers)
    write_one = functools.partial(_copy_chunk, meta, tensors, readers, out_path)
    try:
        failure, bad_rows = write_chunks_in_pool(
            todo,
            write_one,
            recorder,
            workers=workers,
            thread_name="engram-copy",
            rejected_type=InvalidRowsError,
        )
        if bad_rows:  # bad data: nothing of this import is kept; name the first bad row
            shutil.rmtree(out_path, ignore_errors=True)
            order = list(meta.layers)
            raise min(bad_rows, key=lambda b: (order.index(b[0][0]), b[0][1]))[1]
        if failure is None:
            os.sync()  # the chunks are on disk before the table says complete
    finally:
        while not readers.empty():
            for reader in readers.get().values():
                reader.close()
        if out_path.exists():
            failure = recorder.finish(failure)
    if isinstance(failure, OSError):
        raise EngramError(
            f"cannot write {out_path}: {failure.strerror or failure}; the chunks copied so far "
            "are kept: rerun the same command to resume"
        ) from failure
    if failure is not None:
        raise failure
    return recorder.done, len(valid)


__all__ = ["import_checkpoint", "import_checkpoint_dir", "checkpoint_vocab", "checkpoint_layout"]
