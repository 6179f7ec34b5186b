"""Live bars for long transfers on a terminal: one per host and transfer, bytes, rate and ETA.

rich draws them at the bottom of the terminal while the run's lines scroll above (``write``),
which is what hand-written ANSI would have to redo. Used only on a terminal; elsewhere the
reporter prints a plain line every 10% and ``--json`` emits progress events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class LiveBars:
    def __init__(self, stream) -> None:
        self.console = Console(file=stream, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.lock = threading.Lock()
        self.running = 0  # bars not finished yet; the display stops when none is left

    @property
    def live(self) -> bool:
        return self.running > 0

    def write(self, line: str) -> None:
        """A line of the run's output, printed above the bars (it may hold click's colours)."""
        self.console.print(Text.from_ansi(line))

    def bar(self, host: str, label: str) -> Callable[[int, int | None], None]:
        task: list = []  # the rich task, made on the first update

        def update(done: int, total: int | None) -> None:
            with self.lock:
                if not task:
                    if self.running == 0:
                        self.progress.start()
                    self.running += 1
                    task.append(self.progress.add_task(f"{host}: {label}", total=total))
                self.progress.update(task[0], completed=done, total=total)
                if total is not None and done >= total and task[0] is not None:
                    self.progress.stop_task(task[0])
                    task[0] = None  # finished: later updates change nothing
                    self.running -= 1
                    if self.running == 0:
                        self.progress.stop()

        return update
