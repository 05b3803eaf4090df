"""Storage dtypes of table rows and how many bytes a row of each takes.

float8_e4m3fn rows carry one ue8m0 (power-of-two exponent) scale byte per block of
``FP8_SCALE_BLOCK`` values, stored right after the row's values so one row is one contiguous read
(DeepSeek-V4.1 serving format: 256 values + 8 scale bytes).
"""

from __future__ import annotations

from .errors import UsageError

FP8_SCALE_BLOCK = 32
DTYPE_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}
DTYPES = tuple(DTYPE_ITEMSIZE)


def parse_dtype(name: str) -> str:
    """Validate a storage dtype name.

    >>> parse_dtype("bfloat16")
    'bfloat16'
    """
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn"}
    name = aliases.get(name, name)
    if name not in DTYPE_ITEMSIZE:
        raise UsageError(f"unknown dtype {name!r}; expected one of: {', '.join(DTYPES)}")
    return name


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes of one stored row.

    >>> row_bytes(256, "float8_e4m3fn"), row_bytes(64, "float32")
    (264, 256)
    """
    dtype = parse_dtype(dtype)
    if dim < 1:
        raise UsageError(f"dim must be at least 1, got {dim}")
    if dtype == "float8_e4m3fn":
        if dim % FP8_SCALE_BLOCK:
            raise UsageError(
                f"float8_e4m3fn rows need dim divisible by {FP8_SCALE_BLOCK}, got {dim}"
            )
        return dim + dim // FP8_SCALE_BLOCK
    return dim * DTYPE_ITEMSIZE[dtype]


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
