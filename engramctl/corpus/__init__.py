"""Corpus reading: find files (directories, globs, compressed: ``files``), read them as batches
of document pieces in every format hash-stats and the model read (``readers``: text, JSON Lines,
Parquet, token streams), tokenize text on a background thread (``tokenize``), and cut files into
byte-range shards for scale-out (``shards``).

Documents are never joined here; consumers carry the n-gram context from piece to piece.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".files": (
        "CorpusOptions",
        "CorpusFile",
        "CorpusWarnings",
        "discover_files",
        "estimate_tokens",
    ),
    ".readers": ("Batch", "read_batches", "token_context"),
    ".tokenize": ("TextTokenizer", "tokenized_batches"),
    ".shards": ("split_files",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
