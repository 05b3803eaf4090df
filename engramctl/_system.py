"""What the machine has and how sizes are written: cores, physical memory, byte sizes.

The one place that asks the operating system for the usable core count and the physical RAM, and
that parses (``8G``, ``512M``, ``75%``) and formats (``98.0 GiB``) byte sizes.
"""

from __future__ import annotations

import math
import os

from .errors import UsageError

DEFAULT_MEMORY_FRACTION = 0.75  # of physical RAM, when no memory limit is given


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_memory() -> int:
    """Bytes of physical RAM (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


def parse_memory(text: str | None, *, option: str = "--max-memory") -> int:
    """``"8G"``, ``"512M"``, ``"75%"`` (of physical RAM) or bytes; ``None`` is 75%.

    ``option`` names the flag in the error message.

    >>> parse_memory("2k"), parse_memory("1.5G")
    (2048, 1610612736)
    """
    if text is None:
        return int(physical_memory() * DEFAULT_MEMORY_FRACTION)
    value = str(text).strip().lower().removesuffix("b").removesuffix("i")
    try:
        percent = value.endswith("%")
        scale = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}.get(value[-1:], 1)
        number = float(value[:-1] if scale != 1 or percent else value)
        if not math.isfinite(number):  # nan, inf: no amount of memory
            raise ValueError(text)
    except (ValueError, IndexError):
        raise UsageError(f"{option}: expected e.g. 8G, 512M or 75%, got {text!r}") from None
    if percent:
        number, scale = physical_memory() * number / 100, 1
    if number <= 0:
        raise UsageError(f"{option} must be positive, got {text!r}")
    return int(number * scale)


def format_bytes(n: float) -> str:
    """Human-readable binary size.

    >>> format_bytes(98 * 2**30)
    '98.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


_RETURN_FREED = False


def return_freed_memory() -> None:
    """Have glibc serve blocks of 1 MiB and more from their own mappings, whatever its
    dynamic threshold has risen to, so a freed block goes back to the system at once (a
    build's row table grows in many blocks of tens of MiB, freed as it grows, on threads:
    kept in glibc's arenas they added ~400 MiB of RSS). Process-wide; a no-op elsewhere."""
    global _RETURN_FREED
    if _RETURN_FREED:
        return
    _RETURN_FREED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(1 << 20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
