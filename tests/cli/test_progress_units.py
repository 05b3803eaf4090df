"""Progress bars count bytes in binary units (KiB, MiB), as every summary line does."""

from __future__ import annotations

from rich.console import Console

from engramctl.cli import progress as progress_module


def test_byte_progress_uses_binary_units(monkeypatch, capsys):
    clock = [0.0]
    console = Console(stderr=True, force_terminal=False, width=200, get_time=lambda: clock[0])
    monkeypatch.setattr(progress_module, "err_console", console)  # no terminal: plain lines
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    with progress_module.progress("export", unit="bytes") as update:
        update(2 * 2**20, 50 * 2**20)
        clock[0] = 1.0
        update(5 * 2**20, 50 * 2**20)  # 3 MiB in the second second
    text = capsys.readouterr().err.splitlines()[-1]
    assert "5.0/50.0 MiB" in text and "3.0 MiB/s" in text, text
    assert "MB" not in text, text


def test_close_takes_a_terminal_bar_down_before_the_block_ends(monkeypatch):
    import io

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(progress_module, "err_console", console)
    with progress_module.progress("count", unit="steps", transient=True) as update:
        update(1, 10)
        assert update.bar.live.is_started
        update.close()
        assert not update.bar.live.is_started
        shown = screen.getvalue()
        update(5, 10)  # after close: ignored, nothing drawn
        assert update.bar.tasks[0].completed == 1
    assert screen.getvalue() == shown  # the block's end stops nothing twice
