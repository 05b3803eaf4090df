"""The numba cache directory: the package's own, or a writable fallback for read-only installs."""

from __future__ import annotations

import os
from pathlib import Path

import numba.core.config
import pytest

from engramctl import _numba


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No user-chosen cache dir; a private XDG cache home; numba's config restored afterwards."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
    return tmp_path


def make_read_only(monkeypatch, read_only_root: Path) -> None:
    """Make everything under ``read_only_root`` unwritable (also for root, who ignores chmod)."""
    real = _numba.cache_dir_is_writable

    def fake(path: Path) -> bool:
        return not Path(path).is_relative_to(read_only_root) and real(path)

    monkeypatch.setattr(_numba, "cache_dir_is_writable", fake)


def test_writable_package_dir_keeps_numbas_default(clean_env):
    package = clean_env / "pkg"
    package.mkdir()
    assert _numba.configure_cache_dir(package) is None
    assert (package / "__pycache__").is_dir()
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_read_only_package_falls_back_to_user_cache(clean_env, monkeypatch):
    package = clean_env / "site-packages" / "engramctl"
    package.mkdir(parents=True)
    make_read_only(monkeypatch, clean_env / "site-packages")
    chosen = _numba.configure_cache_dir(package)
    expected = clean_env / "xdg" / "engramctl" / "numba"
    assert chosen == str(expected) and expected.is_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(expected)
    assert numba.core.config.CACHE_DIR == str(expected)  # numba was imported already


def test_home_cache_when_xdg_is_unset(clean_env, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(clean_env / "home"))
    package = clean_env / "ro"
    package.mkdir()
    make_read_only(monkeypatch, package)
    expected = clean_env / "home" / ".cache" / "engramctl" / "numba"
    assert _numba.configure_cache_dir(package) == str(expected)


def test_user_choice_wins(clean_env, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(clean_env / "mine"))
    make_read_only(monkeypatch, clean_env)
    assert _numba.configure_cache_dir(clean_env / "pkg") is None
    assert os.environ["NUMBA_CACHE_DIR"] == str(clean_env / "mine")


def test_nothing_writable_leaves_numba_alone(clean_env, monkeypatch):
    make_read_only(monkeypatch, clean_env)
    assert _numba.configure_cache_dir(clean_env / "pkg") is None
    assert "NUMBA_CACHE_DIR" not in os.environ


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_real_read_only_directory(clean_env):
    package = clean_env / "pkg"
    package.mkdir()
    package.chmod(0o555)
    try:
        assert _numba.configure_cache_dir(package) is not None
    finally:
        package.chmod(0o755)


def test_probe_refuses_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not _numba.cache_dir_is_writable(blocker / "__pycache__")
    assert _numba.cache_dir_is_writable(tmp_path / "new" / "dir")
