"""numba set-up: a writable on-disk cache directory, even for read-only installs.

Import ``numba`` through this module (``from engramctl._numba import njit, prange``) so the cache
directory is configured before the first kernel is compiled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir_is_writable(path: Path) -> bool:
    """Create ``path`` if needed and check a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def configure_cache_dir(package_dir: Path | None = None) -> str | None:
    """Point numba's cache at a writable directory unless the user chose one.

    numba writes its cache in ``__pycache__`` next to the source file; when the package is
    installed read-only that fails, so kernels would be recompiled on every run. We then fall back
    to ``$XDG_CACHE_HOME/engramctl/numba`` (``~/.cache/engramctl/numba``) by setting
    ``NUMBA_CACHE_DIR`` (and numba's config, if numba is already imported).

    Returns the directory chosen here, or ``None`` when the user's ``NUMBA_CACHE_DIR`` or the
    package's own ``__pycache__`` is used (or nothing writable was found: no cache then).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    package_dir = PACKAGE_DIR if package_dir is None else Path(package_dir)
    if cache_dir_is_writable(package_dir / "__pycache__"):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "engramctl" / "numba"
    if not cache_dir_is_writable(cache):
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    if "numba.core.config" in sys.modules:  # numba read the environment already
        sys.modules["numba.core.config"].CACHE_DIR = str(cache)
    return str(cache)


def cache_is_possible(package_dir: Path | None = None) -> bool:
    """Whether numba can write its cache anywhere: the user's ``NUMBA_CACHE_DIR``, the package's
    ``__pycache__`` or the fallback chosen by :func:`configure_cache_dir`."""
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen:
        return cache_dir_is_writable(Path(chosen))
    package_dir = PACKAGE_DIR if package_dir is None else Path(package_dir)
    return cache_dir_is_writable(package_dir / "__pycache__")


configure_cache_dir()
CACHE_POSSIBLE = cache_is_possible()

import numba  # noqa: E402
from numba import get_num_threads, prange, set_num_threads  # noqa: E402


def njit(*args, **kwargs):
    """``numba.njit``, without ``cache=True`` when nothing is writable (a read-only install with
    no writable home): numba would refuse to compile ("no locator available"); the kernels are
    then compiled on every run instead."""
    if not CACHE_POSSIBLE:
        kwargs["cache"] = False
    return numba.njit(*args, **kwargs)


def _pointer_intrinsic():
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def address_as_pointer(typingctx, address):
        """An int64 address as a ``void*`` (for ``numba.carray``)."""
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(address), codegen

    return address_as_pointer


# An int64 address as a ``void*`` inside a kernel (``carray(address_as_pointer(a), shape, dtype)``):
# the gather kernels read rows of many memory maps by address.
address_as_pointer = _pointer_intrinsic()

__all__ = [
    "address_as_pointer",
    "njit",
    "prange",
    "get_num_threads",
    "set_num_threads",
    "configure_cache_dir",
    "cache_is_possible",
    "cache_dir_is_writable",
]
