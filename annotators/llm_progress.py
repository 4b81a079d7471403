"""Progress of an LLM annotation run on stderr, for runs of any size.

On a terminal: a transient rich bar. Without one (CI logs, ``nohup``, Prefect workers): one line
every :data:`PROGRESS_EVERY` seconds, so a run longer than that shows that it is alive and how
far it got, and a short run prints nothing. ``state`` adds what the run is doing (the HTTP
annotator: requests in flight and its adaptive limit, or the outage it is waiting out); the bar
shows it too, refreshed every :data:`PROGRESS_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class RunProgress:
    """``async with RunProgress(total, requests=...) as progress: progress.advance(n)``."""

    def __init__(
        self,
        total: int,
        *,
        requests: Callable[[], int],
        state: Callable[[], str] | None = None,
        enabled: bool | None = None,
        label: str = "LLM annotation",
    ) -> None:
        self.total = total
        self._state = state
        self.done = 0
        self.label = label
        self._requests = requests
        self._enabled = enabled is not False
        self._console = Console(stderr=True)
        self._terminal = sys.stderr.isatty() if enabled is None else bool(enabled)
        self._bar: Progress | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started = 0.0
        self._lines = 0

    async def __aenter__(self) -> RunProgress:
        self._started = time.monotonic()
        if not self._enabled:
            return self
        if self._terminal:
            self._bar = Progress(
                *Progress.get_default_columns()[:1],
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.add_task(self.label, total=self.total)
            self._bar.start()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            if self._bar is None and self._lines and exc_type is None:
                self._line()  # the last state, after the lines that said it was running

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.advance(self._bar.task_ids[0], rows)

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        state = f", {self._state()}" if self._state is not None else ""
        return (
            f"{self.label}: {self.done}/{self.total} rows{share}, {self._requests()} requests"
            f"{state}, {elapsed:.0f} s"
        )

    def _line(self) -> None:
        self._lines += 1
        self._console.print(self.line(), highlight=False, soft_wrap=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if self._bar is None:
                self._line()
            elif self._state is not None:
                task = self._bar.task_ids[0]
                self._bar.update(task, description=f"{self.label} ({self._state()})")
