"""Tables in an S3 store: a real moto server on loopback (not a mock of boto), CLI and library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from engramctl.errors import EngramError, UsageError  # noqa: E402
from engramctl.table.core.blocksums import BLOCKS_NAME  # noqa: E402
from engramctl.table.core.codec import chunk_key  # noqa: E402
from engramctl.table.core.lock import LOCK_NAME  # noqa: E402
from engramctl.table.core.store import open_store, parse_storage_options  # noqa: E402
from engramctl.table.sources.table import open_table  # noqa: E402

from .conftest import BUCKET, SMALL, cli_options, remote_files, run  # noqa: E402


def local_files(path: Path) -> dict[str, bytes]:
    """A local table's files but its lock and its block checksums (which local tables get at
    init and tables in object stores do not: their chunks are read and checked whole)."""
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name not in (LOCK_NAME, BLOCKS_NAME)
    }


@pytest.fixture(scope="module")
def local_table(tmp_path_factory, ds_vocab_path) -> Path:
    path = tmp_path_factory.mktemp("local") / "t.zarr"
    result = run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--json")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def s3_table(local_table, options, ds_vocab_path) -> str:
    """The same table, written straight to S3 by a single-process init-table."""
    url = f"s3://{BUCKET}/single.zarr"
    result = run("init-table", url, "--vocab", ds_vocab_path, *SMALL, *cli_options(options))
    assert result.exit_code == 0, result.output
    return url


def test_s3_init_info_verify_match_local(s3_table, local_table, options, ds_vocab_path):
    assert remote_files(s3_table, options) == local_files(local_table)
    remote = json.loads(run("info", s3_table, *cli_options(options), "--json").stdout)
    local = json.loads(run("info", local_table, "--json").stdout)
    assert remote.pop("path") == s3_table and local.pop("path") == str(local_table)
    assert remote == local
    result = run("info", s3_table, *cli_options(options))
    assert result.exit_code == 0 and "status complete" in result.stdout
    result = run("verify", s3_table, "--deep", "--vocab", ds_vocab_path, *cli_options(options))
    assert result.exit_code == 0, result.output
    report = json.loads(run("verify", s3_table, "--deep", *cli_options(options), "--json").stdout)
    assert report["ok"] and report["chunks_checked"] == report["chunks_written"] > 0


def test_s3_gather_matches_local(s3_table, local_table, options):
    rng = np.random.default_rng(3)
    with open_table(local_table) as local, open_table(s3_table, storage_options=options) as remote:
        for layer_id in local.layers:
            ids = rng.integers(0, local.info.layers[layer_id].rows, size=500)
            np.testing.assert_array_equal(remote.gather(layer_id, ids), local.gather(layer_id, ids))
        assert str(remote.chunk_path(1, 0)) == f"{s3_table}/{chunk_key(1, 0)}"
    with pytest.raises(EngramError, match=r"no writable place for commits.*--commits-dir DIR"):
        open_table(s3_table, "r+", storage_options=options)


def test_s3_lazy_table_gathers_init_values(local_table, options, ds_vocab_path):
    url = f"s3://{BUCKET}/lazy.zarr"
    result = run(
        "init-table", url, "--vocab", ds_vocab_path, *SMALL, "--lazy", *cli_options(options)
    )
    assert result.exit_code == 0, result.output
    ids = np.arange(0, 1500, 7)
    with open_table(local_table) as local, open_table(url, storage_options=options) as lazy:
        np.testing.assert_array_equal(lazy.gather(15, ids), local.gather(15, ids))


def test_s3_damage_is_found(options, ds_vocab_path):
    url = f"s3://{BUCKET}/damaged.zarr"
    result = run("init-table", url, "--vocab", ds_vocab_path, *SMALL, *cli_options(options))
    assert result.exit_code == 0, result.output
    store = open_store(url, options)
    data = bytearray(store.read_bytes(chunk_key(1, 1)))
    data[5] ^= 1
    store.write_bytes(chunk_key(1, 1), bytes(data))
    store.fs.rm(f"{BUCKET}/damaged.zarr/{chunk_key(15, 2)}")
    result = run("verify", url, "--deep", *cli_options(options), "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert any(p.startswith("chunk 1 of layer 1") and "fails its checksum" in p for p in problems)
    missing = f"chunk 2 of layer 15: file {url}/{chunk_key(15, 2)} is missing; rerun the same "
    assert any(p.startswith(missing) and "init-table" in p for p in problems), problems
    with (
        open_table(url, storage_options=options) as table,
        pytest.raises(EngramError, match="damaged"),
    ):
        table.gather(1, [300])


def test_dask_init_to_s3_is_bit_identical(local_table, options, ds_vocab_path):
    """Workers get the endpoint and credentials through the storage options of the tasks."""
    url = f"s3://{BUCKET}/dask.zarr"
    result = run(
        "init-table", url, "--vocab", ds_vocab_path, *SMALL, *cli_options(options),
        "--scheduler", "local:2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "complete"
    assert remote_files(url, options) == local_files(local_table)
    result = run("init-table", url, "--vocab", ds_vocab_path, *SMALL, *cli_options(options))
    assert result.exit_code == 0 and "already complete" in result.stdout, result.output


def test_endpoint_and_credentials_from_the_environment(s3_table, endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # botocore's standard variables
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = run("info", s3_table, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "complete"


def test_missing_credentials_are_named(s3_table, endpoint, monkeypatch, tmp_path):
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    s3fs.S3FileSystem.clear_instance_cache()
    result = run("verify", s3_table, "--storage-option", f"endpoint_url={endpoint}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no credentials found for s3://" in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr


def test_missing_protocol_package_and_unknown_protocol(tmp_path):
    import importlib.util

    if importlib.util.find_spec("gcsfs") is None:
        result = run("info", "gs://bucket/t.zarr")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "gs:// protocol needs a package" in result.stderr and "gcsfs" in result.stderr
    result = run("info", "nope://bucket/t.zarr")
    assert result.exit_code == 1 and "unknown URL protocol 'nope'" in result.stderr
    result = run("info", tmp_path / "t.zarr", "--storage-option", "anon=true")
    assert result.exit_code == 2 and "applies to fsspec URLs" in result.stderr


def test_missing_bucket_is_a_clear_error(options, ds_vocab_path):
    url = "s3://no-such-bucket/t.zarr"
    result = run("init-table", url, "--vocab", ds_vocab_path, *SMALL, *cli_options(options))
    assert result.exit_code == 1 and "create it first" in result.stderr
    result = run("info", url, *cli_options(options))
    assert result.exit_code == 1 and f"no table at {url}" in result.stderr


def test_parse_storage_options():
    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=false", "n=3"]) == {
        "endpoint_url": "http://h:9000",
        "anon": False,
        "n": 3,
    }
    assert parse_storage_options(["client_kwargs.region_name=eu"]) == {
        "client_kwargs": {"region_name": "eu"}
    }
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_storage_options(["endpoint_url"])


def test_denied_access_names_the_credentials():
    import fsspec
    from fsspec.spec import AbstractFileSystem

    class Denied(AbstractFileSystem):
        """A store whose every read is refused, as S3 refuses a bad access key."""

        protocol = "denied"

        def cat_file(self, path, start=None, end=None, **kwargs):
            raise PermissionError("InvalidAccessKeyId: The AWS Access Key Id does not exist")

    fsspec.register_implementation("denied", Denied, clobber=True)
    store = open_store("denied://bucket/t.zarr")
    with pytest.raises(EngramError, match="access denied .*check the credentials"):
        store.read_bytes("zarr.json")
