"""N-gram hashing: hand-worked case, numba against the numpy spec, streaming invariance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl import EngramLayout, HashStream, NgramHasher
from engramctl.errors import EngramError
from engramctl.hashing import CHUNK, FAST_MOD_MIN, hash_canonical, hash_layer_reference
from tests.conftest import make_layout, random_ids


def test_hand_worked_small_case():
    canonical = np.array([[3, 5, 7]])
    mult = np.array([3, 5, 7], dtype=np.int64)
    rows = np.array([11, 13, 17, 19], dtype=np.int64)  # heads=2, orders 2 and 3
    pad = 1
    out = hash_layer_reference(canonical, mult, rows, heads=2, pad=pad)
    # t=0: mix2 = 3*3 ^ 1*5 = 9 ^ 5 = 12; mix3 = 12 ^ 1*7 = 11
    # t=1: mix2 = 5*3 ^ 3*5 = 0;          mix3 = 0 ^ 1*7 = 7
    # t=2: mix2 = 7*3 ^ 5*5 = 21 ^ 25 = 12; mix3 = 12 ^ 3*7 = 12 ^ 21 = 25
    expected = [
        [12 % 11, 12 % 13, 11 % 17, 11 % 19],
        [0, 0, 7, 7],
        [12 % 11, 12 % 13, 25 % 17, 25 % 19],
    ]
    assert out[0].tolist() == expected


def test_wraparound_and_floor_modulo():
    big = np.array([[2**62, 2**62 + 12345]])
    mult = np.array([7, 2**61 + 1], dtype=np.int64)
    rows = np.array([16000057], dtype=np.int64)
    out = hash_layer_reference(big, mult, rows, heads=1, pad=0)
    for t in range(2):
        prev = 0 if t == 0 else int(big[0, t - 1])
        mix = ((int(big[0, t]) * 7) ^ (prev * (2**61 + 1))) % 2**64
        mix = mix - 2**64 if mix >= 2**63 else mix  # int64 wrap
        assert out[0, t, 0] == mix % 16000057  # Python floor modulo: never negative
        assert out[0, t, 0] >= 0


@pytest.mark.parametrize("dead", [False, True], ids=["no-dead", "dead"])
@pytest.mark.parametrize("preset", ["demo-v1", "deepseek-v4.1"])
def test_numba_matches_numpy_spec(preset, dead, ds_vocab):
    # without a negative id the batch goes through the fast kernels, with one the dead kernel
    layout = EngramLayout.from_preset(preset, vocab_size=ds_vocab.canonical_vocab_size)
    hasher = NgramHasher(layout, ds_vocab)
    rng = np.random.default_rng(0)
    ids = random_ids(rng, (4, 300), ds_vocab.source_vocab_size, negatives=dead)
    assert (ids < 0).any() == dead
    fast = hasher.hash(ids)
    slow = hasher.hash_reference(ids)
    for layer in layout.layers:
        assert fast[layer].shape == (4, 300, layout.heads_per_layer)
        assert fast[layer].dtype == np.int64
        np.testing.assert_array_equal(fast[layer], slow[layer])
        assert (fast[layer] >= 0).all()
        assert (fast[layer] < layout.head_rows(layer)).all()
    rows_fast = hasher.hash(ids, table_rows=True)
    rows_slow = hasher.hash_reference(ids, table_rows=True)
    for layer in layout.layers:
        np.testing.assert_array_equal(rows_fast[layer], rows_slow[layer])
        assert (rows_fast[layer] < layout.layer_rows(layer)).all()


def test_large_primes_use_exact_fallback(ds_vocab):
    layout = make_layout(
        (2**27, 3000), layers=(0,), seed=5, vocab_size=ds_vocab.canonical_vocab_size
    )
    hasher = NgramHasher(layout, ds_vocab)
    ids = random_ids(np.random.default_rng(1), (3, 200), ds_vocab.source_vocab_size, False)
    np.testing.assert_array_equal(hasher.hash(ids)[0], hasher.hash_reference(ids)[0])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_streaming_pieces_equal_whole(data, ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    length = data.draw(st.integers(1, 60))
    seed = data.draw(st.integers(0, 2**32 - 1))
    ids = random_ids(np.random.default_rng(seed), (2, length), ds_vocab.source_vocab_size)
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=5)))
    whole = hasher.hash(ids)
    stream = HashStream(hasher, batch=2)
    pieces = {layer: [] for layer in ds_layout.layers}
    for start, stop in zip([0, *cuts], [*cuts, length], strict=True):
        for layer, rows in stream.feed(ids[:, start:stop]).items():
            pieces[layer].append(rows)
    for layer in ds_layout.layers:
        np.testing.assert_array_equal(np.concatenate(pieces[layer], axis=1), whole[layer])


def test_one_dimensional_input_and_bad_ids(ds_vocab, demo_layout):
    hasher = NgramHasher(demo_layout, ds_vocab)
    ids = np.array([10, 20, 30])
    assert hasher.hash(ids)[1].shape == (3, demo_layout.heads_per_layer)
    np.testing.assert_array_equal(hasher.hash(ids)[1], hasher.hash(ids[None])[1][0])
    with pytest.raises(EngramError, match="at or above"):
        hasher.hash(np.array([1, ds_vocab.source_vocab_size]))
    with pytest.raises(EngramError, match="integers"):
        hasher.hash(np.array([1.5]))
    with pytest.raises(EngramError, match=r"\[T\] or \[B, T\]"):
        hasher.hash(np.zeros((1, 2, 3), dtype=np.int64))


# ------------------------------------------------------------------ kernels on crafted values
def extended_for_mixes(mixes: np.ndarray) -> np.ndarray:
    """Canonical ids whose order-2 mix with multipliers (1, 1) is each of ``mixes``.

    With ``m = (1, 1)``, ``mix[t] = ext[t+1] ^ ext[t]``; the first id (the context) is 0.
    """
    ext = np.zeros(len(mixes) + 1, dtype=np.int64)
    for t, mix in enumerate(mixes):
        ext[t + 1] = ext[t] ^ mix
    return ext[None]


EDGE_MIXES = [0, 1, -1, 2**63 - 1, -(2**63), -(2**63) + 1, 2**62, -(2**62), 2**53 + 1, -(2**53) - 1]


@pytest.mark.parametrize(
    "prime",
    [3, 8191, FAST_MOD_MIN + 17, 16000057, 999999999989, 2**40 + 15],
    ids=["tiny", "below-fast", "fast-min", "16M", "1e12", "2^40"],
)
def test_floor_modulo_is_exact_on_edge_mixes(prime):
    rng = np.random.default_rng(prime % 1000)
    near_multiples = []
    for k in (1, 2, 3, 2**63 // prime - 1, 2**63 // prime, -(2**63 // prime)):
        for d in (-1, 0, 1):
            v = k * prime + d
            if -(2**63) <= v < 2**63:
                near_multiples.append(v)
    randoms = rng.integers(-(2**63), 2**63 - 1, size=500, dtype=np.int64, endpoint=True).tolist()
    mixes = np.array(EDGE_MIXES + near_multiples + randoms, dtype=np.int64)
    out = hash_canonical(
        extended_for_mixes(mixes), np.array([1, 1]), np.array([prime, prime]), heads=2
    )
    expected = [int(m) % prime for m in mixes.tolist()]  # Python's floor modulo
    assert out[0, :, 0].tolist() == expected
    assert out[0, :, 1].tolist() == expected


@settings(max_examples=60, deadline=None)
@given(
    mixes=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50),
    prime=st.sampled_from([FAST_MOD_MIN + 17, 65537, 646403, 16000057, 2**31 - 1, 2**40 + 15]),
)
def test_fast_floor_modulo_matches_python(mixes, prime):
    out = hash_canonical(
        extended_for_mixes(np.array(mixes, dtype=np.int64)), np.array([1, 1]), np.array([prime]), 1
    )
    assert out[0, :, 0].tolist() == [m % prime for m in mixes]


@pytest.mark.parametrize("size", [FAST_MOD_MIN - 200, FAST_MOD_MIN, 5])
def test_kernel_choice_boundary_matches_spec(size, ds_vocab):
    # size-1 below the threshold: the % kernel; at it: the float kernel (all primes >= 2**13).
    layout = EngramLayout(
        ngram_vocab=(size, size + 100, size),
        max_ngram=4,
        heads=3,
        layers=(0, 2),
        seed=3,
        pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )
    hasher = NgramHasher(layout, ds_vocab)
    ids = random_ids(np.random.default_rng(size), (3, 257), ds_vocab.source_vocab_size, False)
    fast, slow = hasher.hash(ids, table_rows=True), hasher.hash_reference(ids, table_rows=True)
    for layer in layout.layers:
        np.testing.assert_array_equal(fast[layer], slow[layer])


def test_hash_canonical_matches_hand_worked_case_and_checks_arguments():
    out = hash_canonical(
        np.array([[1, 1, 3, 5, 7]]), np.array([3, 5, 7]), np.array([11, 13, 17, 19]), 2
    )
    assert out[0].tolist() == [[1, 12, 11, 11], [0, 0, 7, 7], [1, 12, 8, 6]]
    with pytest.raises(EngramError, match="expected 2 x 3 head row counts"):
        hash_canonical(np.zeros((1, 4)), np.array([1, 1, 1]), np.array([11, 13]), 3)
    with pytest.raises(EngramError, match="extended ids must be"):
        hash_canonical(np.zeros((1, 1)), np.array([1, 1, 1]), np.array([11, 13]), 1)
    with pytest.raises(EngramError, match="out must be"):
        hash_canonical(
            np.zeros((1, 5)), np.array([1, 1, 1]), np.array([11, 13]), 1, out=np.empty((1, 3, 3))
        )


# ----------------------------------------------------------------------- NgramHasher behaviour
@pytest.mark.parametrize("length", [0, 1, 2, 3, CHUNK - 1, 2 * CHUNK + 7])
def test_single_long_sequences_across_task_chunks(length, ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    ids = random_ids(np.random.default_rng(length), (1, length), ds_vocab.source_vocab_size, False)
    fast, slow = hasher.hash(ids), hasher.hash_reference(ids)
    for layer in ds_layout.layers:
        assert fast[layer].shape == (1, length, ds_layout.heads_per_layer)
        np.testing.assert_array_equal(fast[layer], slow[layer])


def test_out_buffers_are_filled_and_returned(ds_vocab, demo_layout):
    hasher = NgramHasher(demo_layout, ds_vocab)
    ids = random_ids(np.random.default_rng(5), (2, 40), ds_vocab.source_vocab_size)
    H = demo_layout.heads_per_layer
    buffers = {layer: np.full((2, 40, H), -1, dtype=np.int64) for layer in demo_layout.layers}
    result = hasher.hash(ids, out=buffers, table_rows=True)
    expected = hasher.hash_reference(ids, table_rows=True)
    for layer in demo_layout.layers:
        assert result[layer] is buffers[layer]
        np.testing.assert_array_equal(buffers[layer], expected[layer])
    # one layer only, 1-D input: [T, H] buffers
    flat = {15: np.empty((40, H), dtype=np.int64)}
    result = hasher.hash(ids[1], layers=[15], out=flat)
    assert list(result) == [15] and result[15] is flat[15]
    np.testing.assert_array_equal(flat[15], hasher.hash(ids)[15][1])
    for bad in (
        np.empty((2, 40, H), np.int32),
        np.empty((2, 41, H), np.int64),
        np.empty((2, H, 40), np.int64).transpose(0, 2, 1),
    ):
        with pytest.raises(EngramError, match=r"out\[1\] must be a writeable C-contiguous int64"):
            hasher.hash(ids, out={1: bad})


def test_layers_subset_context_and_id_checks(ds_vocab, demo_layout):
    hasher = NgramHasher(demo_layout, ds_vocab)
    ids = np.array([[10, 20, 30]], dtype=np.uint16)
    assert list(hasher.hash(ids, layers=[15])) == [15]
    with pytest.raises(EngramError, match="layer 3 is not an Engram layer"):
        hasher.hash(ids, layers=[3])
    with pytest.raises(EngramError, match=r"context must be \[1, 2\]"):
        hasher.hash(ids, context=np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(EngramError, match="does not fit in int64"):
        hasher.hash(np.array([2**63], dtype=np.uint64))
    other = EngramLayout.from_preset("demo-v1", vocab_size=ds_vocab.canonical_vocab_size + 1)
    with pytest.raises(EngramError, match="rebuild the layout from this vocab"):
        NgramHasher(other, ds_vocab)


def test_next_context_is_the_canonical_tail(ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    ids = np.array([[5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(hasher.next_context(ids), ds_vocab.apply(ids[:, -3:]))
    short = np.array([[42]])
    expected = [[hasher.pad, hasher.pad, int(ds_vocab.canonical_ids[42])]]
    assert hasher.next_context(short).tolist() == expected
    assert hasher.next_context(short[:, :0]).tolist() == [[hasher.pad] * 3]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_rows_do_not_depend_on_the_batch(data, ds_vocab, demo_layout):
    hasher = NgramHasher(demo_layout, ds_vocab)
    batch = data.draw(st.integers(1, 5))
    length = data.draw(st.integers(0, 40))
    seed = data.draw(st.integers(0, 2**32 - 1))
    ids = random_ids(np.random.default_rng(seed), (batch, length), ds_vocab.source_vocab_size)
    whole = hasher.hash(ids)
    for b in range(batch):
        alone = hasher.hash(ids[b])
        for layer in demo_layout.layers:
            np.testing.assert_array_equal(alone[layer], whole[layer][b])
