"""Hostile table metadata and manifests: ``info``, ``verify``, ``export`` end in one clear line
(or succeed with the table's true contents), never an internal error."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile.conftest import HOSTILE, assert_clean, assert_one_error, cli, reseal

JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)

SLOW_FREE_JUNK = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)


def damaged_copy(tmp_path, small_table, edit, *, forge_checksums: bool = True) -> object:
    table = tmp_path / "t.zarr"
    shutil.rmtree(table, ignore_errors=True)
    shutil.copytree(small_table, table)
    doc = json.loads((table / "zarr.json").read_text())
    edit(doc["attributes"])
    if forge_checksums:
        reseal(doc["attributes"])
    (table / "zarr.json").write_text(json.dumps(doc))
    return table


def check_commands(tmp_path, table):
    for args in (
        ("info", table, "--json"),
        ("verify", table, "--json"),
        ("export", table, tmp_path / "out.safetensors", "--overwrite"),
    ):
        result = cli("-q", *args)
        if args[0] == "verify" and result.exit_code == 1 and not result.stderr.strip():
            report = json.loads(result.stdout)  # damage found and reported, not an error
            assert report["ok"] is False and report["problems"], result.stdout
            continue
        assert_clean(result)


@given(data=st.data())
@HOSTILE
def test_mutated_manifest(data, tmp_path, small_table):
    def edit(attrs):
        manifest = attrs["engramctl_manifest"]
        layer = data.draw(st.sampled_from(sorted(manifest) + ["7", "x"]))
        chunks = manifest.setdefault(layer, {})
        chunk = data.draw(st.sampled_from(sorted(chunks) + ["0", "-1", "99", "a"]))
        chunks[chunk] = data.draw(
            JSON_JUNK | st.lists(JSON_JUNK, max_size=4) | st.just([1, 2]) | st.just([])
        )
        if data.draw(st.booleans()):
            manifest[data.draw(st.sampled_from(sorted(manifest)))] = data.draw(JSON_JUNK)

    check_commands(tmp_path, damaged_copy(tmp_path, small_table, edit))


@given(data=st.data())
@HOSTILE
def test_mutated_table_meta(data, tmp_path, small_table):
    def edit(attrs):
        meta = attrs["engramctl"]
        for _ in range(data.draw(st.integers(1, 2))):
            key = data.draw(st.sampled_from(sorted(meta)))
            target = meta
            if isinstance(meta[key], dict) and meta[key] and data.draw(st.booleans()):
                target = meta[key]
                key = data.draw(st.sampled_from(sorted(target)))
            target[key] = data.draw(  # no small positive ints: a 1-row chunking is valid, slow
                SLOW_FREE_JUNK | st.sampled_from([0, -1, 2**40, "1", 1.5, None, [], {}, True])
            )

    check_commands(tmp_path, damaged_copy(tmp_path, small_table, edit))


@pytest.mark.parametrize("entry", [[], [5], "x", None, [1, "2", "data"], {"a": 1}])
def test_malformed_manifest_entry(entry, tmp_path, small_table):
    def edit(attrs):
        attrs["engramctl_manifest"]["1"]["0"] = entry

    table = damaged_copy(tmp_path, small_table, edit)
    for args in (("info", table), ("export", table, tmp_path / "o.safetensors")):
        assert_one_error(cli("-q", *args), "manifest")


def test_chunk_rows_zero_in_metadata_is_damage_not_a_flag(tmp_path, small_table):
    def edit(attrs):
        attrs["engramctl"]["chunk_rows"] = 0

    result = cli("-q", "info", damaged_copy(tmp_path, small_table, edit))
    line = assert_one_error(result, "damaged")
    assert "--chunk-rows" not in line and result.exit_code == 1
