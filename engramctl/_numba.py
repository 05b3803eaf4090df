"""numba set-up: a writable on-disk cache directory, even for read-only installs.

Import ``numba`` through this module (``from engramctl._numba import njit, prange``) so the cache
directory is configured before the first kernel is compiled.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cache_dir_is_writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def configure_cache_dir() -> str | None:
    """Point ``NUMBA_CACHE_DIR`` at a writable directory unless the user chose one.

    numba writes its cache next to the source file; when the package is installed read-only
    that fails, so kernels would be recompiled on every run. We fall back to
    ``$XDG_CACHE_HOME/engramctl/numba`` (``~/.cache/engramctl/numba``).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    package_pycache = Path(__file__).resolve().parent / "__pycache__"
    if _cache_dir_is_writable(package_pycache):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "engramctl" / "numba"
    if _cache_dir_is_writable(cache):
        os.environ["NUMBA_CACHE_DIR"] = str(cache)
        return str(cache)
    return None


configure_cache_dir()

from numba import get_num_threads, njit, prange, set_num_threads  # noqa: E402

__all__ = ["njit", "prange", "get_num_threads", "set_num_threads", "configure_cache_dir"]
