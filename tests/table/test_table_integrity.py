"""Issue 14, silent wrong data: what a table's readers and verify refuse.

Every test edits a table on disk the way a damaged file system, a careless editor or a killed
writer would, and checks that ``verify --deep`` and every reader (open/gather/export) refuse it
instead of serving different data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.core.codec import chunk_key
from engramctl.table.formats.safetensors import export_safetensors
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from .conftest import FP
from .conftest import make as make_table


def make(path, layout, **kw) -> Path:
    return Path(make_table(path, layout, **kw).path)


def edit_attrs(path: Path, edit) -> None:
    """Rewrite the group attributes through ``edit(attrs)`` (as a text editor would)."""
    doc = json.loads((path / "zarr.json").read_text())
    edit(doc["attributes"])
    (path / "zarr.json").write_text(json.dumps(doc))


def refused_everywhere(path: Path, tmp_path: Path, match: str) -> None:
    """verify (deep) reports ``match``; opening, gathering and exporting raise it."""
    report = verify_table(path, deep=True)
    assert not report.ok and any(match in p for p in report.problems), report.problems
    with pytest.raises(EngramError, match=match):
        open_table(path).gather(15, np.arange(1000))
    with pytest.raises(EngramError, match=match):
        export_safetensors(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ----------------------------------------------------- item 2: a complete table's manifest
def test_chunk_missing_from_complete_manifest_is_damage(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout)

    def drop_entry(attrs):
        del attrs["engramctl_manifest"]["15"]["2"]
        attrs.pop("engramctl_checksum", None)  # as an older engramctl wrote it

    edit_attrs(path, drop_entry)
    victim = path / chunk_key(15, 2)
    data = bytearray(victim.read_bytes())
    data[1234] ^= 0x10
    victim.write_bytes(bytes(data))
    refused_everywhere(path, tmp_path, "chunk 2 of layer 15")


def test_unrecorded_chunk_of_lazy_table_reads_as_init(tmp_path, small_layout):
    """A chunk renamed into place but never recorded (a killed writer) is not part of the
    table: a lazy table reads its init values (its old state), verify warns."""
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    before = open_table(path).gather(15, np.arange(600, 900))
    junk = np.full((300, 64), 7.0, dtype=np.float32)
    (path / chunk_key(15, 2)).parent.mkdir(parents=True, exist_ok=True)
    (path / chunk_key(15, 2)).write_bytes(junk.tobytes())
    np.testing.assert_array_equal(open_table(path).gather(15, np.arange(600, 900)), before)
    report = verify_table(path, deep=True)
    assert report.ok and any("not in the manifest" in w for w in report.warnings)


# ----------------------------------------------------------- item 3: metadata checksums
@pytest.mark.parametrize(
    "field,value",
    [(("init", "seed"), 5), (("layout", "seed"), 7), (("layout", "pad_id"), 0), (("dim",), 32)],
)
def test_edited_metadata_is_refused(tmp_path, small_layout, field, value):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)

    def edit(attrs):
        target = attrs["engramctl"]
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    edit_attrs(path, edit)
    refused_everywhere(path, tmp_path, "does not match its checksum")


def test_edited_manifest_is_refused(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout)
    edit_attrs(path, lambda attrs: attrs["engramctl_manifest"]["15"].pop("2"))
    refused_everywhere(path, tmp_path, "does not match its checksum")


def test_writes_keep_checksums_valid(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    with open_table(path, mode="r+") as table:
        table.write_rows(15, [0, 650], np.ones((2, 64), dtype=np.float32))
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert set(attrs["engramctl_checksum"]) == {"engramctl", "engramctl_manifest"}
    assert verify_table(path, deep=True).ok
    np.testing.assert_array_equal(open_table(path).gather(15, [650])[0], np.ones(64))


def test_table_without_checksums_still_reads_and_verify_warns(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    edit_attrs(path, lambda attrs: attrs.pop("engramctl_checksum"))
    open_table(path).gather(1, [0, 1])
    report = verify_table(path)
    assert report.ok and any("no checksum" in w for w in report.warnings)


# ------------------------------------------------- item 4: readers check what verify checks
def _old_table(path: Path) -> None:
    edit_attrs(path, lambda attrs: attrs.pop("engramctl_checksum"))


def test_layer_rows_edited_is_refused_at_open(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    _old_table(path)  # no checksum to catch it: the structural check must

    def shrink(attrs):
        attrs["engramctl"]["layers"]["15"]["rows"] = 900

    edit_attrs(path, shrink)
    refused_everywhere(path, tmp_path, "differ from its layout")


def test_array_metadata_edited_is_refused_at_open(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    array_json = path / "layer_15" / "zarr.json"
    doc = json.loads(array_json.read_text())
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [100, 64]
    array_json.write_text(json.dumps(doc))
    refused_everywhere(path, tmp_path, "array chunk_grid")


# ------------------------------------------- item 1: import takes the file's recorded layout
@pytest.fixture
def exported(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True)
    out = tmp_path / "t.safetensors"
    export_safetensors(path, out)
    return path, out


@pytest.mark.parametrize(
    "flags,named",
    [
        ({"seed": 7}, "--seed 7, the file has 0"),
        ({"pad_id": 0}, "--pad-id 0, the file has 2"),
        ({"layers": "1,2"}, "--layers 1,2, the file has 1,15"),
        ({"preset": "demo-v1"}, "--preset demo-v1 gives"),
    ],
)
def test_import_refuses_flags_that_disagree_with_the_file(tmp_path, exported, flags, named):
    from engramctl.errors import UsageError
    from engramctl.table.formats.safetensors_import import import_safetensors

    _, out = exported
    with pytest.raises(UsageError, match=named):
        import_safetensors(out, tmp_path / "back.zarr", vocab_fingerprint=FP, layout_flags=flags)
    assert not (tmp_path / "back.zarr").exists()


def test_import_takes_the_layout_from_the_file(tmp_path, exported, small_layout):
    from engramctl.table.formats.safetensors_import import import_safetensors

    path, out = exported
    agreeing = {"seed": 0, "pad_id": 2, "heads": 2, "ngram_vocab": "500,500", "preset": None}
    result = import_safetensors(
        out, tmp_path / "back.zarr", vocab_fingerprint=FP, layout_flags=agreeing
    )
    assert result.info.layout == small_layout
    ids = np.arange(small_layout.layer_rows(15))
    np.testing.assert_array_equal(
        open_table(path).gather(15, ids), open_table(tmp_path / "back.zarr").gather(15, ids)
    )
    other = small_layout.__class__(**{**small_layout.to_dict(), "seed": 7})
    with pytest.raises(EngramError, match="seed 7 \\(given\\) vs 0 \\(file\\)"):
        import_safetensors(out, tmp_path / "c.zarr", vocab_fingerprint=FP, layout=other)
