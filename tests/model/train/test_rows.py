"""The out-of-core write-back buffer against a plain dict, and the TrainableRows protocol of both
kinds of rows (state, commit with side columns, load)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from engramctl.model.train.out_of_core import WriteBuffer  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 200), min_size=1, max_size=30), min_size=1, max_size=12))
def test_write_buffer_is_a_map_from_row_to_latest_values(steps):
    dim = 3
    buffer = WriteBuffer(capacity=10_000, dim=dim)
    model: dict[int, tuple] = {}
    for k, ids in enumerate(steps):
        ids = np.array(sorted(ids), dtype=np.int64)
        rows = (ids[:, None] * 10 + k + np.arange(dim)).astype(np.float32)
        t = np.full(len(ids), k, dtype=np.float32)
        buffer.put(ids, rows, rows + 1, rows + 2, t)
        for i, row_id in enumerate(ids.tolist()):
            model[row_id] = (rows[i], k)
        assert np.all(np.diff(buffer.ids) > 0) and len(buffer) == len(model)
    probe = np.arange(0, 205, dtype=np.int64)
    present, slots = buffer.find(probe)
    assert present.tolist() == [i in model for i in probe.tolist()]
    for row_id, slot in zip(probe[present].tolist(), slots.tolist(), strict=True):
        rows, k = model[row_id]
        np.testing.assert_array_equal(buffer.rows[slot], rows)
        np.testing.assert_array_equal(buffer.v[slot], rows + 2)
        assert buffer.t[slot] == k
    buffer.clear()
    assert len(buffer) == 0 and not buffer.find(probe)[0].any()


@pytest.mark.parametrize("out_of_core", [False, True])
def test_trainable_rows_state_commit_and_load(tmp_path, ds_vocab, out_of_core):
    """Both kinds of rows answer the protocol: after some steps, ``commit(table)`` writes what
    ``state_dict`` says a commit writes, and fresh rows given that state (``load_state_dict``)
    read the same values as the trained ones."""
    import torch

    from engramctl.model.train.out_of_core import wants_master
    from engramctl.model.train.rows import commit_writes, open_trainable_rows
    from engramctl.model.train.run import TrainConfig
    from engramctl.table.core.dtypes import decode_rows, encode_rows
    from engramctl.table.sources.table import open_table
    from tests.model.table_double import small_real_table

    config = TrainConfig(out_of_core=out_of_core, checkpoint_every=2, batch=2, seq_len=4)
    path = small_real_table(tmp_path / "t.zarr", ds_vocab, dtype="bfloat16")  # masters != table
    rng = np.random.default_rng(0)
    with open_table(path, mode="r+") as table:
        layer = table.layout.layers[0]
        probe = torch.arange(table.layout.layer_rows(layer))
        trained = open_trainable_rows(table, config)[layer]
        for _ in range(3):
            unique = np.unique(rng.integers(0, table.layout.layer_rows(layer), 6))
            leaf = trained.gather(unique, torch.from_numpy(unique))
            (leaf**2).sum().backward()
            trained.step(unique, torch.from_numpy(unique), leaf, lr=0.1, weight_decay=0.0)
        state = trained.state_dict()
        writes = commit_writes({trained.state_key: {str(layer): state}}, master=True)
        # out of core the moments and the master copy (a bfloat16 table) ride in the commit
        assert [sorted(side or ()) for *_, side in writes] == (
            [["adam", "master"]] if out_of_core else [[]]
        )
        assert wants_master(table)
        trained.commit(table)  # staged ...
        assert not table.commits and table.staged_rows
        table.flush()  # ... and one commit
        assert len(table.commits) == 1
        for at, ids, values, side in writes:
            stored = decode_rows(table.gather(at, ids), table.dtype, table.dim)
            rounded = decode_rows(encode_rows(values, table.dtype), table.dtype, table.dim)
            np.testing.assert_array_equal(stored, rounded)
            for name, column in (side or {}).items():
                np.testing.assert_array_equal(table.side_rows(at, name, ids), column)
        assert trained.wrote_rows and trained.rows_trained > 0
        values = trained.lookup(probe)
        fresh = open_trainable_rows(table, config)[layer]
        fresh.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        assert torch.equal(fresh.lookup(probe), values)


@pytest.mark.parametrize("master", [True, False])
def test_fp8_master_copy_keeps_updates_below_the_storage_precision(tmp_path, ds_vocab, master):
    """fp8 rows trained out of core with a commit after every step: with the float32 master copy
    (side column ``master``) each step starts from the exact value and the rows follow plain
    float32 Adam (constant gradient: down by ``lr`` a step); without it every step starts from
    the rounded stored row, and updates far below fp8's precision round away."""
    import torch

    from engramctl.model.train.out_of_core import OutOfCoreRows
    from engramctl.table.core.dtypes import decode_rows
    from engramctl.table.sources.table import open_table
    from tests.model.table_double import small_real_table

    path = small_real_table(tmp_path / "t.zarr", ds_vocab, dim=32, dtype="float8_e4m3fn")
    ids = np.arange(0, 40, 3)
    with open_table(path, mode="r+") as table:
        start = decode_rows(table.gather(1, ids), table.dtype, table.dim)
        lr, steps = float(np.abs(start).max()) * 2e-4, 12
        rows = OutOfCoreRows(table, 1, "cpu", buffer_rows=1, master=master)
        for _ in range(steps):
            leaf = rows.gather(ids, torch.from_numpy(ids))
            leaf.sum().backward()  # gradient +1 everywhere
            rows.step(ids, torch.from_numpy(ids), leaf, lr=lr, weight_decay=0.0)
        rows.flush()
        assert len(table.commits) == steps  # a commit per step: every step read back
        trained = rows.lookup(torch.from_numpy(ids)).numpy()
        expected = start - steps * lr  # Adam with a constant gradient moves lr per step
        side = table.side_rows(1, "master", ids)
        adam = table.side_rows(1, "adam", ids)
    assert (adam[:, -1] == steps).all()
    if master:
        np.testing.assert_allclose(trained, expected, rtol=0, atol=lr * 1e-2)  # float32 sums
        np.testing.assert_array_equal(side, trained)
    else:
        assert side is None
        # the rows lost (almost) all of the steps' movement to rounding
        assert np.abs(trained - expected).max() > steps * lr / 2
