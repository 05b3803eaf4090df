"""Checking a table: metadata against its layout, arrays, manifest, chunk files, checksums.

:func:`verify_table` returns a :class:`VerifyReport`; ``problems`` are damage (the CLI exits 1),
``warnings`` are states that are not damage (an unfinished init, leftover temporary files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import EngramError
from .core.blocksums import BlockSumsCheck
from .core.checks import metadata_problems, unfinished_reason
from .core.codec import chunk_key, crc32_of
from .core.lock import active_writer
from .core.manifest import (
    CHECKSUM_KEY,
    checksum_problems,
    read_group,
    read_group_attrs,
    table_state,
)
from .core.meta import TableMeta, check_vocab
from .core.store import TableStore, open_store
from .edits.check import check_commits
from .edits.place import commits_store

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
    commits: int = 0  # commits over the base (their segments checked; --deep: checksums)
    segments_checked: int = 0

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
            "commits": self.commits,
            "segments_checked": self.segments_checked,
        }


def _check_files(
    store: TableStore,
    meta: TableMeta,
    manifest: dict,
    layer_id: int,
    deep: bool,
    report: VerifyReport,
    progress,
    blocks=None,
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
            report.problems.append(
                f"manifest lists {where}, outside the layer's {n_chunks}; "
                f"{table_remedy(meta, manifest)}"
            )
            continue
        if not (isinstance(entry, list) and len(entry) >= 2):
            report.problems.append(
                f"manifest entry of {where} is malformed: {entry!r}; {table_remedy(meta, manifest)}"
            )
            continue
        key = chunk_key(layer_id, chunk_index)
        file = store.where(key)
        size = sizes.get(f"{chunk_index}/0")
        if size is None:
            report.problems.append(
                f"{where}: {_absent(store, key, sizes, chunk_index)}; "
                f"{chunk_remedy(meta, manifest, entry)}"
            )
            continue
        if size != entry[1]:
            how = "truncated" if size < entry[1] else "it grew: bytes were written past its end"
            report.problems.append(
                f"{where}: {file} has {size} bytes, the manifest says {entry[1]} ({how}); "
                f"{chunk_remedy(meta, manifest, entry)}"
            )
            continue
        if deep:
            to_read.append((chunk_index, entry))
    _check_checksums(store, meta, manifest, layer_id, to_read, report, progress, blocks)
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
    if unrecorded and meta.status == "complete":  # every chunk of it was recorded
        report.problems.append(
            f"chunk {min(unrecorded)} of layer {layer_id}: not in the manifest of this complete "
            f"table, so its checksum is unknown ({len(unrecorded)} such chunks in the layer); "
            f"{table_remedy(meta, manifest)}"
        )
    elif unrecorded and meta.status != "initializing":  # an unfinished table: one problem
        report.warnings.append(
            f"layer {layer_id}: {len(unrecorded)} chunk files are not in the manifest (an "
            f"interrupted write; first: chunk {min(unrecorded)}); they read as init values"
        )
    if temporary:
        report.warnings.append(f"layer {layer_id}: leftover temporary files: {temporary[:3]}")


def _absent(store: TableStore, key: str, sizes: dict, chunk_index: int) -> str:
    """What stands where a chunk file should be: nothing, or a directory."""
    inside = any(k.startswith(f"{chunk_index}/0/") for k in sizes)
    if inside or (store.is_local and store.location_of(key).is_dir()):
        return f"{store.where(key)} is a directory, not a chunk file"
    return f"file {store.where(key)} is missing"


def _check_checksums(
    store: TableStore,
    meta: TableMeta,
    manifest: dict,
    layer_id: int,
    to_read: list,
    report: VerifyReport,
    progress,
    blocks=None,
) -> None:
    """Re-read chunks and compare CRC-32s; a remote store fetches a batch concurrently."""
    batch = 1 if store.supports_mmap else REMOTE_READ_BATCH  # local files: one at a time
    for start in range(0, len(to_read), batch):
        group = to_read[start : start + batch]
        keys = [chunk_key(layer_id, chunk_index) for chunk_index, _ in group]
        try:
            fetched = store.get_many(keys)
        except OSError as exc:  # local stores read one chunk per batch
            report.problems.append(
                f"chunk {group[0][0]} of layer {layer_id}: cannot read {store.where(keys[0])} "
                f"({exc.strerror or exc}); {chunk_remedy(meta, manifest, group[0][1])}"
            )
            continue
        for (chunk_index, entry), key in zip(group, keys, strict=True):
            where, data = f"chunk {chunk_index} of layer {layer_id}", fetched[key]
            if data is None:
                report.problems.append(
                    f"{where}: file {store.where(key)} is missing; "
                    f"{chunk_remedy(meta, manifest, entry)}"
                )
                continue
            report.chunks_checked += 1
            report.bytes_checked += len(data)
            if crc32_of(data) != entry[0]:
                report.problems.append(
                    f"{where}: {store.where(key)} fails its checksum (corrupted); "
                    f"{chunk_remedy(meta, manifest, entry)}"
                )
            elif blocks is not None and (
                line := blocks.check_chunk(layer_id, chunk_index, entry[0], data)
            ):
                report.problems.append(line)
            if progress:
                progress(report.bytes_checked, report.bytes_to_check)


def _check_commits(store: TableStore, report: VerifyReport, deep: bool) -> None:
    """The commits over the base: every segment present, its size (``deep``: its CRC-32)."""
    found = check_commits(store, deep=deep)
    report.commits, report.segments_checked = found.commits, found.segments_checked
    report.bytes_checked += found.bytes_checked
    report.problems += found.problems
    report.warnings += found.warnings


def verify_table(
    path,
    *,
    deep: bool = False,
    vocab=None,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict | None = None,
    commits_dir=None,
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
    commits_dir : str or Path, optional
        The table's commits directory (:mod:`engramctl.table.edits.place`), if not its own.
    """
    store = open_store(path, storage_options)
    attrs, _ = read_group_attrs(store)
    meta, manifest = read_group(store, check=False)  # not a table / newer format: EngramError
    report = VerifyReport(path=store.url, deep=deep)
    report.problems += [
        f"{p}; {table_remedy(meta, manifest, whole=True)}" for p in checksum_problems(attrs)
    ]
    if CHECKSUM_KEY not in attrs:
        report.warnings.append(
            "the metadata has no checksum (written by an older engramctl); the next write of "
            "the table adds one"
        )
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
    report.problems += [
        f"{p}; {table_remedy(meta, manifest, whole=True)}" for p in metadata_problems(store, meta)
    ]
    unknown = sorted(set(manifest) - set(meta.layers))
    if unknown:
        report.problems.append(
            f"manifest lists chunks of unknown layers {unknown}; {table_remedy(meta, manifest)}"
        )
    _check_commits(
        commits_store(store, table_state(meta, manifest), commits_dir, create=False), report, deep
    )
    if meta.linked:  # rows live in the checkpoint's shards: check those instead of chunks
        from .formats.verify_linked import verify_linked

        verify_linked(store.root, meta, manifest, report, deep=deep, progress=progress)
        return report
    blocks = BlockSumsCheck(store, meta)  # block checksums: their files, and (deep) each record
    report.problems += blocks.errors
    for layer_id in meta.layers:
        _check_files(store, meta, manifest, layer_id, deep, report, progress, blocks)
    if why := unfinished_reason(meta):  # not damage, but not a table to read either
        report.problems.append(
            f"{why.removeprefix('is ')} ({report.chunks_written} of {report.chunks_total} chunks "
            "written; readers refuse it until then)"
        )
    holder = active_writer(store.root) if store.supports_writes else None
    if holder is not None and report.problems:  # a write under way looks like damage
        raise EngramError(
            f"{store.url} is being written by {holder}: its files changed during the check, so "
            "damage cannot be told from the write under way; verify again when it has finished"
        )
    if holder is not None:
        report.warnings.append(f"the table was being written by {holder} during the check")
    return report


def add_block_checksums(path, *, block_bytes="4K", progress=None):
    """``verify --add-block-checksums``: record the block checksums of a table's chunk files
    (:func:`engramctl.table.core.blocksums.add_block_checksums`) or, for a linked table, of the
    checkpoint tensors it reads
    (:func:`~engramctl.table.formats.verify_linked.add_link_block_checksums`).
    Returns a :class:`~engramctl.table.core.blocksums.BlockSumsReport`."""
    from .core import blocksums

    size = blocksums.parse_block_size(block_bytes)
    store = open_store(path)
    meta, _ = read_group(store)
    if meta.linked:
        from .formats.verify_linked import add_link_block_checksums

        return add_link_block_checksums(store.root, meta, block_bytes=size, progress=progress)
    return blocksums.add_block_checksums(path, block_bytes=size, progress=progress)


def holds_written_rows(manifest: dict) -> bool:
    """Whether some chunk holds rows that were written (an import, training), not init values."""
    return any(
        isinstance(entry, list) and len(entry) > 2 and entry[2] != "init"
        for chunks in manifest.values()
        for entry in chunks.values()
    )


def table_remedy(meta: TableMeta, manifest: dict, *, whole: bool = False) -> str:
    """What to do about damage to a table: how its rows can be had again. ``whole``: its
    metadata is damaged, so a resume (which re-checks the metadata) cannot help."""
    if unfinished_reason(meta):
        command = "import" if meta.sources else "init-table"
        if whole:
            return f"rerun the same `engramctl {command}` command with --overwrite"
        return f"rerun the same `engramctl {command}` command: the resume rewrites damaged chunks"
    if meta.sources and meta.sources.get("mode") == "copy":
        return "restore the table from a copy, or run `engramctl import` again with --overwrite"
    if meta.runs or meta.lazy or holds_written_rows(manifest):
        return (
            "restore the table from a copy (its rows were written by an import or training; "
            "init-table cannot rebuild them)"
        )
    return (
        "restore the table from a copy, or rerun `engramctl init-table` with --overwrite (it "
        "holds init values only)"
    )


def chunk_remedy(meta: TableMeta, manifest: dict, entry) -> str:
    """What to do about one damaged chunk: an init chunk of a complete init-made table is
    rewritten by rerunning the same ``init-table``; any other needs the table's own remedy."""
    source = entry[2] if isinstance(entry, list) and len(entry) > 2 else None
    if source == "init" and meta.status == "complete" and not meta.sources and not meta.lazy:
        return "rerun the same `engramctl init-table` command: it rewrites damaged init chunks"
    return table_remedy(meta, manifest)
