"""Canonical vocab: hand-worked folding, the DeepSeek figure, Parquet round trip, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl import CanonicalVocab
from engramctl.errors import EngramError
from engramctl.vocab import assign_canonical_ids, canonical_keys


def test_tiny_vocab_folds_case_accents_and_space(tiny_vocab):
    ids = {tok: i for i, tok in enumerate(tiny_vocab.tokens)}
    c = tiny_vocab.canonical_ids
    # Apple / apple / APPLE / ␣apple share one id
    assert c[ids["Apple"]] == c[ids["apple"]] == c[ids["APPLE"]] == c[ids["Ġapple"]]
    assert c[ids["Ã©"]] == c[ids["e"]]  # accents stripped
    assert c[ids["Ġthe"]] == c[ids["the"]] == c[ids["The"]]
    # one space and two spaces both normalize to the protected single space
    assert c[ids["Ġ"]] == c[ids["ĠĠ"]]
    assert tiny_vocab.keys[ids["Ġ"]] == " "
    # the partial UTF-8 byte keeps its token string as the key
    assert tiny_vocab.keys[ids["Ã"]] == "Ã"
    assert c[ids["cat"]] != c[ids["apple"]]
    # numbered in order of first appearance
    assert c[0] == 0 and c[1] == 1 and c[2] == 2 and c[ids["Apple"]] == 3
    assert tiny_vocab.source_vocab_size == len(tiny_vocab.tokens)  # added token included


def test_keys_and_first_appearance_by_hand():
    assert canonical_keys(["A\u0301B", "  x \t y ", "\n\n"], ["t0", "t1", "t2"]) == [
        "ab",
        "x y",
        " ",
    ]
    assert assign_canonical_ids(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


def test_deepseek_reduction_matches_published_figure(ds_vocab):
    assert ds_vocab.source_vocab_size == 129280
    assert 0.22 < ds_vocab.reduction < 0.25
    assert ds_vocab.canonical_ids.max() + 1 == ds_vocab.canonical_vocab_size
    # canonical ids appear in first-appearance order
    firsts = np.unique(ds_vocab.canonical_ids, return_index=True)[1]
    assert np.all(np.diff(firsts) > 0)


def test_parquet_round_trip(tiny_vocab, tmp_path):
    path = tiny_vocab.save(tmp_path / "v.parquet")
    back = CanonicalVocab.load(path)
    assert np.array_equal(back.canonical_ids, tiny_vocab.canonical_ids)
    assert back.tokens == tiny_vocab.tokens and back.keys == tiny_vocab.keys
    assert back.fingerprint == tiny_vocab.fingerprint
    assert back.source_sha256 == tiny_vocab.source_sha256
    meta = back.metadata()
    assert meta["source_vocab_size"] == tiny_vocab.source_vocab_size
    assert meta["canonical_vocab_size"] == tiny_vocab.canonical_vocab_size


def test_apply_keeps_negatives_and_rejects_out_of_vocab(tiny_vocab):
    n = tiny_vocab.source_vocab_size
    ids = np.array([[3, -1, 4], [5, 6, -7]])
    out = tiny_vocab.apply(ids)
    assert out[0, 1] == -1 and out[1, 2] == -7
    assert out[0, 0] == out[0, 2] == out[1, 0] == out[1, 1]
    with pytest.raises(EngramError, match=f"token id {n} is at or above"):
        tiny_vocab.apply(np.array([1, n, n + 5]))


def test_load_refuses_foreign_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), other)
    with pytest.raises(EngramError, match="not an engramctl vocab file"):
        CanonicalVocab.load(other)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(EngramError, match="not an engramctl vocab file"):
        CanonicalVocab.load(junk)
    with pytest.raises(EngramError, match="not found"):
        CanonicalVocab.load(tmp_path / "missing.parquet")


def _rewrite(path, out, *, columns=None, meta=None):
    """Copy a vocab Parquet file with some columns or the metadata replaced."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for name, values in (columns or {}).items():
        table = table.set_column(table.column_names.index(name), name, pa.array(values))
    old = json.loads(table.schema.metadata[b"engramctl"])
    if isinstance(meta, bytes):
        raw = meta
    else:
        raw = json.dumps(meta(old) if meta else old).encode()
    pq.write_table(table.replace_schema_metadata({b"engramctl": raw}), out)
    return out


def test_load_refuses_damaged_files(tiny_vocab, tmp_path):
    good = tiny_vocab.save(tmp_path / "good.parquet")
    n = tiny_vocab.source_vocab_size
    cases = {
        "not numbered 0, 1, 2": {"columns": {"canonical_id": [1, 0] + [2] * (n - 2)}},
        "unexpected column types": {"columns": {"canonical_id": ["x"] * n}},
        "token_id is not 0..": {"columns": {"token_id": list(range(1, n + 1))}},
        "metadata says": {"meta": lambda m: {**m, "source_vocab_size": n + 1}},
        "no engramctl metadata": {"meta": b"{not json"},
        "does not match its fingerprint": {
            "meta": lambda m: {**m, "fingerprint": "sha256:0000000000000000"}
        },
        "newer than this": {"meta": lambda m: {**m, "format_version": 99}},
    }
    for message, change in cases.items():
        bad = _rewrite(good, tmp_path / "bad.parquet", **change)
        with pytest.raises(EngramError, match=message):
            CanonicalVocab.load(bad)


def test_as_int64_ids():
    from engramctl.vocab import as_int64_ids, is_first_appearance_numbering

    assert as_int64_ids(np.array([3], dtype=np.uint32)).dtype == np.int64
    assert as_int64_ids([1, -2]).tolist() == [1, -2]
    with pytest.raises(EngramError, match="must be integers"):
        as_int64_ids(np.array([1.0]))
    with pytest.raises(EngramError, match="does not fit in int64"):
        as_int64_ids(np.array([2**64 - 1], dtype=np.uint64))
    assert is_first_appearance_numbering(np.array([0, 0, 1, 0, 2]))
    assert not is_first_appearance_numbering(np.array([0, 2, 1]))
    assert not is_first_appearance_numbering(np.array([0, 2]))
