"""Verifying a linked table: its shard files unchanged, and (deep) their bytes unchanged.

Plain ``verify`` compares each linked file's size and safetensors header hash with the link's
record. ``--deep`` streams every row of every layer from the shards (one chunk buffer, bounded
memory), computes the CRC-32 each chunk would have in a copied table, refuses NaN codes and NaN
scales (naming the first row), and records the checksums in the manifest the first time
(source ``"link"``); later runs compare against them, so a shard rewritten in place with the
same header is caught.
"""

from __future__ import annotations

from ..core.codec import crc32_of
from ..core.fp8_check import InvalidRowsError, check_fp8_rows
from ..core.lock import WriterLock
from ..core.manifest import read_group, write_group_attrs
from ..sources.linked import SourceReader, Span, check_sources

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
    report.bytes_to_check = report.chunks_total * meta.chunk_bytes
    recorded = 0
    for layer_id in meta.layers:
        entry = meta.sources["layers"][str(layer_id)]
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
