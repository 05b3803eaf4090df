"""Corpus reading: find files (directories, globs, compressed: ``files``), read them as batches
of document pieces in every format hash-stats and the model read (``readers``: text, JSON Lines,
Parquet, token streams), tokenize text on a background thread (``tokenize``), and cut files into
byte-range shards for scale-out (``shards``).

Documents are never joined here; consumers carry the n-gram context from piece to piece.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "CorpusOptions": ".files",
    "CorpusFile": ".files",
    "CorpusWarnings": ".files",
    "Batch": ".readers",
    "discover_files": ".files",
    "read_batches": ".readers",
    "estimate_tokens": ".files",
    "token_context": ".readers",
    "TextTokenizer": ".tokenize",
    "tokenized_batches": ".tokenize",
    "split_files": ".shards",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
