"""The one progress display of the CLI.

On a terminal: a rich bar on stderr. When stderr is not a terminal (a log file, CI, a pipe): a
plain line every few seconds instead of nothing, so a long job shows it is alive. Off with
``-q`` or ``--json`` (the command passes ``enabled``). The display starts on the first report, so
an early error prints no empty bar.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

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


class Display:
    """What :func:`progress` yields: ``display(done, total, **fields)`` reports progress;
    :meth:`close` takes a terminal's bar down before the block ends (the counted work is over and
    what follows, such as writing files, shows no bar). Disabled, it does nothing."""

    def __init__(self, description: str, *, enabled: bool, unit: str, detail, transient: bool):
        self.description, self.detail = description, detail
        self.enabled = enabled
        self.task = None
        if not enabled:
            return
        from rich.progress import Progress

        self.live = err_console.is_terminal
        self.bar = Progress(
            *_columns(unit, detail, bar=self.live),
            console=err_console,
            transient=transient,
            auto_refresh=self.live,
        )
        self.last_line = time.monotonic()

    def __call__(self, done: int, total: int | None, **fields) -> None:
        if not self.enabled:
            return
        text = {"detail": self.detail.format(**fields)} if self.detail is not None else {}
        if self.task is None:
            if self.live:
                self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, **text)
        self.bar.update(self.task, completed=done, total=total, **text)
        if not self.live and time.monotonic() - self.last_line >= PLAIN_EVERY_SECONDS:
            self.last_line = time.monotonic()
            err_console.print(self.bar.make_tasks_table(self.bar.tasks))

    def close(self) -> None:
        """Stop the display now; later reports are ignored."""
        if self.enabled and self.live and self.task is not None:
            self.bar.stop()  # stopping a bar never started would print an empty line
        self.enabled = False


@contextlib.contextmanager
def progress(
    description: str,
    *,
    enabled: bool = True,
    unit: str = "bytes",
    detail: str | None = None,
    transient: bool = False,
) -> Iterator[Display]:
    """Yield a :class:`Display`, ``update(done, total, **fields)``, driving one progress display.

    ``unit``: ``"bytes"`` (sizes and speed) or ``"steps"`` (``done/total``). ``detail``: a
    format string filled from ``fields`` at each update, e.g. ``"loss {loss:.3f}"``.
    ``transient``: the bar disappears when done (a terminal only).

    >>> with progress("copy", enabled=False) as update:
    ...     update(10, 100)
    """
    display = Display(description, enabled=enabled, unit=unit, detail=detail, transient=transient)
    try:
        yield display
    finally:
        display.close()
