"""Dead positions (DeepSeek-V4.1's image positions) hashed as vLLM and SGLang hash them.

The oracle here is the engines' rule written out position by position from DESIGN.md and issue 24,
in plain Python: for the n-gram ending at ``t``, walk back ``k = 0, 1, ...``; once a dead position
(or the sequence start) is met, that token and every older one is the pad id. Everything that
hashes (the numpy specification, the numba kernels, streams) is held to it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl import HashStream, NgramHasher
from engramctl.dead import DEAD, DeadRule, mark_dead, parse_spans, spans_mask
from engramctl.errors import EngramError
from engramctl.hashing import CHUNK, hash_canonical
from tests.conftest import make_layout, random_ids


def engine_rule_rows(hasher: NgramHasher, ids, dead, layer: int) -> np.ndarray:
    """Row ids ``[T, H]`` of one sequence: the engines' rule, one position at a time."""
    layout, vocab = hasher.layout, hasher.vocab
    mult = [int(m) for m in layout.multipliers(layer)]
    rows = [int(p) for p in layout.head_rows(layer)]
    pad = hasher.pad
    out = []
    for t in range(len(ids)):
        values, blocked = [], False
        for k in range(layout.max_ngram):
            pos = t - k
            blocked = blocked or pos < 0 or bool(dead[pos]) or int(ids[pos]) < 0
            values.append(pad if blocked else int(vocab.canonical_ids[int(ids[pos])]))
        mix, row = values[0] * mult[0], []
        for n in range(2, layout.max_ngram + 1):
            mix ^= values[n - 1] * mult[n - 1]
            mix = (mix + 2**63) % 2**64 - 2**63  # int64 wrap-around
            row += [mix % p for p in rows[(n - 2) * layout.heads : (n - 1) * layout.heads]]
        out.append(row)
    return np.array(out, dtype=np.int64)


def test_the_issues_image_span_6_to_9_of_18_tokens(ds_vocab, ds_layout):
    """The issue's case: 288 row ids (positions 6-12) differ from hashing the span as text."""
    hasher = NgramHasher(ds_layout, ds_vocab)
    ids = random_ids(np.random.default_rng(24), (18,), ds_vocab.source_vocab_size, False)
    dead = spans_mask(parse_spans("6:10"), 18)
    plain = hasher.hash(ids)
    masked = hasher.hash(ids, dead=dead)
    negative = hasher.hash(np.where(dead, -1, ids))
    reference = hasher.hash_reference(ids, dead=dead)
    differ = 0
    for layer in ds_layout.layers:
        expected = engine_rule_rows(hasher, ids, dead, layer)
        for got in (masked[layer], negative[layer], reference[layer]):
            np.testing.assert_array_equal(got, expected)
        changed = masked[layer] != plain[layer]
        assert np.flatnonzero(changed.any(axis=1)).tolist() == list(range(6, 13))
        differ += int(changed.sum())
    # 4 dead positions x 24 heads, then 24, 16 and 8 heads as the n-grams grow past the span
    assert differ == 2 * (4 * 24 + 24 + 16 + 8) == 288


def test_a_dead_position_gets_the_all_pad_rows_and_any_negative_id_is_dead(ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    all_pad = hasher.hash(np.array([ds_layout.pad_id]))
    for marker in (-1, -4, -(2**62)):
        rows = hasher.hash(np.array([5, 17, marker, 9]))
        for layer in ds_layout.layers:
            np.testing.assert_array_equal(rows[layer][2], all_pad[layer][0])
            # after the dead position, the sequence starts over as if from a pad token
            restart = hasher.hash(np.array([ds_layout.pad_id, 9]))[layer][1]
            np.testing.assert_array_equal(rows[layer][3], restart)


def _draw_case(data, vocab_size: int, length_max: int = 50):
    length = data.draw(st.integers(1, length_max))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ids = random_ids(rng, (2, length), vocab_size, negatives=data.draw(st.booleans()))
    span = st.tuples(st.integers(0, length - 1), st.integers(1, 6))
    spans = data.draw(st.lists(span, max_size=4))
    dead = np.zeros((2, length), dtype=bool)
    for start, size in spans:
        dead[rng.integers(0, 2), start : start + size] = True
    return ids, dead


@pytest.mark.parametrize("small_primes", [False, True])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_spans_match_the_engine_rule(small_primes, data, ds_vocab, ds_layout):
    layout = ds_layout
    if small_primes:  # the integer-% kernel path (primes below FAST_MOD_MIN)
        layout = make_layout((211, 223), vocab_size=ds_vocab.canonical_vocab_size, max_ngram=3)
    hasher = NgramHasher(layout, ds_vocab)
    ids, dead = _draw_case(data, ds_vocab.source_vocab_size)
    fast = hasher.hash(ids, dead=dead, table_rows=True)
    slow = hasher.hash_reference(ids, dead=dead, table_rows=True)
    for layer in layout.layers:
        np.testing.assert_array_equal(fast[layer], slow[layer])
        for b in range(2):
            expected = engine_rule_rows(hasher, ids[b], dead[b], layer)
            np.testing.assert_array_equal(fast[layer][b] - layout.head_offsets(layer), expected)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_streams_carry_dead_positions_across_pieces(data, ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    ids, dead = _draw_case(data, ds_vocab.source_vocab_size, length_max=40)
    length = ids.shape[1]
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=6)))
    whole = hasher.hash(ids, dead=dead)
    for as_mask in (True, False):  # a dead mask per piece, or the -1 ids themselves
        stream = HashStream(hasher, batch=2)
        pieces = {layer: [] for layer in ds_layout.layers}
        for start, stop in zip([0, *cuts], [*cuts, length], strict=True):
            piece, mask = ids[:, start:stop], dead[:, start:stop]
            if as_mask:
                rows = stream.feed(piece, dead=mask)
            else:
                rows = stream.feed(np.where(mask, -1, piece))
            for layer, got in rows.items():
                pieces[layer].append(got)
        for layer in ds_layout.layers:
            np.testing.assert_array_equal(np.concatenate(pieces[layer], axis=1), whole[layer])


@pytest.mark.parametrize("length", [CHUNK - 1, 2 * CHUNK + 7])
def test_dead_kernel_across_task_chunks(length, ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    ids = random_ids(np.random.default_rng(length), (2, length), ds_vocab.source_vocab_size, False)
    dead = np.zeros_like(ids, dtype=bool)
    dead[:, CHUNK - 2 : CHUNK + 1] = True  # a span across the first task boundary
    dead[1, -1] = True
    fast, slow = hasher.hash(ids, dead=dead), hasher.hash_reference(ids, dead=dead)
    for layer in ds_layout.layers:
        np.testing.assert_array_equal(fast[layer], slow[layer])


def test_the_carried_context_knows_a_dead_position(ds_vocab, ds_layout):
    hasher = NgramHasher(ds_layout, ds_vocab)
    context = hasher.next_context(np.array([[5, 6, 7, 8]]), dead=np.array([[0, 0, 1, 0]], bool))
    assert context[0, 1] == DEAD and context[0, 0] == ds_vocab.canonical_ids[6]
    single = HashStream(hasher)
    for token, is_dead in zip([5, 6, 7, 8, 9, 10], [0, 0, 1, 0, 0, 0], strict=True):
        got = single.hash(np.array([token]), dead=np.array([bool(is_dead)]))
    whole = hasher.hash(np.array([5, 6, 7, 8, 9, 10]), dead=np.array([0, 0, 1, 0, 0, 0], bool))
    for layer in ds_layout.layers:
        np.testing.assert_array_equal(got[layer][0], whole[layer][-1])


def test_sglang_v41_rule_marks_the_image_token_and_shifted_ids(ds_vocab, ds_layout):
    rule = DeadRule.sglang_v41()
    assert DeadRule.parse("v4.1-vision") == rule == DeadRule.parse(" >=1000000 , 129264")
    ids = np.array([5, 129264, 17, 1_000_000, 3_000_123, 9, 42])
    hasher = NgramHasher(ds_layout, ds_vocab, dead_rule=rule)
    got = hasher.hash(ids)  # ids past the vocab are dead, not refused
    expected = NgramHasher(ds_layout, ds_vocab).hash(np.array([5, -1, 17, -1, -1, 9, 42]))
    for layer in ds_layout.layers:
        np.testing.assert_array_equal(got[layer], expected[layer])
    with pytest.raises(EngramError, match="at or above"):
        NgramHasher(ds_layout, ds_vocab).hash(ids)


@pytest.mark.parametrize("text", ["", "x", "-3", ">=1,>=2", "1,>=x", "9" * 30, ">=" + "9" * 20])
def test_bad_dead_rules_are_refused(text):
    with pytest.raises(EngramError, match="dead ids"):
        DeadRule.parse(text)


@pytest.mark.parametrize("text", ["6", "6:", ":4", "4:4", "5:2", "-1:3", "a:b", "1:2,"])
def test_bad_spans_are_refused(text):
    with pytest.raises(EngramError, match="dead span"):
        parse_spans(text)


def test_spans_and_masks_are_checked():
    with pytest.raises(EngramError, match="not inside the 18 positions"):
        spans_mask([(10, 19)], 18)
    with pytest.raises(EngramError, match="boolean mask shaped like"):
        mark_dead(np.zeros(4, np.int64), np.zeros(3, bool))
    with pytest.raises(EngramError, match="boolean mask shaped like"):
        mark_dead(np.zeros(4, np.int64), np.zeros(4, np.int64))
    assert mark_dead(np.arange(3), np.array([False, True, False])).tolist() == [0, -1, 2]


def test_hash_canonical_reads_negative_ids_as_dead_given_the_pad_id():
    extended = np.array([[1, 1, 3, -1, 7]])
    mult, rows = np.array([3, 5, 7]), np.array([11, 13, 17, 19])
    got = hash_canonical(extended, mult, rows, heads=2, pad=1)
    # without the pad id the bare kernels hash every value as it is (crafted-value tests)
    bare = hash_canonical(extended, mult, rows, heads=2)
    assert (bare[0, 1] != got[0, 1]).any()
    # the dead position hashes the all-pad n-grams; the next one starts over after a pad
    alone = hash_canonical(np.array([[1, 1, 1, 7]]), mult, rows, heads=2)
    np.testing.assert_array_equal(got[0, 1], alone[0, 0])
    np.testing.assert_array_equal(got[0, 2], alone[0, 1])


def test_cache_plan_traces_hash_dead_positions(tmp_path, ds_vocab, demo_layout):
    """cache-plan hashes a workload through NgramHasher: a -1 in a pre-tokenized workload is a
    dead position there too (one of the callers the issue names)."""
    from engramctl.cacheplan.trace import build_traces, read_workload

    rows = np.random.default_rng(2).integers(3, 500, size=(4, 12))
    rows[1, 3:6] = -1
    rows[3, 0] = -1
    np.save(tmp_path / "w.npy", rows)
    workload = read_workload([tmp_path / "w.npy"], tokenizer=None, seq_len=999)
    hasher = NgramHasher(demo_layout, ds_vocab)
    traces = build_traces(workload, hasher, batch=2, layers=demo_layout.layers)
    dead = rows < 0
    for layer, trace in traces.items():
        for k in range(2):
            part = slice(2 * k, 2 * k + 2)
            expected = hasher.hash_reference(
                np.where(dead, 0, rows)[part], dead=dead[part], table_rows=True
            )[layer]
            got = trace.rows[trace.ids[trace.bounds[k] : trace.bounds[k + 1]]]
            np.testing.assert_array_equal(got, np.unique(expected))
