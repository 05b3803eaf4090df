"""Small file helpers: the one atomic file write, the one atomic directory write, refusing to
overwrite, and the free-space check.

Every writer in the package goes through these: a file or directory appears under its final name
only once it is complete (a temporary sibling, then a rename), and a failure leaves no
half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from ._system import format_bytes
from .errors import EngramError


def input_paths(inputs) -> list[Path]:
    """The paths named by ``inputs`` (paths, or glob patterns expanded); ``None`` skipped."""
    import glob

    found = []
    for item in inputs:
        if item is None:
            continue
        text = str(item)
        if glob.has_magic(text) and not Path(text).exists():
            found += [Path(p) for p in glob.glob(text, recursive=True)]
        else:
            found.append(Path(text))
    return found


def check_not_an_input(path: Path, inputs, *, what: str | None = None) -> None:
    """Refuse an output that is one of the ``inputs`` (the same file by device and inode: a
    hard link, a symlink or another spelling of it too) or lies inside an input directory;
    writing it would destroy what the command reads. ``--overwrite`` does not change this.

    >>> check_not_an_input(Path("r.json"), [Path("c.jsonl")])  # different files: nothing
    """
    path = Path(path)
    what = what or str(path)
    try:
        target = path.stat()
    except OSError:  # not there (yet): no input can be it
        return
    for source in input_paths(inputs):
        try:
            same = os.path.samefile(path, source)
            inside = source.is_dir() and path.resolve().is_relative_to(source.resolve())
        except OSError:
            continue
        if same or (inside and target.st_ino):
            where = "is the input" if same else "lies inside the input"
            raise EngramError(
                f"{what} {where} {source}: writing it would destroy what the command reads "
                "(--overwrite does not change this); choose another output name"
            )


TEMPORARY_NAME_ROOM = 24  # ".<name>.overwrite-<pid>": what a temporary sibling adds to a name


def name_max(directory: Path) -> int:
    """The longest file name (bytes) the file system of ``directory`` takes (255 if unknown)."""
    probe = Path(directory)
    while probe != probe.parent:
        with contextlib.suppress(OSError):  # a name too long to look up is not there
            if probe.exists():
                break
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_name_length(path: Path) -> None:
    """Refuse an output whose name (or a folder on its way) is longer than the file system
    takes, leaving room for the temporary name it is written under: one line, before any
    work, instead of ``OSError 36`` after it.

    >>> check_name_length(Path("report.json"))  # fits: nothing
    """
    path = Path(path)
    limit = name_max(path.parent)
    for part in path.parts[:-1]:
        if len(os.fsencode(part)) > limit:
            raise EngramError(
                f"a folder name in {path} is {len(os.fsencode(part))} bytes, longer than the "
                f"{limit} this file system takes; choose a shorter path"
            )
    size = len(os.fsencode(path.name))
    if size > limit - TEMPORARY_NAME_ROOM:
        raise EngramError(
            f"the name {path.name[:40]}... is {size} bytes: at most {limit - TEMPORARY_NAME_ROOM} "
            f"fit ({limit} on this file system, less room for the temporary name it is written "
            "under); choose a shorter name"
        )


def check_writable_target(path: Path, *, overwrite: bool, inputs=()) -> None:
    """Refuse an output that is one of ``inputs`` (:func:`check_not_an_input`), a name too long
    (:func:`check_name_length`), an existing output unless ``overwrite``, and a directory
    always."""
    path = Path(path)
    check_not_an_input(path, inputs)
    check_name_length(path)
    if path.is_dir():
        raise EngramError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise EngramError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise EngramError(f"directory {path.parent} does not exist; create it first")


def temporary_sibling(path: Path, label: str = "tmp") -> Path:
    """The temporary name ``path`` is written under: ``.<name>.<label>-<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{label}-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", *, fsync: bool = True):
    """Open a temporary sibling of ``path``; rename it into place only if the block succeeds.

    ``OSError`` propagates as it is (callers that tell a full disk from other failures need its
    errno); :func:`atomic_write` turns it into one :class:`EngramError` line.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:  # OSError: a read-only or vanished directory must not hide the first error
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb"):
    """:func:`atomic_open` with a failure reported as ``cannot write <path>: <reason>``."""
    try:
        with atomic_open(path, mode) as handle:
            yield handle
    except OSError as exc:
        raise EngramError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_file_atomic(path: Path, data, *, fsync: bool = True) -> None:
    """Write the bytes of ``data`` to ``path`` atomically, creating its parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, fsync=fsync) as handle:
        handle.write(memoryview(data).cast("B"))


def read_json_file(path: Path):
    """The JSON document in ``path``; a file that cannot be read or parsed (bad JSON, nested too
    deeply, not UTF-8) is one :class:`EngramError` sentence naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EngramError(f"{path} is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise EngramError(f"{path} is damaged: nested too deeply") from None
    except UnicodeDecodeError:
        raise EngramError(f"{path} is damaged: not UTF-8 text") from None
    except OSError as exc:
        raise EngramError(f"cannot read {path}: {exc.strerror or exc}") from None


def pid_is_dead(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (a writer that was killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.<name>.<label>-<pid>``, files or
    directories) left by writers that were killed on this machine; returns what was removed.

    A sibling whose process still runs is kept: it may be a writer at work.
    """
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*-*"))
    except OSError:
        return removed
    for sibling in candidates:
        _, _, pid = sibling.name.rpartition("-")
        if pid.isdigit() and int(pid) != os.getpid() and pid_is_dead(int(pid)):
            with contextlib.suppress(OSError):
                if sibling.is_dir() and not sibling.is_symlink():
                    shutil.rmtree(sibling)
                else:
                    sibling.unlink()
                removed.append(sibling)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_directory(path: Path, *, label: str = "tmp", replace: bool = False, before_replace=None):
    """Yield a temporary sibling directory name (not yet created) to build ``path`` under.

    When the block succeeds the temporary directory is renamed to ``path``. An existing ``path``
    is removed first if ``replace`` (after ``before_replace(path)``, e.g. taking its writer lock);
    otherwise only an empty directory may stand there. The temporary directory never survives.
    """
    path = Path(path)
    tmp = temporary_sibling(path, label)
    remove_stale_siblings(path)  # a killed writer's half-built directory
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            if before_replace is not None:
                before_replace(path)
            if replace:
                shutil.rmtree(path)
            else:
                path.rmdir()  # an empty directory the user made for it
        os.replace(tmp, path)
    except OSError as exc:  # read-only, full, not permitted: one line naming the output
        raise EngramError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_free_space(path: Path, needed: int) -> None:
    """Refuse to start when the file system of ``path`` has less than ``needed`` bytes free."""
    probe = path if path.exists() else path.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise EngramError(
            f"not enough disk space on {probe}: the table needs {format_bytes(needed)} more, "
            f"{format_bytes(free)} is free; free some space or create it with --lazy"
        )


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG and write it atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return path
