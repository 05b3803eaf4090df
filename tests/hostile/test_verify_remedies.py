"""``verify`` names a remedy for each problem (issue 24 §2), and the remedy it names works."""

from __future__ import annotations

import json
import shutil

from engramctl.table.core.codec import chunk_key
from tests.hostile.conftest import SMALL, cli


def problems(table) -> list[str]:
    result = cli("verify", table, "--deep", "--json")
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)["problems"]


def test_a_damaged_init_chunk_names_init_table_and_the_rerun_repairs_it(tmp_path, small_table,
                                                                         vocab_path):  # fmt: skip
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    chunk = table / chunk_key(1, 0)
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    (table / chunk_key(15, 1)).unlink()
    found = problems(table)
    assert len(found) == 2 and all("rerun the same `engramctl init-table`" in p for p in found)
    result = cli("-q", "init-table", table, "--vocab", vocab_path, *SMALL)
    assert result.exit_code == 0, result.output
    assert cli("verify", table, "--deep").exit_code == 0


def test_a_damaged_imported_table_names_import(tmp_path, small_export, vocab_path):
    table = tmp_path / "u.zarr"
    args = ("import", small_export, table, "--vocab", vocab_path, "--ngram-vocab", "500,500",
            "--heads", "2")  # fmt: skip
    assert cli("-q", *args).exit_code == 0
    (table / chunk_key(1, 0)).write_bytes(b"short")
    found = problems(table)
    assert found and all("restore the table from a copy" in p for p in found), found
    assert not any("init-table" in p.replace("init-table cannot", "") for p in found), found


def test_damaged_metadata_names_a_remedy(tmp_path, small_table):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    doc = json.loads((table / "zarr.json").read_text())
    doc["attributes"]["engramctl"]["init"]["seed"] = 7  # an edit the checksum catches
    (table / "zarr.json").write_text(json.dumps(doc))
    found = problems(table)
    assert found and all("restore the table from a copy" in p for p in found), found
