"""engramctl: build and manage Engram memory tables.

The public API is imported lazily so that ``import engramctl`` (and the CLI) stays fast and never
pulls in torch or numba before they are needed::

    from engramctl import CanonicalVocab, EngramLayout, NgramHasher
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CanonicalVocab": "engramctl.vocab",
    "EngramLayout": "engramctl.layout",
    "NgramHasher": "engramctl.hashing",
    "HashStream": "engramctl.hashing",
    "EngramError": "engramctl.errors",
    "load_tokenizer": "engramctl.tokenizer",
    "open_table": "engramctl.table",
    "create_table": "engramctl.table",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engramctl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
