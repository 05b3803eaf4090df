"""Lazy re-exports for package ``__init__`` modules: a name is imported on first use.

    __getattr__, __dir__ = lazy_exports(__name__, {".table": ("open_table", "Table")})

Keeps ``import engramctl.table`` cheap (no numba, zarr or torch until a name is used) and lets a
subpackage list its public API in one place without importing every module.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]):
    """Module-level ``__getattr__`` and ``__dir__`` serving the names of ``modules``
    (relative module -> the public names it holds)."""
    names = {name: module for module, held in modules.items() for name in held}

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(names)

    return __getattr__, __dir__
