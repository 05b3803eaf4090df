"""The one strict reader of safetensors headers (checked against the format's rules before use).

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of a UTF-8 JSON
object, then the tensor bytes. The rules checked here are the format's own (those of the
``safetensors`` library's ``validate``):

- the header is a JSON object without duplicate keys, at most 100 MiB, nested no deeper than a
  tensor entry's lists;
- ``__metadata__``, if present, maps strings to strings;
- every other key is a tensor: ``{"dtype": str, "shape": [int >= 0, ...], "data_offsets":
  [begin, end]}`` with integer offsets (not floats, strings or booleans) and a known dtype;
- ``end - begin`` is the product of the shape times the dtype's size in bits, over 8 (Python
  integers: no overflow; sub-byte dtypes must end on a byte boundary);
- the tensors tile the data exactly: sorted by offset each begins where the previous ended (no
  overlap, no hole) and the last ends at the end of the file.

Nothing here reads tensor data. Every refusal is an :class:`~engramctl.errors.EngramError` naming
the file and, where there is one, the tensor.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import EngramError

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
MAX_RANK = 16
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}  # fmt: skip
"""Bits per element of every dtype the safetensors format knows (0.8: sub-byte F4/F6 too)."""
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


@dataclass(frozen=True)
class SafetensorsHeader:
    """A safetensors file's validated header."""

    path: Path
    size: int  # file size in bytes
    data_start: int  # 8 + header length: where offsets count from
    tensors: dict  # name -> {"dtype": str, "shape": [int], "data_offsets": [begin, end]}
    metadata: dict  # the __metadata__ strings ({} when absent)
    header_sha256: str  # sha256 of the 8 length bytes and the JSON header


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key {dupes[0]!r}")
    return dict(pairs)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path) -> SafetensorsHeader:
    """Read and strictly validate the header of the safetensors file at ``path``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise EngramError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise EngramError(
                    f"{path} is not a safetensors file: header length {length} runs past the "
                    f"file ({size} bytes) or the 100 MiB limit (truncated?)"
                )
            blob = handle.read(length)
            if len(blob) != length:
                raise EngramError(f"{path} is not a safetensors file (its header is cut short)")
    except FileNotFoundError:
        raise EngramError(f"no safetensors file at {path}") from None
    except IsADirectoryError:
        raise EngramError(f"{path} is a directory, not a safetensors file") from None
    except OSError as exc:
        raise EngramError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_header(path, size, head, blob)


def parse_header(path, size: int, head: bytes, blob: bytes) -> SafetensorsHeader:
    """Validate a safetensors header already read: its 8 length bytes ``head`` and JSON
    ``blob`` of a file of ``size`` bytes (``path`` names it in errors: a path or a URL)."""
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise EngramError(f"{path}: the safetensors header is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EngramError(f"{path} is not a safetensors file (bad header: {exc})") from None
    if not isinstance(header, dict):
        raise EngramError(f"{path} is not a safetensors file (the header is not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EngramError(
            f"{path}: the safetensors __metadata__ must map strings to strings; it is damaged"
        )
    data_start = 8 + len(blob)
    data_bytes = size - data_start
    spans = sorted(
        (*_check_entry(path, name, entry, data_bytes), name) for name, entry in header.items()
    )
    at, previous = 0, None
    for begin, end, name in spans:
        if begin < at:
            raise EngramError(f"{path}: tensors {previous!r} and {name!r} overlap")
        if begin > at:
            raise EngramError(
                f"{path}: {begin - at} bytes before tensor {name!r} belong to no tensor (a hole "
                "in the data); the file is damaged"
            )
        at, previous = end, name
    if at != data_bytes:
        raise EngramError(
            f"{path}: the tensors cover {at} of the file's {data_bytes} data bytes; the file is "
            "damaged or truncated"
        )
    digest = hashlib.sha256(head + blob).hexdigest()
    return SafetensorsHeader(path, size, data_start, header, metadata, digest)


def _check_entry(path: Path, name: str, entry, data_bytes: int) -> tuple[int, int]:
    """Check one tensor entry in place; return its ``(begin, end)``."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        raise EngramError(
            f"{where} has a malformed header entry (needs exactly dtype, shape, data_offsets)"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in BITS:
        raise EngramError(
            f"{where} has dtype {dtype!r}, which is not a safetensors dtype ({', '.join(BITS)})"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(_is_int(s) and s >= 0 for s in shape)
    ):
        raise EngramError(
            f"{where} has shape {shape!r}; a shape is a list of non-negative integers"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(v) for v in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise EngramError(
            f"{where} has data_offsets {offsets!r}; they must be two integers 0 <= begin <= end"
        )
    begin, end = offsets
    if end > data_bytes:
        raise EngramError(
            f"{where} ends at byte {end} of the data, past the file's {data_bytes} data bytes "
            "(truncated?)"
        )
    bits = BITS[dtype]
    for s in shape:
        bits *= s
    if bits % 8:
        raise EngramError(
            f"{where} ({dtype} {shape}) holds {bits} bits, which do not end on a byte boundary"
        )
    if end - begin != bits // 8:
        raise EngramError(
            f"{where} ({dtype} {shape}) spans {end - begin} bytes, but its shape needs {bits // 8}"
        )
    return begin, end


__all__ = ["SafetensorsHeader", "read_header", "parse_header", "BITS", "MAX_HEADER_BYTES"]
