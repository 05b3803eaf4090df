"""Shared pieces of the hostile-input suite: a tiny table, a checker for "one clear line".

Every case must end in exit 0 with correct data, or one ``error:`` line with exit 1 or 2: never
"internal error", never a traceback. ``HOSTILE_EXAMPLES`` (default 10) sets how many examples each
hypothesis test draws; ``make fuzz`` raises it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table.core.manifest import CHECKSUM_KEY, MANIFEST_KEY, META_KEY, json_digest

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "10"))
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 10,  # `make test` runs the same cases every time
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMALL = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32", "--chunk-rows", "300"]


def cli(*args):
    """Run the CLI in-process; the result has ``exit_code``, ``stdout``, ``stderr``."""
    return CliRunner().invoke(app, [str(a) for a in args])


def reseal(attrs: dict) -> dict:
    """Forge checksums matching edited group attributes, so the edit reaches the parsers behind
    the checksum check (values JSON cannot hold, like NaN, are left unsealed: refused anyway)."""
    sums = attrs.get(CHECKSUM_KEY)
    if isinstance(sums, dict):
        for key in (META_KEY, MANIFEST_KEY):
            with contextlib.suppress(TypeError, ValueError):
                sums[key] = json_digest(attrs.get(key) or {})
    return attrs


def assert_clean(result, *, allow_ok: bool = True) -> str:
    """Exit 0 (if allowed), or exit 1/2 with exactly one ``error:`` line and no internal error."""
    text = result.stderr
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in text, text
    if result.exit_code == 0 and allow_ok:
        return ""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def assert_one_error(result, *fragments: str) -> str:
    """A refusal: one error line mentioning every fragment."""
    line = assert_clean(result, allow_ok=False)
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_engramctl(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``engramctl`` in a fresh interpreter (what a user's shell does)."""
    return subprocess.run(
        [sys.executable, "-m", "engramctl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def assert_clean_process(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        return ""
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def vocab_path(tiny_vocab, tmp_path_factory):
    """The tiny test vocab as a Parquet file (loads in milliseconds)."""
    path = tmp_path_factory.mktemp("hostile_vocab") / "vocab.parquet"
    tiny_vocab.save(path)
    return path


@pytest.fixture(scope="session")
def small_table(tmp_path_factory, vocab_path):
    """A complete 2-layer float32 table (layers 1 and 15, 32 values per row)."""
    path = tmp_path_factory.mktemp("hostile") / "t.zarr"
    result = cli("-q", "init-table", path, "--vocab", vocab_path, *SMALL)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def small_export(tmp_path_factory, small_table):
    """``small_table`` exported to safetensors."""
    path = tmp_path_factory.mktemp("hostile_export") / "t.safetensors"
    result = cli("-q", "export", small_table, path)
    assert result.exit_code == 0, result.output
    return path
