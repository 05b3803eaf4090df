"""House rules that the import contract (.importlinter, run by `make lint`) cannot see.

import-linter checks modules (layers, no cycles, no typer/rich below the CLI, private modules);
these tests check names: no module imports another module's ``_private`` name or reaches into
another object's ``_private`` attribute (in the package and in the tests: a test goes through
public names, or through a private *module* imported whole), and no module grows past ~500 lines.
"""

from __future__ import annotations

import ast
import configparser
import importlib
from pathlib import Path

import pytest

import engramctl

PACKAGE = Path(engramctl.__file__).parent
TESTS = Path(__file__).parent
MAX_LINES = 520
# Calls that name an attribute by a string: setattr(obj, "_x", ...), monkeypatch.setattr(...).
BY_NAME = ("setattr", "getattr", "delattr", "hasattr")


def _modules(root: Path = PACKAGE):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _target_dir(path: Path, node: ast.ImportFrom) -> Path:
    base = path.parent
    for _ in range(max(node.level - 1, 0)):
        base = base.parent
    if node.level == 0:
        base = PACKAGE.parent
    for part in (node.module or "").split("."):
        if part:
            base = base / part
    return base


def _ours(module: str | None) -> bool:
    """An import of the package or of the tests (whose helpers other tests import)."""
    return (module or "").split(".")[0] in ("engramctl", "tests")


def _named_by_string(node: ast.Call) -> str | None:
    """The private attribute a ``setattr``-like call names by a string, if any: the second
    argument (``setattr(obj, "_x", v)``), or the last part of a dotted target
    (``monkeypatch.setattr("engramctl.m._x", v)``)."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in BY_NAME or not node.args:
        return None
    strings = [a.value for a in node.args[:2] if isinstance(a, ast.Constant)]
    strings = [s for s in strings if isinstance(s, str)]
    for text in strings:
        last = text.rsplit(".", 1)[-1]
        if _is_private(last) and ("." not in text or _ours(text)):
            return last
    return None


# A namedtuple's public methods start with an underscore so as not to clash with its fields.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _private_reach_ins(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or _ours(node.module)):
            target = _target_dir(path, node)
            for alias in node.names:
                is_module = (target / f"{alias.name}.py").exists() or (target / alias.name).is_dir()
                if _is_private(alias.name) and not is_module:  # a private helper module is fine
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
        elif (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and node.attr not in NAMEDTUPLE_API
        ):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} reaches into .{node.attr}")
        elif isinstance(node, ast.Call) and (name := _named_by_string(node)):
            found.append(f"{path.name}:{node.lineno} names .{name} by a string")
    return found


def test_no_private_reach_ins():
    found = [hit for path in _modules() for hit in _private_reach_ins(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_no_private_reach_ins_from_the_tests():
    found = [
        f"{path.relative_to(TESTS).as_posix()}:{hit.split(':', 1)[1]}"
        for path in _modules(TESTS)
        for hit in _private_reach_ins(path)
    ]
    assert not found, "private names used by tests:\n" + "\n".join(found)


def test_the_check_catches_a_reach_in(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from engramctl.hashing import _private_thing\n"
        "from tests.stats.test_stats import _helper\n"
        "x = other._secret\n"
        "monkeypatch.setattr(module, '_flag', True)\n"
        "monkeypatch.setattr('engramctl.hashing._flag', True)\n"
        "getattr(obj, '_hidden')\n"
    )
    assert len(_private_reach_ins(probe)) == 6


def test_the_check_lets_private_modules_and_public_names_pass(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import engramctl._files as files\n"
        "from engramctl import _numba\n"
        "from engramctl.hashing import NgramHasher\n"
        "monkeypatch.setattr(files, 'atomic_write', None)\n"
        "monkeypatch.setattr(_numba.os, 'environ', {})\n"
        "monkeypatch.setattr('os.environ', {})\n"
        "setattr(obj, '__doc__', '')\n"
    )
    assert _private_reach_ins(probe) == []


def test_no_module_over_the_size_limit():
    big = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines (split them into named parts): {big}"


@pytest.mark.parametrize("package", ["engramctl.corpus", "engramctl.stats", "engramctl.table"])
def test_every_re_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} re-exports nothing"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


# The subsystems above which typer/rich and torch may appear: the CLI (and the console script
# over it) imports everything; torch is the model's.
MAY_IMPORT = {
    "no-typer-rich": {"cli", "_entry", "__main__"},
    "torch-in-model": {"model", "cli", "_entry", "__main__"},
}


def _children() -> set[str]:
    return {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }


@pytest.mark.parametrize("contract", sorted(MAY_IMPORT))
def test_forbidden_contracts_name_every_subsystem(contract):
    """A forbidden contract checks only the modules it lists: a new folder must be listed too."""
    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / ".importlinter")
    listed = {
        line.strip().removeprefix("engramctl.")
        for line in config[f"importlinter:contract:{contract}"]["source_modules"].split()
    }
    assert listed == _children() - MAY_IMPORT[contract]
