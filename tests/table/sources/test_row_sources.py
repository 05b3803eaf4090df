"""One suite run against every row source (zarr-python's ``StoreTests`` habit).

:class:`RowSourceTests` holds the tests; each subclass builds one kind of table once (its
``case`` fixture) and says what its rows must be: a plain-numpy expectation of every row of
every layer. Rows a test wrote must come back bit for bit; rows never written must be the init
recipe's values as the numpy specification (``init_values_reference``) computes them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engramctl.errors import EngramError, UsageError
from engramctl.table.core.blocksums import add_block_checksums
from engramctl.table.core.dtypes import encode_rows
from engramctl.table.core.lock import LOCK_NAME
from engramctl.table.core.rowinit import init_values_reference
from engramctl.table.core.store import open_store
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources import coldgather, linkedcold
from engramctl.table.sources.chunked import ChunkedSource
from engramctl.table.sources.linked import LinkedSource
from engramctl.table.sources.table import open_table

from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint
from ..conftest import make
from .conftest import BUCKET


@dataclass
class Case:
    """A table and what its rows must be: ``rows[layer]`` (stored rows, every row of the layer)
    and ``exact[layer]`` (True: written rows, compared bit for bit; False: init values)."""

    location: str | Path
    rows: dict[int, np.ndarray]
    exact: dict[int, np.ndarray]
    storage_options: dict | None = None
    check_chunks: bool = True

    def open(self, mode: str = "r"):
        return open_table(
            self.location,
            mode,
            storage_options=self.storage_options,
            check_chunks=self.check_chunks,
        )


def init_case(table_path, written: dict[int, np.ndarray]) -> Case:
    """The expectation of a float32 table: init values except the rows ``written`` (ids), which
    are overwritten here with random values."""
    rng = np.random.default_rng(7)
    rows, exact = {}, {}
    with open_table(table_path, "r+") as table:
        meta = table.meta
        for layer_id in table.layers:
            n = meta.layer(layer_id).rows
            want = init_values_reference(meta.init, layer_id, np.arange(n), meta.dim)
            rows[layer_id] = encode_rows(want, meta.dtype)
            exact[layer_id] = np.zeros(n, dtype=bool)
            ids = written.get(layer_id)
            if ids is not None:
                values = rng.standard_normal((ids.size, meta.dim)).astype(np.float32)
                table.write_rows(layer_id, ids, values)
                rows[layer_id][ids] = encode_rows(values, meta.dtype)
                exact[layer_id][ids] = True
    return Case(table_path, rows, exact)


# rows 2,056 (layer 1) and 2,208 (layer 15) in chunks of 300: the last chunks are partial
WRITTEN = {1: np.arange(290, 620), 15: np.r_[0:5, 899:901, 2200:2208]}


class RowSourceTests:
    """The tests every row source passes. A subclass gives ``case`` (class-scoped) and
    ``source_type``; ``write_refusal`` is the error of ``write_rows`` where rows are read-only."""

    source_type: type
    write_refusal: str | None = None

    @pytest.fixture
    def table(self, case):
        with case.open() as table:
            yield table

    @staticmethod
    def assert_rows(got, case: Case, layer_id: int, ids) -> None:
        ids = np.asarray(ids).reshape(-1)
        want, exact = case.rows[layer_id][ids], case.exact[layer_id][ids]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got[exact], want[exact])
        np.testing.assert_allclose(got[~exact], want[~exact], rtol=1e-6, atol=0)

    def test_the_source_is_the_expected_kind(self, table):
        assert type(table.source) is self.source_type

    def test_gather_equals_the_expected_rows(self, table, case):
        rng = np.random.default_rng(0)
        for layer_id in table.layers:
            n = case.rows[layer_id].shape[0]
            ids = rng.integers(0, n, 700)  # repeats and any order
            self.assert_rows(table.gather(layer_id, ids), case, layer_id, ids)
            every = np.arange(n)
            self.assert_rows(table.gather(layer_id, every), case, layer_id, every)

    def test_chunk_boundaries(self, table, case):
        chunk_rows = table.meta.chunk_rows
        for layer_id in table.layers:
            n = case.rows[layer_id].shape[0]
            edges = np.arange(chunk_rows, n, chunk_rows)
            ids = np.unique(np.r_[0, edges - 1, edges, n - 1])
            self.assert_rows(table.gather(layer_id, ids), case, layer_id, ids)

    def test_ids_of_any_shape_are_flattened(self, table, case):
        ids = np.array([[3, 1], [0, 7]], dtype=np.int32)
        self.assert_rows(table.gather(1, ids), case, 1, ids)

    def test_out_buffer_is_filled_and_returned(self, table, case):
        n = case.rows[1].shape[0]
        out = np.full((4, table.row_width), 9, dtype=table.meta.storage_dtype)
        for ids in ([0, 1, 2, 3], [n - 1, 5, 5, n - 2]):
            assert table.gather(1, ids, out=out) is out
            self.assert_rows(out, case, 1, ids)
        with pytest.raises(UsageError, match="out must be C-contiguous"):
            table.gather(1, [0, 1], out=out)
        with pytest.raises(UsageError, match="out must be C-contiguous"):
            table.gather(1, [0, 1], out=np.empty((2, table.row_width + 1), out.dtype))

    def test_empty_ids(self, table):
        got = table.gather(15, np.array([], dtype=np.int64))
        assert got.shape == (0, table.row_width) and got.dtype == table.meta.storage_dtype

    def test_out_of_range_ids_are_refused_naming_the_first(self, table, case):
        n = case.rows[15].shape[0]
        with pytest.raises(EngramError, match=rf"row id {n} \(position 1\) is out of range: "):
            table.gather(15, [0, n, -1])
        with pytest.raises(EngramError, match=r"row id -1 \(position 0\) is out of range"):
            table.gather(15, [-1])
        with pytest.raises(EngramError, match="row ids must be integers"):
            table.gather(15, [0.5])
        with pytest.raises(EngramError, match="layer 2 is not in this table"):
            table.gather(2, [0])

    def test_rows_equal_the_gather_of_their_range(self, table, case):
        chunk_rows = table.meta.chunk_rows
        for layer_id in table.layers:
            n = case.rows[layer_id].shape[0]
            for start, stop in ((0, n), (chunk_rows - 3, 2 * chunk_rows + 4), (n - 5, n), (7, 7)):
                got = table.rows(layer_id, start, stop)
                np.testing.assert_array_equal(got, table.gather(layer_id, np.arange(start, stop)))
                self.assert_rows(got, case, layer_id, np.arange(start, stop))
        with pytest.raises(EngramError, match=r"rows \[5, 3\) are out of range"):
            table.rows(1, 5, 3)
        n = case.rows[1].shape[0]
        with pytest.raises(EngramError, match=f"out of range: the layer has {n} rows"):
            table.rows(1, 0, n + 1)

    def test_read_chunk_is_the_chunk_zero_padded(self, table, case):
        chunk_rows = table.meta.chunk_rows
        for layer_id in table.layers:
            n = case.rows[layer_id].shape[0]
            last = (n - 1) // chunk_rows
            for c in (0, 1, last):
                start, stop = c * chunk_rows, min((c + 1) * chunk_rows, n)
                chunk = table.read_chunk(layer_id, c)
                assert chunk.shape == (chunk_rows, table.row_width)
                self.assert_rows(chunk[: stop - start], case, layer_id, np.arange(start, stop))
                assert not chunk[stop - start :].any()
            with pytest.raises(EngramError, match=f"chunk {last + 1} is out of range"):
                table.read_chunk(layer_id, last + 1)

    def test_close_then_read_again_and_reopen(self, case):
        ids = np.array([0, 299, 300, case.rows[1].shape[0] - 1, 1000])
        table = case.open()
        first = table.gather(1, ids).copy()
        table.close()
        np.testing.assert_array_equal(table.gather(1, ids), first)  # reloaded after close
        table.close()
        with case.open() as again:
            np.testing.assert_array_equal(again.gather(1, ids), first)
        self.assert_rows(first, case, 1, ids)

    def test_writes_are_refused_or_read_back(self, case, tmp_path):
        if self.write_refusal is not None:
            with pytest.raises(EngramError, match=self.write_refusal):
                with case.open("r+") as table:
                    table.write_rows(1, [0], np.zeros((1, table.dim), np.float32))
            return
        copy = Path(case.location).with_name(f"copy-{tmp_path.name}.zarr")  # a link stays valid
        shutil.copytree(case.location, copy, ignore=shutil.ignore_patterns(LOCK_NAME))
        try:
            with open_table(copy, "r+") as table:
                table.write_rows(1, [299, 300], np.full((2, table.dim), 3.0, np.float32))
            with open_table(copy) as table:
                want = encode_rows(np.full((2, table.dim), 3.0, np.float32), table.dtype)
                np.testing.assert_array_equal(table.gather(1, [299, 300]), want)
                self.assert_rows(table.gather(1, [298, 301]), case, 1, [298, 301])
                chunk = table.read_chunk(1, 0)  # rows and chunks read through the commit too
                np.testing.assert_array_equal(chunk[299], want[0])
                np.testing.assert_array_equal(table.rows(1, 299, 301), want)
        finally:
            shutil.rmtree(copy)


class TestChunkedFull(RowSourceTests):
    """Every chunk a file (init values written by create), some rewritten with data."""

    source_type = ChunkedSource

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("full") / "t.zarr"
        make(path, small_layout)
        return init_case(path, WRITTEN)


class TestChunkedLazy(RowSourceTests):
    """A lazy table: only the chunks written hold files; the others read as init values."""

    source_type = ChunkedSource

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("lazy") / "t.zarr"
        make(path, small_layout, lazy=True)
        case = init_case(path, WRITTEN)
        assert not (path / "layer_15" / "c" / "1").exists()  # chunk 1 of layer 15: unwritten
        return case


class TestChunkedZstd(RowSourceTests):
    """zstd chunks: decoded whole, kept in the LRU cache."""

    source_type = ChunkedSource

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("zstd") / "t.zarr"
        make(path, small_layout, compressor="zstd")
        return init_case(path, WRITTEN)


class TestChunkedRemote(RowSourceTests):
    """The lazy table's files in an S3 bucket (moto): chunks fetched with ``get_many``, the
    missing ones read as init values."""

    source_type = ChunkedSource
    write_refusal = "has no writable place for commits; give a local directory for them"

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout, options):
        path = tmp_path_factory.mktemp("remote") / "t.zarr"
        make(path, small_layout, lazy=True)
        local = init_case(path, WRITTEN)
        url = f"s3://{BUCKET}/row-sources.zarr"
        store = open_store(url, options)
        for file in path.rglob("*"):
            if file.is_file() and file.name != LOCK_NAME:
                store.write_bytes(file.relative_to(path).as_posix(), file.read_bytes())
        return Case(url, local.rows, local.exact, storage_options=options)


class TestLinked(RowSourceTests):
    """A table linked to a checkpoint's shards: fp8 rows read in place; writes are commits
    beside them (the shards are never written)."""

    source_type = LinkedSource

    @pytest.fixture(scope="class")
    @classmethod
    def small_layout(cls, ds_vocab):
        return ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout, ds_vocab):
        root = tmp_path_factory.mktemp("linked")
        rows = write_checkpoint(root / "ckpt", small_layout, dim=64)
        import_checkpoint(root / "ckpt", root / "t.zarr", vocab=ds_vocab, link=True, chunk_rows=300)
        exact = {layer_id: np.ones(len(r), dtype=bool) for layer_id, r in rows.items()}
        return Case(root / "t.zarr", rows, exact)


class ColdTests(RowSourceTests):
    """The suite with every chunk measured cold (``mincore`` says: not in the page cache), so
    every row comes through the parallel reader and its checks, never the memory map."""

    source_type = ChunkedSource

    @pytest.fixture(autouse=True)
    def _every_chunk_cold(self, monkeypatch):
        monkeypatch.setattr(coldgather, "resident", lambda address, length: False)

    def test_rows_came_through_the_cold_reader(self, table, case):
        ids = np.arange(0, case.rows[1].shape[0], 7)
        self.assert_rows(table.gather(1, ids), case, 1, ids)
        assert table.source.cold.counters["cold_rows"] > 0
        assert table.source.cold.counters["warm_chunks"] == 0


def fp8_case(path, layout, *, block_bytes=None, lazy=False, check_chunks=True) -> Case:
    """An fp8 table (264-byte rows: some straddle two pages), optionally with block checksums."""
    make(path, layout, dtype="float8_e4m3fn", dim=256, lazy=lazy)
    case = init_case(path, WRITTEN)
    if block_bytes is not None:
        add_block_checksums(path, block_bytes=block_bytes)
    case.check_chunks = check_chunks
    return case


class TestChunkedColdWholeChunks(ColdTests):
    """No block checksums: a cold chunk is read and checked whole, once."""

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        return fp8_case(tmp_path_factory.mktemp("cold") / "t.zarr", small_layout)


class TestChunkedColdBlocks(ColdTests):
    """4 KiB block checksums: each block read whole and checked the first time."""

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("cold4k") / "t.zarr"
        return fp8_case(path, small_layout, block_bytes="4K")


class TestChunkedColdBlocks64K(ColdTests):
    """64 KiB blocks (a chunk of 79,200 bytes: one full block and a short one)."""

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("cold64k") / "t.zarr"
        return fp8_case(path, small_layout, block_bytes="64K")


class TestChunkedColdLazyUnchecked(ColdTests):
    """A lazy table opened with ``check_chunks=False``: pages only, unwritten chunks as init."""

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls, tmp_path_factory, small_layout):
        path = tmp_path_factory.mktemp("coldlazy") / "t.zarr"
        case = fp8_case(path, small_layout, lazy=True, check_chunks=False)
        # Written rows are commits, so a lazy base has no chunk file until one is written into
        # it (as compaction into the base does): chunk 2 of layer 1, rows 600-899, of which
        # 620-899 are read from the base.
        with open_table(path, "r+") as table:
            table.write_chunk(1, 2, case.rows[1][600:900], source="test")
        return case


class TestLinkedCold(TestLinked):
    """The linked suite with every region measured cold: rows read with the parallel reader
    from the shards, never through the maps."""

    @pytest.fixture(autouse=True)
    def _every_region_cold(self, monkeypatch):
        monkeypatch.setattr(linkedcold, "resident", lambda address, length: False)

    def test_rows_came_through_the_cold_reader(self, table, case):
        ids = np.arange(0, case.rows[1].shape[0], 7)
        self.assert_rows(table.gather(1, ids), case, 1, ids)
        cold = table.source.cold_layer(1)
        assert cold.counters["cold_rows"] >= ids.size and cold.counters["warm_regions"] == 0
