"""One progress bar for every long loop (cache building, training epochs, inference): rich, on
stderr.

It shows only where a person watches: `enabled` (commands pass `not --json`) and both stderr and
stdout terminals. Otherwise the loop gets an `Advance` that does nothing and says so (`shown` is
False), so logs, pipes and `--json` output stay clean and a loop can skip work done only for the
bar (reading a loss off the GPU). rich is imported only when shown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Advance:
    """What `progress_bar` yields: `advance(steps=1, **fields)` moves the bar on by `steps` and
    sets the text of its extra fields (`loss="loss 0.693"`)."""

    def __init__(self, update: Callable[[int, dict[str, str]], None] | None = None) -> None:
        self._update = update

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn: when not, fields need not be computed."""
        return self._update is not None

    def __call__(self, steps: int = 1, **fields: str) -> None:
        if self._update is not None:
            self._update(steps, fields)


def shows() -> bool:
    """Whether a person watches: stderr (where the bar is drawn) and stdout are terminals."""
    return sys.stderr.isatty() and sys.stdout.isatty()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _rate_column(unit: str, scale: float) -> Any:
    """A rich progress column showing `unit`s per second, `scale` units a step."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed * scale:.2f} {unit}/s" if speed else f"-- {unit}/s")

    return Rate()


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True,
                 rate_unit: str | None = None, rate_scale: float = 1.0,
                 fields: Sequence[str] = ()) -> Iterator[Advance]:
    """Yield an `Advance` over a bar of `total` steps: done/total, the rate in `rate_unit`s per
    second (`rate_scale` of them a step), the time left, then the text `fields`."""
    if not (enabled and total > 0 and shows()):
        yield Advance()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = ["[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn()]
    if rate_unit is not None:
        columns.append(_rate_column(rate_unit, rate_scale))
    columns.append(TimeRemainingColumn())
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in fields]
    with Progress(*columns, console=_console(), transient=True) as bar:
        task = bar.add_task(description, total=total, **dict.fromkeys(fields, ""))
        yield Advance(lambda steps, values: bar.update(task, advance=steps, **values))
