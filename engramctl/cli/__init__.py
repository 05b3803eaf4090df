"""The engramctl command line: a thin typer layer over the library.

Each command module registers its commands on :data:`app`; heavy imports (numba, torch, zarr)
happen inside the commands, so ``engramctl --help`` stays fast.
"""

from __future__ import annotations

from . import (  # noqa: F401
    cacheplan_cmd,
    commits_cmd,
    counts_cmd,
    generate_cmd,
    hash_cmd,
    layout_cmd,
    lookup_cmd,
    model_cmd,
    stats_cmd,
    table_cmd,
    vocab_cmd,
)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
