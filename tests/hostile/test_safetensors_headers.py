"""Hostile safetensors headers given to ``import``: a clear refusal or the exact same table."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engramctl.table.sources.table import open_table
from tests.hostile.conftest import HOSTILE, assert_clean, assert_one_error, cli

LAYOUT = ["--ngram-vocab", "500,500", "--heads", "2"]


def split(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def join(header, data: bytes, *, raw_header: bytes | None = None) -> bytes:
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def import_and_check(tmp_path, vocab_path, small_table, payload: bytes):
    """Import ``payload``; exit 0 only with the original rows, else one clear line."""
    src = tmp_path / "in.safetensors"
    src.write_bytes(payload)
    out = tmp_path / "out.zarr"
    result = cli("-q", "import", src, out, "--vocab", vocab_path, *LAYOUT, "--overwrite")
    line = assert_clean(result)
    if result.exit_code == 0:
        with open_table(small_table) as want, open_table(out) as got:
            for layer in want.meta.layers:
                rows = np.arange(want.meta.layers[layer].rows)
                np.testing.assert_array_equal(got.gather(layer, rows), want.gather(layer, rows))
    else:
        assert not out.exists() or out.is_dir(), "a failed import left a half-written file"
    return result, line


JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


def _nudge(value, delta):
    """``value`` moved by ``delta`` bytes, or turned into a string/float of itself."""
    if not isinstance(value, int):
        return value
    if isinstance(delta, int):
        return value + delta
    return str(value) if isinstance(delta, str) else value + delta


@st.composite
def mutated_header(draw, header: dict):
    """The export's header with one to three fields replaced by hostile values."""
    header = json.loads(json.dumps(header))
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["field", "offset", "shape", "dtype", "metadata", "drop", "swap", "extra"]
            )
        )
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        if not isinstance(entry, dict):
            continue
        if kind == "field":
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JSON_JUNK)
        elif kind == "offset":
            i = draw(st.integers(0, 1))
            offsets = entry.get("data_offsets")
            offsets = list(offsets[:2]) + [0, 0] if isinstance(offsets, list) else [0, 0]
            offsets = offsets[:2]
            offsets[i] = draw(
                st.integers(-(2**65), 2**65)
                | st.sampled_from([8, -8, "8", 1.5]).map(lambda d, v=offsets[i]: _nudge(v, d))
            )
            entry["data_offsets"] = offsets
        elif kind == "shape":
            shape = entry.get("shape")
            r = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 9
            entry["shape"] = draw(
                st.sampled_from(
                    [
                        [2**62, 2**62],
                        [r, 2**61],
                        [-r, -32],
                        [r],
                        [r, 32, 1],
                        [r, 0],
                        [str(r), 32],
                        [float(r), 32.0],
                    ]
                )
            )
        elif kind == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F64", "I32", "U8", "f32", "", "F8_E5M2", 32]))
        elif kind == "metadata":
            header["__metadata__"] = draw(JSON_JUNK)
        elif kind == "drop":
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif kind == "swap":
            other = header[draw(st.sampled_from(names))]
            if isinstance(other, dict) and "data_offsets" in other:
                entry["data_offsets"] = other["data_offsets"]
        elif kind == "extra":
            header[draw(st.text(min_size=1, max_size=4))] = draw(JSON_JUNK)
    return header


class Parts(tuple):
    """``(header, body)`` of the export; a short repr keeps hypothesis' reports readable."""

    def __repr__(self):
        return "Parts(<export header>, <body>)"


@pytest.fixture(scope="module")
def export_parts(small_export):
    return Parts(split(small_export))


@given(data=st.data())
@HOSTILE
def test_mutated_headers_fail_cleanly_or_import_exactly(
    data, export_parts, tmp_path, vocab_path, small_table
):
    header, body = export_parts
    hostile = data.draw(mutated_header(header))
    import_and_check(tmp_path, vocab_path, small_table, join(hostile, body))


@given(blob=st.binary(max_size=64), length=st.integers(0, 2**64 - 1) | st.none())
@HOSTILE
def test_random_bytes_fail_cleanly(blob, length, tmp_path, vocab_path, small_table):
    payload = blob if length is None else struct.pack("<Q", length) + blob
    import_and_check(tmp_path, vocab_path, small_table, payload)


def test_deeply_nested_header(tmp_path, vocab_path, small_table, export_parts):
    _, body = export_parts
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    result, _ = import_and_check(tmp_path, vocab_path, small_table, join({}, body, raw_header=deep))
    assert result.exit_code != 0


def test_overlapping_tensors_are_refused(tmp_path, vocab_path, small_table, export_parts):
    header, body = export_parts
    header = json.loads(json.dumps(header))
    header["layer_15"]["data_offsets"] = header["layer_1"]["data_offsets"]
    result, _ = import_and_check(tmp_path, vocab_path, small_table, join(header, body))
    assert_one_error(result, "overlap")


def test_a_hole_between_tensors_is_refused(tmp_path, vocab_path, small_table, export_parts):
    header, body = export_parts
    header = json.loads(json.dumps(header))
    begin, end = header["layer_15"]["data_offsets"]
    header["layer_15"]["data_offsets"] = [begin + 64, end + 64]
    result, _ = import_and_check(tmp_path, vocab_path, small_table, join(header, body + b"\0" * 64))
    assert_one_error(result, "layer_15")


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": 7},
        {"dtype": ["F32"]},
        {"data_offsets": ["0", "10"]},
        {"data_offsets": [0.0, 1.5]},
        {"shape": [2**62, 2**62]},
        {"shape": [True, 32]},
    ],
)
def test_wrong_json_types(change, tmp_path, vocab_path, small_table, export_parts):
    header, body = export_parts
    header = json.loads(json.dumps(header))
    header["layer_1"].update(change)
    result, _ = import_and_check(tmp_path, vocab_path, small_table, join(header, body))
    assert_one_error(result, "layer_1")


@pytest.mark.parametrize("metadata", [["a"], "x", {"vocab_fingerprint": 3}, 5])
def test_metadata_of_the_wrong_type(metadata, tmp_path, vocab_path, small_table, export_parts):
    header, body = export_parts
    header = json.loads(json.dumps(header))
    header["__metadata__"] = metadata
    result, _ = import_and_check(tmp_path, vocab_path, small_table, join(header, body))
    assert_one_error(result, "__metadata__")
