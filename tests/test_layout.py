"""Layouts: hand-checked primes, the prime rule, offsets, multipliers, JSON, validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl import EngramLayout
from engramctl.errors import UsageError
from engramctl.layout import PRESETS, is_prime, next_unused_prime, parse_int_list

INT64_MAX = 2**63 - 1


def small_layout(**overrides) -> EngramLayout:
    fields = dict(
        ngram_vocab=(10, 20), max_ngram=3, heads=2, layers=(0, 1), seed=0, pad_id=0, vocab_size=50
    )
    fields.update(overrides)
    return EngramLayout(**fields)


def trial_division_is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


# ------------------------------------------------------------------------------------- primes
def test_primes_by_hand():
    layout = small_layout()
    # layer 0: order 2 starts above 9 -> 11, 13; order 3 above 19 -> 23, 29
    # layer 1: order 2 above 9, skipping the used 11 and 13 -> 17, 19; order 3 above 19 -> 31, 37
    assert layout.head_rows(0).tolist() == [11, 13, 23, 29]
    assert layout.head_rows(1).tolist() == [17, 19, 31, 37]
    assert layout.head_offsets(0).tolist() == [0, 11, 24, 47]
    assert layout.head_offsets(1).tolist() == [0, 17, 36, 67]
    assert layout.layer_rows(0) == 76 and layout.layer_rows(1) == 104
    assert layout.total_rows == 180
    assert layout.heads_per_layer == 4


def test_layer_order_decides_who_gets_the_smaller_primes():
    # Primes are handed out layer by layer in the given order, not sorted by layer id.
    swapped = small_layout(layers=(1, 0))
    assert swapped.head_rows(1).tolist() == [11, 13, 23, 29]
    assert swapped.head_rows(0).tolist() == [17, 19, 31, 37]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 3000), min_size=1, max_size=3),
    heads=st.integers(1, 5),
    n_layers=st.integers(1, 3),
)
def test_prime_rule_holds_for_random_layouts(sizes, heads, n_layers):
    layout = EngramLayout(
        ngram_vocab=sizes,
        max_ngram=len(sizes) + 1,
        heads=heads,
        layers=tuple(range(0, 3 * n_layers, 3)),
        seed=1,
        pad_id=0,
        vocab_size=100,
    )
    used: set[int] = set()
    for layer in layout.layers:
        rows = layout.head_rows(layer)
        assert rows.shape == (layout.heads_per_layer,)
        for order_index, size in enumerate(sizes):
            start = size - 1
            for prime in rows[order_index * heads : (order_index + 1) * heads].tolist():
                # the smallest prime above the current start that is not used yet
                expected = next(
                    n
                    for n in itertools.count(start + 1)
                    if trial_division_is_prime(n) and n not in used
                )
                assert prime == expected
                used.add(prime)
                start = prime
        offsets = layout.head_offsets(layer)
        assert offsets[0] == 0
        np.testing.assert_array_equal(offsets[1:], np.cumsum(rows)[:-1])
        assert layout.layer_rows(layer) == int(rows.sum())
    assert len(used) == len(layout.layers) * layout.heads_per_layer  # all distinct


def test_is_prime_against_trial_division_and_known_hard_cases():
    assert [n for n in range(3000) if is_prime(n)] == [
        n for n in range(3000) if trial_division_is_prime(n)
    ]
    # Carmichael numbers and strong pseudoprimes to small bases are composite.
    for composite in (561, 41041, 2047, 1373653, 25326001, 3215031751, 3825123056546413051):
        assert not is_prime(composite)
    for prime in (16000057, 2**31 - 1, 2**61 - 1, 999999999989, 2**63 - 25):
        assert is_prime(prime)
    assert not is_prime(2**62) and not is_prime(-7)
    assert next_unused_prime(10, set()) == 11
    assert next_unused_prime(10, {11, 13}) == 17
    assert next_unused_prime(1, set()) == 2


def test_deepseek_preset_primes(ds_layout):
    # Prime search for 48 heads of ~16M rows runs while this test's fixtures are built.
    primes = [p for layer in ds_layout.layers for p in ds_layout.head_rows(layer).tolist()]
    assert len(primes) == 2 * 3 * 8 == len(set(primes))
    assert all(p > 16_000_000 - 1 and is_prime(p) for p in primes)
    assert ds_layout.heads_per_layer == 24
    assert ds_layout.head_rows(1)[0] == 16000057  # the first prime above 16M - 1
    assert ds_layout.total_rows == 768_022_850  # the figure the README shows


# -------------------------------------------------------------------------------- multipliers
@pytest.mark.parametrize("vocab_size", [2, 17, 99092, 2**40])
def test_multipliers_are_the_documented_rng_draw(vocab_size):
    layout = small_layout(vocab_size=vocab_size, seed=7, layers=(3, 11))
    for layer in layout.layers:
        half = max(1, INT64_MAX // vocab_size // 2)
        rng = np.random.default_rng(7 + 10007 * layer)
        draw = rng.integers(0, half, size=3, dtype=np.int64)
        mult = layout.multipliers(layer)
        assert mult.dtype == np.int64 and mult.shape == (3,)
        assert mult.tolist() == [2 * int(v) + 1 for v in draw]
        assert all(m % 2 == 1 and 0 < m < 2 * half for m in mult.tolist())
    assert layout.multipliers(3).tolist() != layout.multipliers(11).tolist()


def test_multipliers_are_a_copy():
    layout = small_layout()
    layout.multipliers(0)[:] = 0
    assert (layout.multipliers(0) % 2 == 1).all()


# ------------------------------------------------------------------------------ JSON and presets
def test_json_round_trip_is_lossless():
    layout = small_layout(seed=123, pad_id=4, layers=(5, 2, 9))
    text = layout.to_json()
    assert json.loads(text) == layout.to_dict()
    back = EngramLayout.from_json(text)
    assert back == layout
    for layer in layout.layers:
        np.testing.assert_array_equal(back.head_rows(layer), layout.head_rows(layer))
        np.testing.assert_array_equal(back.multipliers(layer), layout.multipliers(layer))
    assert back.layers == (5, 2, 9)  # order kept: it decides the primes


def test_presets_match_the_design():
    demo = EngramLayout.from_preset("demo-v1", vocab_size=1000)
    assert (demo.ngram_vocab, demo.max_ngram, demo.heads, demo.layers) == (
        (646400, 646400),
        3,
        8,
        (1, 15),
    )
    assert (demo.pad_id, demo.seed) == (2, 0)
    ds = PRESETS["deepseek-v4.1"]
    assert ds["ngram_vocab"] == (16000000,) * 3 and ds["max_ngram"] == 4
    assert ds["layers"] == (1, 14) and ds["heads"] == 8


def test_preset_overrides():
    layout = EngramLayout.from_preset(
        "demo-v1", vocab_size=1000, max_ngram=4, heads=2, layers=(3,), seed=None
    )
    # only the order changed: every order keeps the preset's size
    assert layout.ngram_vocab == (646400,) * 3 and layout.heads == 2 and layout.layers == (3,)
    assert layout.seed == 0  # None means "keep the preset's"
    resized = layout.with_ngram_vocab([5000, 6000, 7000])
    assert resized.ngram_vocab == (5000, 6000, 7000) and resized.heads == 2
    assert resized.head_rows(3)[0] == 5003


def test_parse_int_list():
    assert parse_int_list("646400, 646_400", name="x") == (646400, 646400)
    assert parse_int_list("1.5k,2M,1g", name="x") == (1500, 2_000_000, 1_000_000_000)
    for bad in ("a,b", "", " , "):
        with pytest.raises(UsageError, match="x: expected"):
            parse_int_list(bad, name="x")


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"heads": 0}, "heads per n-gram order must be between 1"),
        ({"heads": 5000}, "heads per n-gram order must be between 1"),
        ({"max_ngram": 1, "ngram_vocab": ()}, "max n-gram order must be between 2"),
        ({"vocab_size": 1}, "canonical vocab size must be at least 2"),
        ({"ngram_vocab": (10, 1)}, "n-gram vocab sizes must be at least 2"),
        ({"ngram_vocab": (10, 20, 30)}, "expected 2 n-gram vocab sizes"),
        ({"layers": ()}, "at least one Engram layer"),
        ({"layers": (1, 1)}, "layer ids must be distinct"),
        ({"layers": (-1,)}, "layer ids must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"pad_id": -2}, "pad id must be >= 0"),
        ({"heads": "8"}, "layout heads: expected an integer, got '8'"),
        ({"heads": 2.0}, "layout heads: expected an integer"),
        ({"layers": 3}, "layout layers: expected a list of integers"),
    ],
)
def test_nonsensical_layouts_are_refused(overrides, message):
    with pytest.raises(UsageError, match=message):
        small_layout(**overrides)


def test_unknown_preset_and_missing_fields():
    with pytest.raises(UsageError, match="unknown preset 'demo-v9'; expected one of: demo-v1"):
        EngramLayout.from_preset("demo-v9", vocab_size=100)
    data = small_layout().to_dict()
    del data["heads"]
    with pytest.raises(UsageError, match=r"missing fields \['heads'\]"):
        EngramLayout.from_dict(data)


def test_layer_lookups_refuse_other_layers():
    with pytest.raises(UsageError, match="layer 7 is not an Engram layer"):
        small_layout().head_rows(7)


def test_pad_id_must_be_a_token_of_the_vocab(tiny_vocab):
    layout = small_layout(pad_id=tiny_vocab.source_vocab_size)
    with pytest.raises(UsageError, match="pad id .* is outside the tokenizer's vocab"):
        layout.pad_canonical_id(tiny_vocab)
    assert small_layout(pad_id=4).pad_canonical_id(tiny_vocab) == tiny_vocab.canonical_ids[4]


# ----------------------------------------------------------------- resolve_layout
class _Vocab:
    """The two things resolve_layout reads of a vocab."""

    canonical_vocab_size = 1000
    source_vocab_size = 1200
    canonical_ids = np.arange(1200) % 1000


def test_resolve_layout_is_the_preset_with_the_given_fields_overriding_it():
    from engramctl.layout import PRESET_DTYPE, PRESET_HEAD_DIM, LayoutRequest, resolve_layout

    default = resolve_layout(LayoutRequest(), vocab=_Vocab())
    assert default.layout == EngramLayout.from_preset("demo-v1", vocab_size=1000)
    assert (default.dim, default.dtype) == (PRESET_HEAD_DIM["demo-v1"], PRESET_DTYPE["demo-v1"])
    request = LayoutRequest(preset="deepseek-v4.1", ngram_vocab="101,103,107", layers="3", seed=5)
    got = resolve_layout(request, vocab=_Vocab())
    want = EngramLayout.from_preset(
        "deepseek-v4.1", vocab_size=1000, ngram_vocab=(101, 103, 107), layers=(3,), seed=5
    )
    assert got.layout == want and got.layer_ids == (3,) and got.dim == 256
    with pytest.raises(UsageError, match="--layers"):
        LayoutRequest(layers="")
    with pytest.raises(UsageError, match="pad id 5000"):
        resolve_layout(LayoutRequest(pad_id=5000), vocab=_Vocab())


def test_picked_layers_keep_the_presets_primes():
    from engramctl.layout import LayoutRequest, resolve_layout

    picked = resolve_layout(LayoutRequest(layers=(15,)), vocab=_Vocab(), pick_layers=True)
    assert picked.layout.layers == (1, 15) and picked.layer_ids == (15,)
    new = resolve_layout(LayoutRequest(layers=(15,)), vocab=_Vocab())
    assert new.layout.layers == (15,)
    assert new.layout.head_rows(15).tolist() != picked.layout.head_rows(15).tolist()
    other = resolve_layout(LayoutRequest(layers=(2,)), vocab=_Vocab(), pick_layers=True)
    assert other.layout.layers == (2,) and other.layer_ids == (2,)


def test_a_source_fixes_the_layout_and_layers_pick_from_it():
    from engramctl.layout import LayoutRequest, LayoutSource, resolve_layout

    layout = small_layout(vocab_size=1000)
    source = LayoutSource(layout, 8, "float32", flag="--table", where="table t.zarr")
    whole = resolve_layout(LayoutRequest(), vocab=_Vocab(), source=source)
    assert whole.layout == layout and whole.layer_ids == (0, 1) and whole.dim == 8
    assert resolve_layout(LayoutRequest(layers="1"), vocab=_Vocab(), source=source).layer_ids == (
        1,
    )
    with pytest.raises(UsageError, match=r"--layers \[7\] are not layers of table t.zarr"):
        resolve_layout(LayoutRequest(layers="1,7"), vocab=_Vocab(), source=source)
    for given_flag in (LayoutRequest(preset="demo-v1"), LayoutRequest(heads=2)):
        with pytest.raises(UsageError, match="--table fixes the layout"):
            resolve_layout(given_flag, vocab=_Vocab(), source=source)
