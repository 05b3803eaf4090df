"""Fixtures of the row-source tests: a real S3 server (moto on loopback) and its options."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "engram-test"
# a small table's layout flags, for the S3 tests' init-table
SMALL = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32", "--chunk-rows", "300"]


def run(*args):
    """The CLI, in process, on string arguments."""
    from typer.testing import CliRunner

    from engramctl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_options(options: dict) -> list[str]:
    """``--storage-option k=v`` for each of ``options``."""
    return [arg for k, v in options.items() for arg in ("--storage-option", f"{k}={v}")]


def remote_files(url: str, options: dict) -> dict[str, bytes]:
    """Every object under ``url``, by key."""
    from engramctl.table.core.store import open_store

    store = open_store(url, options)
    return {key: store.read_bytes(key) for key in sorted(store.file_sizes(""))}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """``python -m moto.server`` on a free loopback port, with one bucket; stopped at the end."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start (see {log.name})")
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=url).mkdir(BUCKET)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def options(endpoint) -> dict:
    return {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
