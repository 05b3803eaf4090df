"""Storage dtypes of table rows: bytes per row, and encoding to and from float32.

float8_e4m3fn rows carry one ue8m0 (power-of-two exponent) scale byte per block of
``FP8_SCALE_BLOCK`` values, stored right after the row's values so one row is one contiguous read
(DeepSeek-V4.1 serving format: 256 values + 8 scale bytes).
"""

from __future__ import annotations

import numpy as np

from ...errors import UsageError
from .fp8 import FP8_SCALE_BLOCK, fp8_e4m3fn_decode, ue8m0_scales

DTYPE_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}
DTYPES = tuple(DTYPE_ITEMSIZE)
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn"}


def parse_dtype(name: str) -> str:
    """Validate a storage dtype name.

    >>> parse_dtype("bfloat16")
    'bfloat16'
    """
    name = DTYPE_ALIASES.get(name, name)
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


# ------------------------------------------------------------------------- storage layout
# numpy dtype a row is stored as; bfloat16 as its raw 16 bits, fp8 rows as bytes (values, scales).
STORAGE_DTYPE = {
    "float32": "float32",
    "bfloat16": "uint16",
    "float16": "float16",
    "float8_e4m3fn": "uint8",
}


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a table of logical ``dtype`` stores (and gathers) rows as.

    >>> storage_dtype("bfloat16")
    dtype('uint16')
    """
    return np.dtype(STORAGE_DTYPE[parse_dtype(dtype)])


def row_width(dim: int, dtype: str) -> int:
    """Elements of the storage dtype per stored row (fp8: values then scale bytes).

    >>> row_width(256, "float8_e4m3fn"), row_width(64, "bfloat16")
    (264, 64)
    """
    return row_bytes(dim, dtype) // storage_dtype(dtype).itemsize


# --------------------------------------------------------------------------------- bfloat16
def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the raw ``uint16`` bits.

    >>> float32_to_bf16_bits(np.array([1.0, -2.0], np.float32)).tolist()
    [16256, 49152]
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(values)
    rounded = rounded.astype(np.uint16)
    if nan.any():  # keep NaN a (quiet) NaN instead of rounding its payload into infinity
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (``uint16``) to float32 exactly.

    >>> bf16_bits_to_float32(np.array([16256], np.uint16)).tolist()
    [1.0]
    """
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


def encode_rows(values: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float rows ``[n, dim]`` to stored rows ``[n, row_width]`` of the storage dtype.

    float32/float16 round with numpy, bfloat16 rounds to nearest-even bits, float8_e4m3fn takes a
    ue8m0 scale per block of 32 values and appends the ``dim / 32`` scale bytes to each row.
    """
    dtype = parse_dtype(dtype)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise UsageError(f"rows must be 2-D [n, dim], got shape {list(values.shape)}")
    if dtype == "float32":
        return np.ascontiguousarray(values)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    if dtype == "bfloat16":
        return float32_to_bf16_bits(values)
    row_bytes(values.shape[1], dtype)  # validates dim % 32
    from ._fp8_kernel import encode_fp8_rows  # numba kernel, imported on first use

    return encode_fp8_rows(values)


def decode_rows(raw: np.ndarray, dtype: str, dim: int) -> np.ndarray:
    """Decode stored rows ``[n, row_width]`` (as gathered) to float32 ``[n, dim]``.

    float32 input is returned without a copy.

    >>> decode_rows(encode_rows(np.ones((1, 32)), "float8_e4m3fn"), "float8_e4m3fn", 32)[0, :2]
    array([1., 1.], dtype=float32)
    """
    dtype = parse_dtype(dtype)
    raw = np.asarray(raw)
    expected = (row_width(dim, dtype),)
    if raw.ndim != 2 or raw.shape[1:] != expected or raw.dtype != storage_dtype(dtype):
        raise UsageError(
            f"expected stored {dtype} rows [n, {expected[0]}] of {storage_dtype(dtype)}, got "
            f"{list(raw.shape)} of {raw.dtype}"
        )
    if dtype in ("float32", "float16"):
        return raw.astype(np.float32, copy=False)  # float32 rows come back as they are
    if dtype == "bfloat16":
        return bf16_bits_to_float32(raw)
    n = raw.shape[0]
    values = fp8_e4m3fn_decode(raw[:, :dim]).reshape(n, -1, FP8_SCALE_BLOCK)
    scales = ue8m0_scales(raw[:, dim:])  # bit-exact with the engines' exponent shift
    with np.errstate(over="ignore"):  # 448 * 2**127 is inf in float32, as on the engines
        return (values * scales[:, :, None]).reshape(n, dim)
