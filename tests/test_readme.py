"""README's Python examples run as written: each ```python block, against a small lazy table
``t.zarr`` and the bundled vocab saved as ``vocab.parquet``, with the names the text leaves to
the reader (``row_ids``, ``ids``, ``buffers``) given. A renamed or moved public name fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from engramctl import NgramHasher
from engramctl.table.build.create import create_table
from tests.conftest import make_layout

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(block, tmp_path, monkeypatch, ds_vocab, ds_layout):
    if "to_torch" in block:
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    ds_vocab.save("vocab.parquet")
    layout = make_layout(vocab_size=ds_vocab.canonical_vocab_size, layers=(1, 15))
    create_table("t.zarr", layout=layout, vocab_fingerprint=ds_vocab.fingerprint, dim=64,
                 dtype="bfloat16", lazy=True)  # fmt: skip
    ids = np.arange(100, 132, dtype=np.int64).reshape(2, 16)  # raw token ids [B, T]
    buffers = {k: np.empty_like(v) for k, v in NgramHasher(ds_layout, ds_vocab).hash(ids).items()}
    names = {"row_ids": np.arange(10), "ids": ids, "buffers": buffers}
    exec(compile(block, f"{README.name} block", "exec"), names)  # noqa: S102
