"""Corpus files: what to read and how: discovery, formats, reading options, token estimates.

:func:`discover_files` expands files, directories (recursively) and globs into
:class:`CorpusFile` entries whose format (text, JSON Lines, Parquet, token streams) and
compression (``.gz``, ``.zst``) come from the name or ``--format``; :class:`CorpusOptions` says
how to read them (fields, token dtype, document separator, batch size); :func:`estimate_tokens`
gives the up-front token estimate. The per-format readers are :mod:`engramctl.corpus.readers`.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dead import DeadRule
from ..errors import EngramError, UsageError
from ._globbing import expand_glob, unique_files

FORMATS = ("text", "jsonl", "parquet", "tokens")
SUFFIX_FORMATS = {
    ".txt": "text", ".text": "text", ".md": "text", ".rst": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".npy": "tokens", ".bin": "tokens", ".u16": "tokens", ".u32": "tokens",
}  # fmt: skip
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
# Typical bytes per token of text (for the up-front memory estimate only) and a guess at the
# compression ratio of .gz/.zst text.
BYTES_PER_TOKEN = 3
COMPRESSION_RATIO = 4


@dataclass(frozen=True)
class CorpusOptions:
    """How to read a corpus (defaults suit JSON Lines with a ``text`` field)."""

    format: str = "auto"  # auto (by suffix), text, jsonl, parquet or tokens
    text_field: str = "text"  # jsonl field / parquet column holding the text
    tokens_field: str | None = None  # jsonl field / parquet column of token-id lists instead
    doc_sep: bool = False  # plain text: blank lines separate documents (else one per file)
    doc_sep_id: int | None = None  # token streams: this id ends a document (not counted)
    dead_rule: DeadRule | None = None  # raw ids that are dead positions (negative ids always are)
    token_dtype: str | None = None  # flat binaries: uint16 or uint32 (.u16/.u32 imply it)
    batch_tokens: int = 1 << 20  # tokens per batch handed to the counter
    piece_bytes: int = 1 << 20  # long text documents are tokenized in pieces of about this
    field_flags: bool = True  # the command has --text-field/--tokens-field to suggest

    def choose_field_hint(self) -> str:
        """How the user picks another field: the flag, or (train/eval) the field to rename."""
        if not self.field_flags:
            return f"this command reads the {self.text_field!r} field; rename yours to it"
        return "choose one with " + ("--tokens-field" if self.tokens_field else "--text-field")

    def validate(self) -> None:
        if self.format not in ("auto", *FORMATS):
            raise UsageError(f"--format: expected auto or one of {', '.join(FORMATS)}")
        if self.token_dtype is not None and self.token_dtype not in TOKEN_DTYPES:
            raise UsageError(f"--token-dtype: expected uint16 or uint32, got {self.token_dtype!r}")
        if self.batch_tokens < 1 or self.piece_bytes < 1:
            raise UsageError("batch and piece sizes must be positive")
        if self.doc_sep_id is not None and self.doc_sep_id < 0:
            raise UsageError(
                f"--doc-sep-id must be a token id (0 or more), got {self.doc_sep_id}; a negative "
                "id in a token stream is a dead (image) position, never a separator"
            )

    def check_doc_sep_id(self, files) -> None:
        """Refuse ``doc_sep_id`` when no file is a token stream (it would be ignored)."""
        if self.doc_sep_id is not None and not any(f.format == "tokens" for f in files):
            names = ", ".join(str(f.path) for f in files[:2]) + (", ..." if len(files) > 2 else "")
            raise UsageError(
                f"--doc-sep-id splits token streams (.npy, .bin, .u16, .u32) only, and {names} "
                "holds none (records and text files are documents already); drop --doc-sep-id"
            )


@dataclass(frozen=True)
class CorpusFile:
    """One input file: its format, compression and size on disk."""

    path: Path
    format: str
    compression: str | None
    size: int
    # A shard of the file (``hash-stats --scheduler``): ``[start, stop)`` in bytes (text, jsonl;
    # cut at line starts), row groups (parquet), rows (2-D .npy) or tokens (1-D token streams).
    span: tuple[int, int] | None = None
    first_line: int = 1  # number of the line at the span's first byte (text, jsonl)


@dataclass
class CorpusWarnings:
    """Recoverable problems, counted: ``{kind: {"count": n, "first": "file line 3"}}``."""

    counts: dict = field(default_factory=dict)

    def add(self, kind: str, where: str, count: int = 1) -> None:
        entry = self.counts.setdefault(kind, {"count": 0, "first": where})
        entry["count"] += count


def _split_suffix(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def _classify(path: Path, fmt: str) -> CorpusFile | None:
    suffix, compression = _split_suffix(path)
    detected = SUFFIX_FORMATS.get(suffix)
    if fmt != "auto":
        detected = fmt
    if detected is None:
        return None
    if compression and detected in ("parquet", "tokens"):
        raise EngramError(f"{path}: {detected} files cannot be {compression}-compressed")
    return CorpusFile(path, detected, compression, path.stat().st_size)


def discover_files(inputs, *, format: str = "auto") -> list[CorpusFile]:
    """Expand files, directories (recursively) and globs into corpus files, sorted per input."""
    files: list[CorpusFile] = []
    seen: set[str] = set()  # real paths: each real file is read once (symlinks, loops)
    for item in inputs:
        item = str(item)
        if glob.has_magic(item) and not Path(item).exists():  # an existing path wins
            matches = expand_glob(item)
            if not matches:
                raise EngramError(f"no file matches {item}")
            paths = [m for m in matches if m.is_file()]
        elif Path(item).is_dir():
            paths = sorted(p for p in Path(item).rglob("*") if p.is_file())
        elif Path(item).exists():
            paths = [Path(item)]
        else:
            raise EngramError(f"corpus file not found: {item}")
        paths = unique_files(paths)
        found = [f for f in (_classify(p, format) for p in paths) if f is not None]
        if not found and len(paths) == 1 and not Path(item).is_dir():
            raise UsageError(
                f"{item}: cannot tell the format from its name; pass --format "
                f"({', '.join(FORMATS)})"
            )
        if not found:
            known = ", ".join(sorted(SUFFIX_FORMATS))
            raise EngramError(f"{item} holds no corpus files (looked for {known}, .gz, .zst)")
        files.extend(f for f in found if os.path.realpath(f.path) not in seen)
        seen.update(os.path.realpath(f.path) for f in found)
    if not files:
        raise UsageError("give at least one corpus file, directory or glob")
    return files


def estimate_tokens(files: list[CorpusFile], options: CorpusOptions) -> int:
    """Tokens to expect: exact for token arrays, about ``bytes / 3`` for text."""
    total = 0
    for f in files:
        if f.format == "tokens":
            total += f.size // token_itemsize(f, options)
        elif f.format == "parquet" and options.tokens_field:
            total += f.size // 2  # compressed int lists: a generous guess
        else:
            ratio = COMPRESSION_RATIO if f.compression else 1
            total += f.size * ratio // BYTES_PER_TOKEN
    return total


def token_itemsize(f: CorpusFile, options: CorpusOptions) -> int:
    if f.path.suffix.lower() == ".npy":
        return 4  # estimate only
    return np.dtype(flat_dtype(f, options)).itemsize


def flat_dtype(f: CorpusFile, options: CorpusOptions):
    suffix = f.path.suffix.lower()
    if options.token_dtype:
        return TOKEN_DTYPES[options.token_dtype]
    if suffix in (".u16", ".u32"):
        return np.uint16 if suffix == ".u16" else np.uint32
    raise UsageError(f"{f.path}: flat token files need --token-dtype uint16 or uint32")


def corpus_bytes(files: list[CorpusFile]) -> int:
    """Bytes of the corpus files as stored (compressed files count compressed)."""
    return sum(f.size for f in files)
