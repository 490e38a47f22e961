"""Progress bars that appear only when someone is watching and the wait is real.

A bar is drawn only when stdout is a terminal and the transfer has already taken
more than a second; scripts and short transfers get clean output. rich is
imported only then: it costs tens of milliseconds that a script, or a transfer
over within a second, should not pay.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from rich.progress import Progress, TaskID

SHOW_AFTER_SECONDS = 1.0


def _new_bar() -> Progress:
    """A transient transfer bar (imports rich, so only once a bar is due)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


class TransferProgress:
    """Callable progress sink: ``progress(n_bytes)`` from any thread."""

    def __init__(self, description: str, total: int, *, enabled: bool | None = None) -> None:
        self._description = description
        self._total = total
        self._enabled = sys.stdout.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._done = 0
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, n: int) -> None:
        with self._lock:
            self._done += n
            if not self._enabled:
                return
            if self._progress is None and time.monotonic() - self._started > SHOW_AFTER_SECONDS:
                self._progress = _new_bar()
                self._progress.start()
                self._task = self._progress.add_task(self._description, total=self._total)
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=self._done)

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
