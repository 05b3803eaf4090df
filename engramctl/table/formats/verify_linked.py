"""Verifying a linked table: its shard files unchanged, and (deep) their bytes unchanged.

Plain ``verify`` compares each linked file's size and safetensors header hash with the link's
record. ``--deep`` streams every row of every layer from the shards (one chunk buffer, bounded
memory), computes the CRC-32 each chunk would have in a copied table, refuses NaN codes and NaN
scales (naming the first row), and records the checksums in the manifest the first time
(source ``"link"``); later runs compare against them, so a shard rewritten in place with the
same header is caught. It also checks every block of the linked tensors against their block
checksums (:mod:`engramctl.table.sources.linkblocks`), or records them the first time.
:func:`add_link_block_checksums` (``verify --add-block-checksums`` on a linked table) records
them afresh.
"""

from __future__ import annotations

from ..core.blocksums import BlockSumsReport
from ..core.codec import crc32_of
from ..core.fp8_check import InvalidRowsError, check_fp8_rows
from ..core.lock import WriterLock
from ..core.manifest import read_group, write_group_attrs
from ..sources.linkblocks import (
    BLOCK_BYTES,
    LinkBlockCheck,
    linked_bytes,
    record_all_link_sums,
    record_link_sums,
)
from ..sources.linked import SourceReader, Span, check_sources, local_reader
from ..sources.remote import is_remote

LINK_SOURCE = "link"


def verify_linked(path, meta, manifest, report, *, deep: bool, progress) -> None:
    """Add a linked table's problems to ``report`` (a :class:`~.verify.VerifyReport`)."""
    problems = check_sources(meta.sources, path)
    report.problems.extend(problems)
    for layer_id, layer in meta.layers.items():
        report.chunks_total += layer.n_chunks(meta.chunk_rows)
        report.chunks_written += len(manifest.get(layer_id, {}))
    if not deep or problems:
        return
    report.bytes_to_check = report.chunks_total * meta.chunk_bytes + linked_bytes(meta)
    recorded = 0
    for layer_id in meta.layers:
        entry = meta.sources["layers"][str(layer_id)]
        if is_remote(entry["weight"]["file"]):
            reader = _RemoteRows(local_reader(path, meta.sources, layer_id), meta, entry)
        else:
            reader = SourceReader(
                Span.recorded(entry["weight"], path),
                Span.recorded(entry["scale"], path),
                meta.chunk_rows,
            )
        checksums = manifest.setdefault(layer_id, {})
        try:
            for c in range(meta.layers[layer_id].n_chunks(meta.chunk_rows)):
                start, stop = meta.chunk_span(layer_id, c)
                rows = reader.rows(start, stop)
                where = f"{reader.weight.path} (layer {layer_id})"
                try:
                    check_fp8_rows(rows[: stop - start], meta.dim, first_row=start, where=where)
                except InvalidRowsError as exc:
                    report.problems.append(str(exc))
                crc = crc32_of(rows)
                old = checksums.get(c)
                if old is None:
                    checksums[c] = [crc, meta.chunk_bytes, LINK_SOURCE]
                    recorded += 1
                elif old[0] != crc:
                    report.problems.append(
                        f"chunk {c} of layer {layer_id} (rows {start}..{stop - 1}) of "
                        f"{reader.weight.path} changed since its checksum was recorded"
                    )
                report.chunks_checked += 1
                report.bytes_checked += meta.chunk_bytes
                if progress:
                    progress(report.bytes_checked, report.bytes_to_check)
        finally:
            reader.close()
    if recorded:
        with WriterLock(path):
            _, current = read_group(path)
            for layer_id, checksums in manifest.items():
                current.setdefault(layer_id, {}).update(checksums)
            write_group_attrs(path, meta, current)
        report.warnings.append(
            f"recorded the checksums of {recorded} chunks of the linked shards; later "
            "verify --deep runs compare against them"
        )
    _check_block_sums(path, meta, report, progress)


class _RemoteRows:
    """``rows(start, stop)`` of a layer linked to URLs, as :class:`SourceReader` gives them."""

    def __init__(self, read, meta, entry):
        self.read, self.meta = read, meta
        self.weight = Span.recorded(entry["weight"], ".")

    def rows(self, start: int, stop: int):
        import numpy as np

        dim, rows = self.meta.dim, np.zeros((self.meta.chunk_rows, self.meta.row_width), np.uint8)
        for part, width, col in ((0, dim, 0), (1, dim // 32, dim)):
            data = self.read(part, start * width, (stop - start) * width)
            rows[: stop - start, col : col + width] = np.frombuffer(data, np.uint8).reshape(
                -1, width
            )
        return rows

    def close(self) -> None:
        pass


def _check_block_sums(path, meta, report, progress) -> None:
    """Compare every block of the linked tensors with its checksum, or record them."""
    recorded = 0

    def step(n: int) -> None:
        report.bytes_checked += n
        if progress:
            progress(report.bytes_checked, report.bytes_to_check)

    for layer_id in meta.layers:
        read = local_reader(path, meta.sources, layer_id)
        try:
            checks = LinkBlockCheck.open(path, meta, layer_id)
        except Exception as exc:  # noqa: BLE001 - a damaged file is a problem line
            report.problems.append(str(exc))
            continue
        if checks is None:
            if not report.problems:  # never record the sums of bytes that fail other checks
                with WriterLock(path):
                    record_link_sums(path, meta, layer_id, read, step)
                recorded += 1
            continue
        report.problems.extend(checks.compare(read, step))
    if recorded:
        report.warnings.append(
            f"recorded the block checksums of {recorded} linked layers; gathers now check each "
            "block of the shards the first time they read it"
        )


def add_link_block_checksums(path, meta, *, block_bytes: int, progress) -> BlockSumsReport:
    """Record (again) the block checksums of every linked layer, holding the writer lock."""
    if block_bytes != BLOCK_BYTES:
        from ...errors import UsageError

        raise UsageError(
            f"{path} is linked to a checkpoint: its block checksums use {BLOCK_BYTES // 1024} "
            "KiB blocks; drop --block-size"
        )
    problems = check_sources(meta.sources, path)
    if problems:
        from ...errors import EngramError

        raise EngramError(problems[0])
    with WriterLock(path):
        done = record_all_link_sums(
            path, meta, lambda layer_id: local_reader(path, meta.sources, layer_id), progress
        )
    return BlockSumsReport(str(path), BLOCK_BYTES, 0, done, (), linked_layers=len(meta.layers))
