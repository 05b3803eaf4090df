"""Progress bars count bytes in binary units (KiB, MiB), as every summary line does."""

from __future__ import annotations

from rich.progress import Progress
from rich.text import Text

from engramctl.cli.progress import _columns


def test_byte_progress_uses_binary_units():
    columns = _columns("bytes", None, bar=False)
    bar = Progress(*columns, auto_refresh=False, disable=True)
    task_id = bar.add_task("export", total=50 * 2**20)
    bar.update(task_id, completed=5 * 2**20)
    task = bar.tasks[0]
    task.finished_speed = 3 * 2**20
    cells = [column.render(task) for column in columns]
    text = " ".join(cell.plain for cell in cells if isinstance(cell, Text))
    assert "5.0/50.0 MiB" in text and "3.0 MiB/s" in text, text
    assert "MB" not in text, text
