"""The format registry: each format once, picked by name or by the import source; options a
format does not take refused (naming them) before anything is read or written; a round trip
through every format that both imports and exports."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.errors import UsageError
from engramctl.table.formats.registry import (
    EXPORT_FORMATS,
    FORMATS,
    export_table,
    get_format,
    import_format,
    import_table,
)
from engramctl.table.sources.table import open_table

from ..ckpt_util import small_layout, write_checkpoint


def test_every_format_is_registered_once_with_a_one_line_description():
    names = [f.name for f in FORMATS]
    assert names == ["safetensors", "deepseek"] == list(EXPORT_FORMATS)
    for table_format in FORMATS:
        assert get_format(table_format.name) is table_format
        assert table_format.description and "\n" not in table_format.description
        assert table_format.importer is not None and table_format.exporter is not None
    with pytest.raises(UsageError, match="unknown format 'npz'; expected one of: safetensors"):
        get_format("npz")


def test_the_import_source_picks_the_format(tmp_path):
    assert import_format(tmp_path).name == "deepseek"  # a directory: a checkpoint
    assert import_format(tmp_path / "t.safetensors").name == "safetensors"


def test_options_a_format_does_not_take_are_refused_first(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()  # empty: a refusal of the options must come before reading it
    given = {"preset": "demo-v1", "layers": "1", "config": tmp_path, "tensor_name": "w{layer}"}
    with pytest.raises(UsageError) as caught:
        import_table(ckpt, tmp_path / "t.zarr", options=given)
    assert str(caught.value) == (
        f"{ckpt} is a checkpoint directory: its config.json gives the layout and its tensor "
        "names are fixed; drop --preset, --config, --tensor-name"
    )
    with pytest.raises(UsageError, match="^--link needs a checkpoint directory; .* is not one$"):
        import_table(tmp_path / "x.safetensors", tmp_path / "t.zarr", options={"link": True})
    with pytest.raises(UsageError, match="^--tensor-name: --format deepseek uses the checkpoint"):
        export_table(tmp_path / "t.zarr", tmp_path / "out", format_name="deepseek",
                     options={"tensor_name": "w{layer}"})  # fmt: skip
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "out").exists()


def test_round_trips_through_the_registry(tmp_path, tiny_vocab):
    tiny_vocab_file = tmp_path / "vocab.parquet"
    tiny_vocab.save(tiny_vocab_file)
    rows = write_checkpoint(tmp_path / "ckpt", small_layout(tiny_vocab), dim=64)
    seen = []
    table = import_table(tmp_path / "ckpt", tmp_path / "t.zarr",
                         options={"vocab": tiny_vocab_file, "chunk_rows": 16},
                         progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert table.info.chunk_rows == 16 and seen and seen[-1][0] == seen[-1][1]
    # safetensors ignores --max-shard-size (one file has no shards), whatever its text
    for name, options in [("safetensors", {"max_shard_size": "junk"}),
                          ("deepseek", {"max_shard_size": "2kB"})]:  # fmt: skip
        out = tmp_path / f"out.{name}"
        written = export_table(tmp_path / "t.zarr", out, format_name=name, options=options)
        assert written.to_dict()["out"] == str(out) and "tensors" in written.summary()
        back = import_table(out, tmp_path / f"back.{name}.zarr",
                            options={"vocab": tiny_vocab_file})  # fmt: skip
        with open_table(back.path) as table:
            for layer, expected in rows.items():
                np.testing.assert_array_equal(table.gather(layer, np.arange(len(expected))),
                                              expected)  # fmt: skip
