"""Checking a table: metadata against its layout, arrays, manifest, chunk files, checksums.

:func:`verify_table` returns a :class:`VerifyReport`; ``problems`` are damage (the CLI exits 1),
``warnings`` are states that are not damage (an unfinished init, leftover temporary files).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import EngramError
from .format import TableMeta, check_vocab, chunk_key, crc32_of, read_group
from .store import TableStore, open_store

REMOTE_READ_BATCH = 16  # chunks verify --deep fetches at once from an object store


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_table`."""

    path: str
    deep: bool
    chunks_total: int = 0
    chunks_written: int = 0
    chunks_checked: int = 0  # checksums re-computed (deep)
    bytes_checked: int = 0
    bytes_to_check: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "deep": self.deep,
            "chunks_total": self.chunks_total,
            "chunks_written": self.chunks_written,
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _check_layout(meta: TableMeta, report: VerifyReport) -> None:
    layout = meta.layout
    if not meta.layers or not set(meta.layers) <= set(layout.layers):
        report.problems.append(
            f"layers {sorted(meta.layers)} are not among the layout's {sorted(layout.layers)}"
        )
    for layer_id, layer in meta.layers.items():
        if layer_id not in layout.layers:
            continue
        expected = (
            layout.layer_rows(layer_id),
            tuple(layout.head_rows(layer_id).tolist()),
            tuple(layout.head_offsets(layer_id).tolist()),
        )
        if (layer.rows, tuple(layer.head_rows), tuple(layer.head_offsets)) != expected:
            report.problems.append(
                f"layer {layer_id}: rows/head rows/head offsets differ from its layout "
                f"(rows {layer.rows} vs {expected[0]})"
            )


def _check_array(store: TableStore, meta: TableMeta, layer_id: int, report: VerifyReport) -> None:
    layer = meta.layers[layer_id]
    array_json = store.where(f"{layer.array}/zarr.json")
    try:
        doc = json.loads(store.read_bytes(f"{layer.array}/zarr.json"))
    except (OSError, ValueError) as exc:
        report.problems.append(f"layer {layer_id}: array metadata {array_json} unreadable ({exc})")
        return
    expected = {
        "shape": [layer.rows, meta.row_width],
        "data_type": str(meta.storage_dtype),
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [meta.chunk_rows, meta.row_width]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    }
    for key, value in expected.items():
        if doc.get(key) != value:
            report.problems.append(
                f"layer {layer_id}: array {key} is {doc.get(key)!r}, expected {value!r}"
            )
    names = [codec.get("name") for codec in doc.get("codecs", [])]
    wanted = ["bytes"] + (["zstd"] if meta.compressor == "zstd" else [])
    if names != wanted:
        report.problems.append(f"layer {layer_id}: codecs {names}, expected {wanted}")


def _check_files(
    store: TableStore,
    meta: TableMeta,
    manifest: dict,
    layer_id: int,
    deep: bool,
    report: VerifyReport,
    progress,
) -> None:
    layer = meta.layers[layer_id]
    n_chunks = layer.n_chunks(meta.chunk_rows)
    entries = manifest.get(layer_id, {})
    report.chunks_total += n_chunks
    report.chunks_written += len(entries)
    sizes = store.file_sizes(f"{layer.array}/c")  # one listing (of a bucket, too)
    to_read: list[tuple[int, list]] = []  # chunks whose checksum --deep re-computes
    for chunk_index in sorted(entries):
        entry = entries[chunk_index]
        where = f"chunk {chunk_index} of layer {layer_id}"
        if not 0 <= chunk_index < n_chunks:
            report.problems.append(f"manifest lists {where}, outside the layer's {n_chunks}")
            continue
        if not (isinstance(entry, list) and len(entry) >= 2):
            report.problems.append(f"manifest entry of {where} is malformed: {entry!r}")
            continue
        key = chunk_key(layer_id, chunk_index)
        file = store.where(key)
        size = sizes.get(f"{chunk_index}/0")
        if size is None:
            report.problems.append(f"{where}: file {file} is missing")
            continue
        if size != entry[1]:
            report.problems.append(
                f"{where}: {file} has {size} bytes, the manifest says {entry[1]} (truncated?)"
            )
            continue
        if deep:
            to_read.append((chunk_index, entry))
    _check_checksums(store, layer_id, to_read, report, progress)
    unrecorded, temporary = [], []
    for rel_key in sorted(sizes):
        rel = rel_key.split("/")
        full = store.where(f"{layer.array}/c/{rel_key}")
        if ".tmp-" in rel[-1]:
            temporary.append(full)
        elif len(rel) == 2 and rel[1] == "0" and rel[0].isdigit():
            if int(rel[0]) not in entries:
                unrecorded.append(int(rel[0]))
        else:
            report.warnings.append(f"layer {layer_id}: unexpected file {full}")
    if unrecorded:
        report.warnings.append(
            f"layer {layer_id}: {len(unrecorded)} chunk files are not in the manifest (an "
            f"interrupted write; first: chunk {min(unrecorded)}); rerun init-table to resume"
        )
    if temporary:
        report.warnings.append(f"layer {layer_id}: leftover temporary files: {temporary[:3]}")


def _check_checksums(
    store: TableStore, layer_id: int, to_read: list, report: VerifyReport, progress
) -> None:
    """Re-read chunks and compare CRC-32s; a remote store fetches a batch concurrently."""
    batch = 1 if store.is_local else REMOTE_READ_BATCH
    for start in range(0, len(to_read), batch):
        group = to_read[start : start + batch]
        keys = [chunk_key(layer_id, chunk_index) for chunk_index, _ in group]
        try:
            fetched = store.read_many(keys)
        except OSError as exc:  # local stores read one chunk per batch
            report.problems.append(
                f"chunk {group[0][0]} of layer {layer_id}: cannot read {store.where(keys[0])} "
                f"({exc.strerror or exc})"
            )
            continue
        for (chunk_index, entry), key in zip(group, keys, strict=True):
            where, data = f"chunk {chunk_index} of layer {layer_id}", fetched[key]
            if data is None:
                report.problems.append(f"{where}: file {store.where(key)} is missing")
                continue
            report.chunks_checked += 1
            report.bytes_checked += len(data)
            if crc32_of(data) != entry[0]:
                report.problems.append(
                    f"{where}: {store.where(key)} fails its checksum (corrupted)"
                )
            if progress:
                progress(report.bytes_checked, report.bytes_to_check)


def verify_table(
    path,
    *,
    deep: bool = False,
    vocab=None,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
) -> VerifyReport:
    """Check a table's metadata (and with ``deep`` every written chunk's checksum).

    Parameters
    ----------
    path : str or Path
        The table: a local path or an fsspec URL (``s3://bucket/t.zarr``).
    deep : bool
        Re-read every written chunk and compare its CRC-32 with the manifest.
    vocab : CanonicalVocab, optional
        Also check the table was made for this vocab.
    progress : callable, optional
        Called with ``(bytes checked, bytes to check)`` during ``deep``.
    storage_options : dict, optional
        fsspec options of a URL (``endpoint_url``, ``key``, ``secret`` ...).
    """
    store = open_store(path, storage_options)
    meta, manifest = read_group(store)  # not a table / newer format: EngramError
    report = VerifyReport(path=store.url, deep=deep)
    if deep:
        report.bytes_to_check = sum(
            int(entry[1])
            for chunks in manifest.values()
            for entry in chunks.values()
            if isinstance(entry, list) and len(entry) >= 2
        )
    if vocab is not None:
        try:
            check_vocab(meta, vocab, where=store.url)
        except EngramError as exc:
            report.problems.append(str(exc))
    _check_layout(meta, report)
    unknown = sorted(set(manifest) - set(meta.layers))
    if unknown:
        report.problems.append(f"manifest lists chunks of unknown layers {unknown}")
    if meta.linked:  # rows live in the checkpoint's shards: check those instead of chunks
        from .verify_linked import verify_linked

        verify_linked(store.root, meta, manifest, report, deep=deep, progress=progress)
        return report
    for layer_id in meta.layers:
        _check_array(store, meta, layer_id, report)
        _check_files(store, meta, manifest, layer_id, deep, report, progress)
    if meta.status == "initializing":
        report.warnings.append(
            f"init unfinished: {report.chunks_written} of {report.chunks_total} chunks written; "
            "rerun the same init-table command to resume (unwritten chunks read as init values)"
        )
    return report
