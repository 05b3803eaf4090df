"""The one progress display of the CLI.

On a terminal: a rich bar on stderr. When stderr is not a terminal (a log file, CI, a pipe): a
plain line every few seconds instead of nothing, so a long job shows it is alive. Off with
``-q`` or ``--json`` (the command passes ``enabled``). The display starts on the first report, so
an early error prints no empty bar.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from .app import err_console

PLAIN_EVERY_SECONDS = 5.0  # a plain progress line at most this often when stderr is no terminal


def _binary_speed_column():
    """Bytes per second in KiB/s, MiB/s (rich's TransferSpeedColumn prints decimal MB/s)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    from .._system import format_bytes

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(
                "?" if speed is None else f"{format_bytes(speed)}/s", style="progress.data.speed"
            )

    return BinarySpeedColumn()


def _columns(unit: str, detail: str | None, *, bar: bool) -> list:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}")]
    if bar:
        columns.append(BarColumn())
    if unit == "bytes":  # binary units (KiB, MiB), as every summary line prints them
        columns += [DownloadColumn(binary_units=True), _binary_speed_column()]
    else:
        columns.append(MofNCompleteColumn())
    if detail is not None:
        columns.append(TextColumn("{task.fields[detail]}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return columns


@contextlib.contextmanager
def progress(
    description: str,
    *,
    enabled: bool = True,
    unit: str = "bytes",
    detail: str | None = None,
    transient: bool = False,
) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total, **fields)`` driving one progress display.

    ``unit``: ``"bytes"`` (sizes and speed) or ``"steps"`` (``done/total``). ``detail``: a
    format string filled from ``fields`` at each update, e.g. ``"loss {loss:.3f}"``.
    ``transient``: the bar disappears when done (a terminal only).

    >>> with progress("copy", enabled=False) as update:
    ...     update(10, 100)
    """
    if not enabled:
        yield lambda done, total, **fields: None
        return
    from rich.progress import Progress

    live = err_console.is_terminal
    bar = Progress(
        *_columns(unit, detail, bar=live),
        console=err_console,
        transient=transient,
        auto_refresh=live,
    )
    task = None
    last_line = time.monotonic()

    def update(done: int, total: int | None, **fields) -> None:
        nonlocal task, last_line
        text = {"detail": detail.format(**fields)} if detail is not None else {}
        if task is None:
            if live:
                bar.start()
            task = bar.add_task(description, total=total, **text)
        bar.update(task, completed=done, total=total, **text)
        if not live and time.monotonic() - last_line >= PLAIN_EVERY_SECONDS:
            last_line = time.monotonic()
            err_console.print(bar.make_tasks_table(bar.tasks))

    try:
        yield update
    finally:
        if live and task is not None:  # stopping a bar never started prints an empty line
            bar.stop()
