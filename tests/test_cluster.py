"""Dask plumbing against a real LocalCluster: connect, version check, tree reduction, retries."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("distributed")

from engramctl.cluster import open_client, parse_scheduler, tree_reduce  # noqa: E402
from engramctl.errors import EngramError, UsageError  # noqa: E402


def _add(*parts):
    return sum(parts)


def _slow_square(x):
    time.sleep(0.05)
    return x * x


def test_parse_scheduler():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("local") == ("local", 2)
    assert parse_scheduler("tcp://1.2.3.4:8786") == ("address", "tcp://1.2.3.4:8786")
    assert parse_scheduler("host:8786") == ("address", "tcp://host:8786")
    with pytest.raises(UsageError):
        parse_scheduler("local:0")
    for bad in ["bogus", "host:port", "tcp://host", ":8786"]:  # no port: dask raised ValueError
        with pytest.raises(UsageError, match="HOST:PORT"):
            parse_scheduler(bad)


def test_unreachable_scheduler_fails_fast():
    started = time.monotonic()
    with pytest.raises(EngramError, match="cannot reach the dask scheduler"):
        with open_client("127.0.0.1:9", timeout=2):
            pass
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def client():
    with open_client("local:2") as c:
        yield c


def test_tree_reduce_is_exact(client):
    futures = client.map(_slow_square, range(37))
    assert tree_reduce(client, futures, _add, fanin=3).result() == sum(x * x for x in range(37))


def test_version_mismatch_is_refused(client, monkeypatch):
    import engramctl
    from engramctl.cluster import check_worker_versions

    monkeypatch.setattr(engramctl, "__version__", "9.9.9")
    with pytest.raises(EngramError, match=r"runs engramctl 0\.1\.0 but this client runs 9\.9\.9"):
        check_worker_versions(client)


def test_killed_worker_is_retried(client):
    pids = client.run(os.getpid)
    futures = client.map(_slow_square, range(60), pure=False)
    time.sleep(0.3)
    os.kill(next(iter(pids.values())), 9)
    assert sorted(client.gather(futures)) == sorted(x * x for x in range(60))
