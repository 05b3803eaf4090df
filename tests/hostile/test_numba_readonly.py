"""A read-only install with no writable home: the kernels compile without a cache (numba would
otherwise refuse with "cannot cache function ... no locator available")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_clean_process


@pytest.fixture
def read_only_install(tmp_path):
    """The repository bind-mounted read-only (skipped where ``mount`` is not allowed)."""
    target = tmp_path / "ro"
    target.mkdir()
    proc = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(REPO), str(target)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot bind-mount read-only here (needs root)")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
    try:
        if os.access(target, os.W_OK) and (target / ".probe").open("w"):
            pytest.skip("the bind mount is writable")
    except OSError:
        pass
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_hash_runs_from_a_read_only_install(read_only_install, tmp_path, vocab_path):
    import numpy as np

    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([3, 4, 5, 6, 7], dtype=np.int64))
    home = read_only_install / "no-home"  # inside the read-only mount: not writable
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(read_only_install), PYTHONDONTWRITEBYTECODE="1")
    script = (
        "import sys, engramctl; assert engramctl.__file__.startswith(sys.argv[1]), "
        "engramctl.__file__; from engramctl.cli import main; "
        "sys.argv = ['engramctl', *sys.argv[2:]]; main()"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(read_only_install),
            "hash",
            "--ids-file",
            str(ids),
            "--vocab",
            str(vocab_path),
            "--ngram-vocab",
            "500,500",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert_clean_process(proc)
    assert proc.returncode == 0, proc.stderr
