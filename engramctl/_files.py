"""Small file helpers: atomic writes and refusing to overwrite."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import EngramError


def check_writable_target(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; refuse a directory always."""
    path = Path(path)
    if path.is_dir():
        raise EngramError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise EngramError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise EngramError(f"directory {path.parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb"):
    """Open a temporary sibling of ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise EngramError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
