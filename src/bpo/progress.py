"""Progress bars: rich bars from the main process only (one set, however many processes run)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console | None = None, disable: bool = False) -> Progress:
    disable = disable or int(os.environ.get("RANK", "0")) != 0  # one set of bars, from the main process
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
        transient=False,
    )
