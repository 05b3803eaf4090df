"""Layouts from a model's config.json: the V4.1 values of DESIGN.md give the preset's layout."""

from __future__ import annotations

import json

import pytest

from engramctl.errors import UsageError
from engramctl.layout import EngramLayout
from engramctl.model_config import EngramModelConfig, read_model_config

# DeepSeek-V4.1's published config values (DESIGN.md, "Real checkpoints"), written out here
# so that a change to the library's copy shows.
V41 = {
    "engram_layer_ids": [1, 14],
    "engram_max_ngram_size": 4,
    "engram_n_heads": 8,
    "engram_head_dim": 256,
    "engram_vocab_size": 16000000,
    "engram_num_embeddings": [384006168, 384016682],
    "engram_pad_token_id": 2,
    "engram_compressed_vocab_size": 99092,
}


def write_config(tmp_path, doc) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_v41_config_gives_the_preset_layout(tmp_path, ds_layout, ds_vocab):
    assert ds_vocab.canonical_vocab_size == 99092
    config = read_model_config(write_config(tmp_path, {"hidden_size": 7168, **V41}))
    layout = config.layout(vocab_size=ds_vocab.canonical_vocab_size)
    assert layout == ds_layout
    # the published rows per layer are exactly the sums of the preset's primes
    assert [ds_layout.layer_rows(layer) for layer in (1, 14)] == V41["engram_num_embeddings"]
    assert layout.multipliers(1).tolist() == [
        76632096046245,
        4839876093313,
        35959672319349,
        73987337458391,
    ]
    assert layout.multipliers(14).tolist() == [
        67716810739261,
        51510806800915,
        30921347202721,
        82619226485591,
    ]
    assert config.head_dim == 256


def test_the_library_holds_the_published_config():
    from engramctl.model_config import PUBLISHED_CONFIGS

    assert PUBLISHED_CONFIGS["deepseek-v4.1"] == V41


def test_text_config_and_directory(tmp_path, ds_vocab):
    write_config(tmp_path, {"architectures": ["X"], "text_config": V41})
    config = read_model_config(tmp_path)  # a directory holding config.json
    assert config.layer_ids == (1, 14) and config.ngram_vocab == (16000000,) * 3


def small_config(**overrides):
    layout = EngramLayout(
        ngram_vocab=(50, 60), max_ngram=3, heads=2, layers=(1, 4), seed=0, pad_id=0, vocab_size=40
    )
    return EngramModelConfig.from_layout(layout, head_dim=64).to_dict() | overrides, layout


def test_round_trip_and_per_order_sizes(tmp_path):
    doc, layout = small_config()
    assert doc["engram_vocab_size"] == [50, 60]
    config = read_model_config(write_config(tmp_path, doc))
    assert config.layout(vocab_size=40) == layout


def test_num_embeddings_mismatch_is_refused_naming_both(tmp_path):
    doc, layout = small_config(engram_num_embeddings=[10, 20])
    config = read_model_config(write_config(tmp_path, doc))
    with pytest.raises(UsageError, match=r"\[10, 20\].*\[" + str(layout.layer_rows(1))):
        config.layout(vocab_size=40)


def test_compressed_vocab_mismatch_is_refused_naming_both(tmp_path):
    doc, _ = small_config()
    config = read_model_config(write_config(tmp_path, doc))
    with pytest.raises(UsageError, match="engram_compressed_vocab_size is 40.* 41 canonical"):
        config.layout(vocab_size=41)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"hidden_size": 4}, "no engram_\\* keys"),
        ({"engram_layer_ids": [1]}, "missing Engram keys"),
        ({**V41, "engram_n_heads": "8"}, "expected an integer"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_configs(tmp_path, doc, message):
    with pytest.raises(UsageError, match=message):
        read_model_config(write_config(tmp_path, doc))


def test_missing_and_broken_config(tmp_path):
    with pytest.raises(UsageError, match="no config file"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(UsageError, match="^--config: .*config.json is not valid JSON"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100_000)  # was a RecursionError: internal error
    with pytest.raises(UsageError, match="^--config: .*config.json is damaged: nested too deeply"):
        read_model_config(tmp_path)
