"""The progress bar every command shows: on stderr, and only when a person is watching."""

from __future__ import annotations

import sys
from typing import Callable


class StderrProgress:
    """A rich progress bar counting ``unit`` on stderr when it is a terminal, else nothing.

    Entering gives the callback to pass to the library (``None`` when disabled), which calls
    it as ``callback(done, total, *values)``; ``value_label`` names the optional running value
    shown after the count (shown as a percentage).
    """

    def __init__(self, unit: str, *, quiet: bool, total: int | None = None, value_label: str | None = None):
        self.enabled = not quiet and sys.stderr.isatty()
        self.unit = unit
        self.total = total
        self.value_label = value_label
        self._progress = None
        self._task = None

    def __enter__(self) -> Callable[..., None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn(self.unit), BarColumn(), MofNCompleteColumn()]
        if self.value_label:
            columns.append(TextColumn(f"{self.value_label} {{task.fields[value]}}"))
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.unit, total=self.total, value="-")
        return self._update

    def _update(self, done: int, total: int, value: float | None = None) -> None:
        fields = {} if value is None else {"value": f"{100 * value:.2f}"}
        self._progress.update(self._task, completed=done, total=total, **fields)

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()
