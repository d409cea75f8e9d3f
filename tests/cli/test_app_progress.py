"""`progress_bar`: every command's bars in one style, on stderr."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from mcir_cli.cli.app import err_console, progress_bar


def test_one_style_with_extra_columns_after_it():
    info = TextColumn("{task.fields[info]}")
    bar = progress_bar(info, transient=False, quiet_in_pipes=False)
    kinds = [type(c) for c in bar.columns]
    assert kinds == [TextColumn, BarColumn, MofNCompleteColumn, TimeRemainingColumn, TextColumn]
    assert bar.columns[0].text_format == "[bold]{task.description}" and bar.columns[-1] is info
    assert bar.console is err_console and not bar.live.transient and not bar.disable


def test_quiet_in_pipes_and_transient_by_default():
    bar = progress_bar()
    assert len(bar.columns) == 4 and bar.live.transient
    assert bar.disable == (not err_console.is_terminal)  # under pytest: a pipe, so no bar
