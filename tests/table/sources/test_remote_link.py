"""Links to checkpoints at URLs: a loopback HTTP server with Range support and a moto S3 server.

Rows are held equal to a local link's; a server that ignores Range, a changed object and a
damaged cached block are refused or refetched, never served.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli.app import app
from engramctl.errors import EngramError, UsageError
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from ...cli.test_cli_foundation import assert_one_error_line
from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint
from .conftest import BUCKET


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` (206), an ETag of size and mtime, quiet logs;
    ``ignore_range`` on the server answers every GET whole (200), as some servers do."""

    def log_message(self, *args):
        pass

    def _stat(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None, None
        st = os.stat(path)
        return path, st

    def _headers(self, st, length, status=200, extra=()):
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        if not self.server.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()

    def do_HEAD(self):
        path, st = self._stat()
        if path:
            self._headers(st, st.st_size)

    def do_GET(self):
        path, st = self._stat()
        if not path:
            return
        with open(path, "rb") as handle:
            wanted = self.headers.get("Range")
            if wanted and not self.server.ignore_range:
                a, _, b = wanted.removeprefix("bytes=").partition("-")
                a, b = int(a), min(int(b) if b else st.st_size - 1, st.st_size - 1)
                handle.seek(a)
                body = handle.read(b - a + 1)
                rng = (("Content-Range", f"bytes {a}-{b}/{st.st_size}"),)
                self._headers(st, len(body), 206, rng)
            else:
                body = handle.read()
                self._headers(st, len(body))
        self.wfile.write(body)


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    server.ignore_range = False
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def checkpoint(http_root, ds_vocab):
    """A checkpoint served over HTTP and its local link (the reference rows)."""
    root, url, server = http_root
    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    rows = write_checkpoint(root / "ckpt", layout, dim=64)
    return root, f"{url}/ckpt", server, rows


def all_rows(table, layer_id):
    with open_table(table) as t:
        return t.gather(layer_id, np.arange(t.meta.layer(layer_id).rows)).copy()


def test_http_link_serves_the_local_links_rows(checkpoint, tmp_path, ds_vocab):
    root, url, _, rows = checkpoint
    local = tmp_path / "local.zarr"
    import_checkpoint(root / "ckpt", local, vocab=ds_vocab, link=True, chunk_rows=300)
    remote = tmp_path / "remote.zarr"
    import_checkpoint(url, remote, vocab=ds_vocab, link=True, chunk_rows=300)
    for layer_id in (1, 15):
        got = all_rows(remote, layer_id)
        np.testing.assert_array_equal(got, all_rows(local, layer_id))
        np.testing.assert_array_equal(got, rows[layer_id])
    with open_table(remote) as t:
        ids = np.array([7, 3, 7, 1999, 0])
        np.testing.assert_array_equal(t.gather(1, ids), rows[1][ids])
        np.testing.assert_array_equal(t.rows(15, 100, 400), rows[15][100:400])
        files = t.meta.sources["files"]
        assert all(name.startswith("http://") and files[name]["etag"] for name in files)


def test_the_cache_dir_serves_blocks_again_and_refetches_a_damaged_one(
    checkpoint, tmp_path, ds_vocab
):
    root, url, _, rows = checkpoint
    table, cache = tmp_path / "t.zarr", tmp_path / "cache"
    import_checkpoint(url, table, vocab=ds_vocab, link=True, cache_dir=cache)
    ids = np.arange(0, 2000, 3)
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, ids), rows[1][ids])
        assert t.source.layer(1).counters["blocks_fetched"] > 0
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, ids), rows[1][ids])
        counters = t.source.layer(1).counters
        assert counters["blocks_fetched"] == 0 and counters["blocks_cached"] > 0
    for file in cache.glob("*.blocks"):  # damage every cached block's first byte
        with open(file, "r+b") as handle:
            for at in range(0, os.path.getsize(file), 4096):
                handle.seek(at)
                handle.write(b"\x5a")
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, ids), rows[1][ids])
        assert t.source.layer(1).counters["blocks_fetched"] > 0  # fetched again, not served


def test_a_server_that_ignores_range_is_refused(checkpoint, tmp_path, ds_vocab, ds_vocab_path):
    _, url, server, _ = checkpoint
    server.ignore_range = True
    with pytest.raises(EngramError, match="ignores range requests"):
        import_checkpoint(url, tmp_path / "t.zarr", vocab=ds_vocab, link=True)
    assert not (tmp_path / "t.zarr").exists()
    args = ["import", url, str(tmp_path / "t.zarr"), "--vocab", str(ds_vocab_path)]
    line = assert_one_error_line(CliRunner().invoke(app, [*args, "--link"]), 1)
    assert "ignores range requests" in line and "honours Range" in line
    line = assert_one_error_line(CliRunner().invoke(app, args), 2)  # no --link
    assert "pass --link" in line
    assert not (tmp_path / "t.zarr").exists()


def rewrite_byte(root, table, layer_id, part, at, *, keep_mtime):
    with open_table(table) as t:
        entry = t.meta.sources["layers"][str(layer_id)][part]
    path = root / "ckpt" / entry["file"].rsplit("/", 1)[1]
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(entry["offset"] + at)
        byte = handle.read(1)
        handle.seek(entry["offset"] + at)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:  # the ETag (size and mtime) stays: only the bytes tell
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return entry["tensor"]


def test_a_changed_remote_object_is_refused_naming_the_tensor(checkpoint, tmp_path, ds_vocab):
    root, url, _, rows = checkpoint
    table = tmp_path / "t.zarr"
    import_checkpoint(url, table, vocab=ds_vocab, link=True)
    assert verify_table(table, deep=True).ok
    tensor = rewrite_byte(root, table, 1, "weight", 5000, keep_mtime=True)
    report = verify_table(table, deep=True)
    assert any(f"block 1 (bytes 4096..8191) of {tensor}" in p for p in report.problems)
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, [0, 200]), rows[1][[0, 200]])
        with pytest.raises(EngramError, match=rf"block 1 .* of {tensor} of layer 1 .*changed"):
            t.gather(1, [5000 // 64])
    rewrite_byte(root, table, 15, "scale", 10, keep_mtime=False)
    with pytest.raises(EngramError, match=r"changed since linking: its ETag.* of layer 15\)"):
        with open_table(table) as t:
            t.gather(15, [0])


def test_a_url_needs_link_and_the_cli_links_one(checkpoint, tmp_path, ds_vocab, ds_vocab_path):
    _, url, _, rows = checkpoint
    with pytest.raises(UsageError, match="pass --link"):
        import_checkpoint(url, tmp_path / "c.zarr", vocab=ds_vocab)
    out = tmp_path / "cli.zarr"
    args = ["import", url, str(out), "--link", "--vocab", str(ds_vocab_path)]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(all_rows(out, 15), rows[15])
    for command in (["info", str(out)], ["verify", str(out)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert url in result.output or "ok" in result.output


def test_an_s3_link_serves_the_same_rows(options, tmp_path, ds_vocab, monkeypatch):
    import s3fs

    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    fs = s3fs.S3FileSystem(**options)
    prefix = f"{BUCKET}/ckpt-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8]}"
    fs.put(str(tmp_path / "ckpt"), prefix, recursive=True)
    table = tmp_path / "t.zarr"
    import_checkpoint(f"s3://{prefix}", table, vocab=ds_vocab, link=True, storage_options=options)
    with open_table(table) as t:
        recorded = t.meta.sources["storage_options"]
    assert recorded == {"endpoint_url": options["endpoint_url"]}  # no credentials recorded
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])  # read time: from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    for layer_id in (1, 15):
        np.testing.assert_array_equal(all_rows(table, layer_id), rows[layer_id])


def test_a_url_link_takes_commits_in_its_local_directory(checkpoint, tmp_path, ds_vocab):
    _, url, _, rows = checkpoint
    table = tmp_path / "t.zarr"
    import_checkpoint(url, table, vocab=ds_vocab, link=True)
    new = rows[1][[900, 901]]
    with open_table(table, "r+") as t, t.edit("swap two rows") as block:
        block.write_rows(1, np.array([5, 6]), new)
    assert list((table / "edits").rglob("*")), "the commit lives beside the link"
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, [5, 6, 7]), np.r_[new, rows[1][[7]]])
        assert len(t.commits) == 1


def test_an_unusable_cache_dir_is_one_line(checkpoint, tmp_path, ds_vocab):
    _, url, _, _ = checkpoint
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a directory")
    table = tmp_path / "t.zarr"
    import_checkpoint(url, table, vocab=ds_vocab, link=True, cache_dir=blocker)
    with open_table(table) as t, pytest.raises(EngramError, match="cannot use the cache dir"):
        t.gather(1, [0])
