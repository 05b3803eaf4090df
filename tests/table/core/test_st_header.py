"""The strict safetensors header reader: dtype sizes in bits, sub-byte dtypes on byte boundaries."""

from __future__ import annotations

import json
import struct

import pytest

from engramctl.errors import EngramError
from engramctl.table.core.st_header import BITS, read_header


def write(path, tensors: dict, data_bytes: int):
    blob = json.dumps(tensors).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * data_bytes)
    return path


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes"),
    [("F4", [2, 3], 3), ("F6_E2M3", [4], 3), ("F6_E3M2", [8], 6), ("C64", [2], 16),
     ("F8_E4M3FNUZ", [5], 5), ("F8_E8M0", [3, 1], 3), ("BOOL", [0], 0)],
)  # fmt: skip
def test_every_format_dtype_is_sized(tmp_path, dtype, shape, nbytes):
    entry = {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}
    header = read_header(write(tmp_path / "a.safetensors", {"t": entry}, nbytes))
    assert header.tensors["t"]["data_offsets"] == [0, nbytes]
    assert header.data_start == tmp_path.joinpath("a.safetensors").stat().st_size - nbytes


def test_sub_byte_tensor_must_end_on_a_byte(tmp_path):
    entry = {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}
    with pytest.raises(EngramError, match="12 bits, which do not end on a byte boundary"):
        read_header(write(tmp_path / "a.safetensors", {"t": entry}, 2))


def test_wrong_byte_size_names_the_tensor(tmp_path):
    entry = {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 4]}
    with pytest.raises(EngramError, match=r"'t' \(F6_E2M3 \[4\]\) spans 4 bytes.*needs 3"):
        read_header(write(tmp_path / "a.safetensors", {"t": entry}, 4))


def test_the_dtype_list_is_the_formats():
    # safetensors 0.8's Dtype enum, as its error message lists it
    assert set(BITS) == {
        "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
        "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
        "F64", "I64", "U64",
    }  # fmt: skip
