"""One progress bar for every long loop (cache building, training epochs): rich, on stderr.

It shows only where a person watches: `enabled` and stderr a terminal. Otherwise the loop gets a
no-op `advance`, so logs and `--json` output stay clean. rich is imported only when shown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _rate_column(unit: str) -> Any:
    """A rich progress column showing `unit`s per second."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} {unit}/s" if speed else f"-- {unit}/s")

    return Rate()


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True,
                 rate_unit: str | None = None) -> Iterator[Callable[[], None]]:
    """Yield `advance()`, which moves a bar of `total` steps on by one."""
    if not (enabled and total > 0 and sys.stderr.isatty()):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns: list[Any] = ["[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn()]
    if rate_unit is not None:
        columns.append(_rate_column(rate_unit))
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
