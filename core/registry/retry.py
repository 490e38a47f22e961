"""Which registry failures are temporary, and how long to wait before trying again.

Decided in one place (as s3ql does) so every request shares one policy: capped
exponential backoff with full jitter, ``Retry-After`` honoured within the cap, and
a bounded total so a dead registry surfaces in seconds, not minutes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests

TEMPORARY_STATUSES = frozenset({429, 500, 502, 503, 504})
TEMPORARY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters.

    Attributes:
        attempts: total tries, the first included.
        base_delay: first backoff, doubled each time before jitter.
        max_delay: cap on a single wait (also caps ``Retry-After``).
        total_budget: no new attempt starts after this many seconds.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds without a byte before a read fails.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    total_budget: float = 25.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    @property
    def timeout(self) -> tuple[float, float]:
        """The ``timeout=`` argument for requests."""
        return (self.connect_timeout, self.read_timeout)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(response: requests.Response) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class Deadline:
    """Tracks the total retry budget of one logical operation."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + budget

    def allows(self, wait: float) -> bool:
        """Whether waiting ``wait`` seconds and trying again still fits the budget."""
        return self._clock() + wait < self._end
