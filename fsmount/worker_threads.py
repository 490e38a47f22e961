"""Blocking work from the trio loop: registry calls, disk and SQLite, in bounded worker threads.

Caveats first:

* Every registry call (list, fetch, verify, receipt) blocks on the network or the
  disk, so the views run it here, at most ``limit`` at a time; the trio thread
  only ever waits for results. Each worker thread talks to the registry through
  its own client (``core.clients.ClientPool``, one per thread).
* A thread that is running cannot be cancelled; a cancelled caller simply stops
  waiting for its result (``abandon_on_cancel``), which only happens at shutdown.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

DEFAULT_THREADS = 4


class WorkerThreads:
    """A limit on the worker threads the mount's blocking calls run in."""

    def __init__(self, limit: int = DEFAULT_THREADS) -> None:
        self._limiter = trio.CapacityLimiter(limit)

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work(*args, **kwargs)`` in a worker thread; its result."""
        call = functools.partial(work, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)
