"""Corpus readers: corpus files streamed as batches of document pieces, one reader per format.

Formats: plain text (one document per file, or blank-line-separated documents), JSON Lines with a
text (or token-id list) field, Parquet with a string or list-of-int column (read with pyarrow in
record batches), and pre-tokenized streams (``.npy``; flat ``uint16``/``uint32`` binaries with a
document separator id). Text and JSON Lines may be ``.gz`` or ``.zst`` compressed. Nothing is read
whole: long documents come as several pieces (``doc_start`` false on all but the first), and a
consumer carries the n-gram context from one piece to the next. Documents are never joined.

Which files and how to read them (discovery, formats, options) is :mod:`engramctl.corpus.files`.
Text batches are tokenized by :mod:`engramctl.corpus.tokenize`. Every batch says where each
piece came from, so errors name the file and line or row.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from ..errors import EngramError, UsageError
from ..vocab import METADATA_KEY
from .files import (
    BYTES_PER_TOKEN,
    CorpusFile,
    CorpusOptions,
    CorpusWarnings,
    flat_dtype,
)


@dataclass
class Batch:
    """Pieces of documents: text (``texts``) or raw token ids (``ids`` + ``offsets``).

    ``where[s]`` is ``(path, unit, index)`` of piece ``s`` (unit: line, row, document, token).
    """

    doc_start: list  # per piece: does a document start here?
    where: list  # per piece: (path, unit, index)
    file_index: int  # which CorpusFile the batch ends in
    file_fraction: float  # how far through that file (0..1)
    texts: list | None = None
    ids: np.ndarray | None = None
    offsets: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[0])

    def locate(self, index: int) -> str:
        """Where the token at flat ``index`` came from, e.g. ``a.parquet row 17``."""
        piece = int(np.searchsorted(self.offsets, index, side="right")) - 1
        path, unit, at = self.where[piece]
        if unit == "token":
            at += index - int(self.offsets[piece])
        return f"{path} {unit} {at}"


# --------------------------------------------------------------------------- raw readers
def _open_binary(f: CorpusFile):
    """(decompressed stream, raw file handle for progress)."""
    try:
        raw = open(f.path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise EngramError(f"cannot read {f.path}: {exc.strerror or exc}") from exc
    if f.compression == "gzip":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
    if f.compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), raw
    return raw, raw


def _lines(f: CorpusFile) -> Iterator[tuple[int, bytes, float]]:
    """``(line number, line bytes, fraction of the file read)``; one clear error if unreadable."""
    stream, raw = _open_binary(f)
    lineno = f.first_line - 1
    start, stop = f.span or (0, None)
    try:
        with raw:
            raw.seek(start)  # (a span is only ever made for uncompressed files)
            for lineno, line in enumerate(stream, start=f.first_line):  # noqa: B007
                if stop is not None and start >= stop:
                    break
                start += len(line)
                yield lineno, line, raw.tell() / f.size if f.size else 1.0
    except Exception as exc:  # gzip/zstd/OS errors: the consumer's own errors never get here
        kind = f"{f.compression}-compressed " if f.compression else ""
        raise EngramError(f"{f.path} line {lineno + 1}: cannot read {kind}data ({exc})") from exc


def _decode(data: bytes, where: str, warnings: CorpusWarnings) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        warnings.add("invalid_utf8", where, text.count("\ufffd") - data.count("\ufffd".encode()))
        return text


def _text_pieces(f, options, warnings) -> Iterator[tuple[str, bool, tuple, float]]:
    """Plain text: ``(text, doc_start, where, fraction)`` pieces cut at line ends."""
    parts: list[bytes] = []
    size = 0
    start = True
    first_line = 1
    for lineno, line, fraction in _lines(f):
        blank = options.doc_sep and not line.strip()
        if not blank:
            if not parts and start:
                first_line = lineno
            parts.append(line)
            size += len(line)
        if parts and (blank or size >= options.piece_bytes):
            text = _decode(b"".join(parts), f"{f.path} line {first_line}", warnings)
            yield text, start, (str(f.path), "line", first_line), fraction
            start, parts, size, first_line = blank, [], 0, lineno + 1
        elif blank:
            start = True
    if parts:
        text = _decode(b"".join(parts), f"{f.path} line {first_line}", warnings)
        yield text, start, (str(f.path), "line", first_line), 1.0


def _jsonl_records(f, options, warnings) -> Iterator[tuple[object, tuple, float]]:
    """JSON Lines: ``(text or id list, where, fraction)`` per non-blank line."""
    key = options.tokens_field or options.text_field
    for lineno, line, fraction in _lines(f):
        if not line.strip():
            continue
        text = _decode(line, f"{f.path} line {lineno}", warnings)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EngramError(f"{f.path} line {lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise EngramError(f"{f.path} line {lineno}: expected a JSON object, got {text[:40]!r}")
        if key not in record:
            raise EngramError(
                f"{f.path} line {lineno}: no field {key!r} (fields: "
                f"{', '.join(sorted(record)) or 'none'}); {options.choose_field_hint()}"
            )
        value = record[key]
        if options.tokens_field:
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise EngramError(f"{f.path} line {lineno}: field {key!r} is not a list of ints")
        elif not isinstance(value, str):
            raise EngramError(
                f"{f.path} line {lineno}: field {key!r} is {type(value).__name__}, not text"
            )
        yield value, (str(f.path), "line", lineno), fraction


def _parquet_batches(f, options) -> Iterator[tuple[object, int, float]]:
    """Parquet: ``(arrow array, first row, fraction)`` per record batch of one column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f.path)
    except (OSError, pa.ArrowException) as exc:
        raise EngramError(f"{f.path} is not a readable Parquet file ({exc})") from exc
    column = options.tokens_field or options.text_field
    schema = parquet.schema_arrow
    if METADATA_KEY in (schema.metadata or {}):
        raise EngramError(f"{f.path} is an engramctl vocab file, not a corpus; pass it as --vocab")
    if column not in schema.names:
        raise EngramError(
            f"{f.path}: no column {column!r} (columns: {', '.join(schema.names)}); "
            f"{options.choose_field_hint()}"
        )
    kind = schema.field(column).type
    if options.tokens_field:
        ok = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(
            kind.value_type
        )
        expected = "a list of integers"
    else:
        ok = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        expected = "a string column (for token ids use --tokens-field)"
    if not ok:
        raise EngramError(f"{f.path}: column {column!r} has type {kind}, expected {expected}")
    rows = parquet.metadata.num_rows or 1
    groups = range(*(f.span or (0, parquet.num_row_groups)))
    done = sum(parquet.metadata.row_group(g).num_rows for g in range(groups.start))
    try:
        for record_batch in parquet.iter_batches(
            batch_size=4096, row_groups=groups, columns=[column]
        ):
            array = record_batch.column(0)
            yield array, done, min(1.0, (done + len(array)) / rows)
            done += len(array)
    except (OSError, pa.ArrowException) as exc:
        raise EngramError(f"{f.path} row {done}: cannot read Parquet data ({exc})") from exc


def _token_arrays(f, options) -> Iterator[tuple[np.ndarray, bool, tuple, int]]:
    """Token files: ``(ids, starts_documents, where, units in the file)``.

    2-D .npy rows are documents; 1-D and flat streams are split by ``--doc-sep-id`` (one document
    without it).
    """
    if f.path.suffix.lower() == ".npy":
        try:
            array = np.load(f.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise EngramError(f"{f.path} is not a readable .npy array ({exc})") from exc
        if array.dtype.kind not in "iu":
            raise EngramError(f"{f.path}: token ids must be integers, got dtype {array.dtype}")
        if array.ndim == 2:
            for row in range(*(f.span or (0, array.shape[0]))):
                yield np.asarray(array[row]), True, (str(f.path), "row", row), array.shape[0]
            return
        if array.ndim != 1:
            raise EngramError(f"{f.path}: expected a [T] or [B, T] array, got {list(array.shape)}")
    else:
        dtype = np.dtype(flat_dtype(f, options))
        if f.size % dtype.itemsize:
            raise EngramError(
                f"{f.path}: {f.size} bytes is not a whole number of {dtype.name} token ids; "
                "check --token-dtype"
            )
        array = np.memmap(f.path, dtype=dtype, mode="r") if f.size else np.zeros(0, dtype)
    start, stop = f.span or (0, array.shape[0])
    yield array[start:stop], False, (str(f.path), "token", start), max(1, array.shape[0])


# ----------------------------------------------------------------------- batch assembly
class _Assembler:
    """Collects pieces into :class:`Batch` objects of about ``batch_tokens`` tokens."""

    def __init__(self, batch_tokens: int, text: bool):
        self.limit = batch_tokens * (BYTES_PER_TOKEN if text else 1)
        self.text = text
        self._reset()

    def _reset(self):
        self.items, self.doc_start, self.where, self.amount = [], [], [], 0

    def add(self, item, doc_start: bool, where: tuple) -> bool:
        self.items.append(item)
        self.doc_start.append(doc_start)
        self.where.append(where)
        self.amount += len(item)
        return self.amount >= self.limit

    def take(self, file_index: int, fraction: float) -> Batch | None:
        if not self.items:
            return None
        batch = Batch(self.doc_start, self.where, file_index, fraction)
        if self.text:
            batch.texts = self.items
        else:
            lengths = np.array([len(a) for a in self.items], dtype=np.int64)
            batch.offsets = np.concatenate([[0], np.cumsum(lengths)])
            batch.ids = (
                np.concatenate([np.asarray(a, dtype=np.int64) for a in self.items])
                if self.items
                else np.zeros(0, np.int64)
            )
        self._reset()
        return batch


def token_context(f: CorpusFile, options: CorpusOptions, length: int) -> tuple[np.ndarray, bool]:
    """The raw ids of the document before a token-stream shard (up to ``length``, fewer after a
    document start) and whether the shard starts a document; ``([], True)`` for other files."""
    start = f.span[0] if f.span and f.format == "tokens" else 0
    if start == 0 or f.path.suffix.lower() == ".npy" and np.load(f.path, mmap_mode="r").ndim == 2:
        return np.zeros(0, np.int64), True
    stream = next(_token_arrays(replace(f, span=(max(0, start - length), start)), options))[0]
    before = np.asarray(stream, dtype=np.int64)
    if options.doc_sep_id is not None:
        cuts = np.flatnonzero(before == options.doc_sep_id)
        if cuts.size:
            before = before[cuts[-1] + 1 :]
            return before, before.size == 0
    return before, False


def _stream_pieces(array, starts_docs, where, options, at_doc_start: bool = True):
    """Split a flat token stream at ``doc_sep_id`` into pieces of at most ``batch_tokens``."""
    path, unit, base = where
    if starts_docs:
        yield array, True, where
        return
    step = options.batch_tokens
    sep = options.doc_sep_id
    for lo in range(0, array.shape[0], step):
        chunk = np.asarray(array[lo : lo + step])
        cuts = np.flatnonzero(chunk == sep) if sep is not None else np.zeros(0, np.int64)
        bounds = [0, *(cuts + 1).tolist()]
        ends = [*cuts.tolist(), chunk.shape[0]]
        for i, (a, b) in enumerate(zip(bounds, ends, strict=True)):
            start = at_doc_start if i == 0 else True
            if b > a:
                yield chunk[a:b], start, (path, unit, base + lo + a)
                at_doc_start = False
            else:
                at_doc_start = start
        if cuts.size and cuts[-1] == chunk.shape[0] - 1:
            at_doc_start = True


def read_batches(
    files: list[CorpusFile], options: CorpusOptions, warnings: CorpusWarnings
) -> Iterator[Batch]:
    """Every file's documents as :class:`Batch` es: text batches (``texts``) for text, jsonl
    and parquet string columns; id batches (``ids``) for token files and id columns."""
    options.validate()
    for index, f in enumerate(files):
        is_text = f.format != "tokens" and not options.tokens_field
        assembler = _Assembler(options.batch_tokens, is_text)
        if f.format == "text":
            if options.tokens_field:
                raise UsageError(f"{f.path}: --tokens-field needs jsonl or parquet input")
            for text, start, where, fraction in _text_pieces(f, options, warnings):
                if assembler.add(text, start, where):
                    yield assembler.take(index, fraction)
        elif f.format == "jsonl":
            for value, where, fraction in _jsonl_records(f, options, warnings):
                if not is_text:
                    value = _id_array(value, where)
                if assembler.add(value, True, where):
                    yield assembler.take(index, fraction)
        elif f.format == "parquet":
            for array, first_row, fraction in _parquet_batches(f, options):
                yield from _parquet_items(array, first_row, f, assembler, is_text, index, fraction)
        else:
            at_doc_start = True if f.span is None else token_context(f, options, 1)[1]
            for array, starts_docs, where, units in _token_arrays(f, options):
                pieces = _stream_pieces(array, starts_docs, where, options, at_doc_start)
                for piece, start, piece_where in pieces:
                    if assembler.add(piece, start, piece_where):
                        yield assembler.take(index, (piece_where[2] + 1) / units)
        last = assembler.take(index, 1.0)
        if last is not None:
            yield last


def _id_array(value: list, where: tuple) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.int64)
    except OverflowError:
        path, unit, at = where
        raise EngramError(f"{path} {unit} {at}: a token id does not fit in 64 bits") from None


def _parquet_items(array, first_row, f, assembler, is_text, index, fraction):
    import pyarrow.compute as pc

    path = str(f.path)
    if is_text:
        values = array.to_pylist()
        for row, text in enumerate(values):
            if assembler.add(text or "", True, (path, "row", first_row + row)):
                yield assembler.take(index, fraction)
        return
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    flat_array = pc.list_flatten(array)
    if flat_array.null_count:  # numpy would turn a null into -9223372036854775808
        first = int(np.flatnonzero(flat_array.is_null().to_numpy(zero_copy_only=False))[0])
        row = first_row + int(np.searchsorted(np.cumsum(lengths), first, side="right"))
        raise EngramError(f"{path} row {row}: a token id is null; the token list is damaged")
    flat = flat_array.to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    for row, (end, length) in enumerate(zip(ends.tolist(), lengths.tolist(), strict=True)):
        if assembler.add(flat[end - length : end], True, (path, "row", first_row + row)):
            yield assembler.take(index, fraction)
