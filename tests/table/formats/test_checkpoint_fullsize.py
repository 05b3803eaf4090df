"""A sparse DeepSeek-V4.1 checkpoint at its real shapes (203 GB apparent, a few MB on disk):
linked in seconds, verified, and the rows a text hashes to gathered back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.hashing import NgramHasher
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from ...test_model_config import V41
from ..ckpt_util import random_fp8_rows, sparse_files_supported, write_sparse_checkpoint

TEXT = "Alexander the Great was tutored by Aristotle until the age of 16."


@pytest.mark.slow
def test_full_size_sparse_v41_link(tmp_path, ds_vocab, ds_layout):
    if not sparse_files_supported(tmp_path):
        pytest.skip(f"{tmp_path}'s file system does not keep sparse files")
    from engramctl.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer("deepseek-v4")
    ids = np.array(tokenizer.encode(TEXT, add_special_tokens=False).ids, dtype=np.int64)
    hashed = NgramHasher(ds_layout, ds_vocab).hash(ids, table_rows=True)
    rng = np.random.default_rng(0)
    written, rows_of = {}, {}
    for layer_id in ds_layout.layers:
        rows = ds_layout.layer_rows(layer_id)
        rows_of[layer_id] = rows
        extra = rng.integers(0, rows, size=300)
        extra[:2] = [0, rows - 1]  # both ends of the tensors
        targets = np.unique(np.concatenate([hashed[layer_id].reshape(-1), extra]))
        written[layer_id] = (targets, random_fp8_rows(rng, targets.size, 256))
    assert rows_of == dict(zip((1, 14), V41["engram_num_embeddings"], strict=True))
    ckpt = tmp_path / "DeepSeek-V4.1"
    write_sparse_checkpoint(ckpt, {"text_config": V41}, rows_of, written)
    apparent = sum(f.stat().st_size for f in ckpt.iterdir())
    on_disk = sum(f.stat().st_blocks * 512 for f in ckpt.iterdir())
    assert apparent > 200e9 and on_disk < 100e6

    out = tmp_path / "v41.zarr"
    result = import_checkpoint(ckpt, out, vocab=ds_vocab, link=True)
    assert result.info.logical_bytes == 768_022_850 * 264
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 50_000
    assert verify_table(out, vocab=ds_vocab).ok
    with open_table(out, vocab=ds_vocab) as table:
        for layer_id, (targets, rows) in written.items():
            np.testing.assert_array_equal(table.gather(layer_id, targets), rows)
            text_rows = hashed[layer_id].reshape(-1)
            expected = rows[np.searchsorted(targets, text_rows)]
            np.testing.assert_array_equal(table.gather(layer_id, text_rows), expected)
            unwritten = np.setdiff1d(np.arange(1000, 1010), targets)
            assert not table.gather(layer_id, unwritten).any()  # holes read as zeros
