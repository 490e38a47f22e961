"""Which registry failures are temporary, and how long to wait before trying again.

Decided in one place (as s3ql does) so every request shares one policy: capped
exponential backoff with full jitter, ``Retry-After`` honoured within the cap, and
a bounded total so a dead registry surfaces in seconds, not minutes.

The read timeout defaults to ``DOCKERCOMMS_READ_TIMEOUT`` seconds when that is set
(read when a policy is created), so a slow link can wait longer and tests can
make a stalled registry fail fast.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import requests

from dockercomms.core.errors import ConfigError

READ_TIMEOUT_ENV = "DOCKERCOMMS_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 60.0

TEMPORARY_STATUSES = frozenset({429, 500, 502, 503, 504})
TEMPORARY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def read_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``DOCKERCOMMS_READ_TIMEOUT`` (seconds, > 0), else the 60 s default."""
    env = os.environ if environ is None else environ
    text = env.get(READ_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_READ_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{READ_TIMEOUT_ENV} must be a positive number of seconds, not {text!r}")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters.

    Attributes:
        attempts: total tries, the first included.
        base_delay: first backoff, doubled each time before jitter.
        max_delay: cap on a single wait (also caps ``Retry-After``).
        total_budget: no new attempt starts after this many seconds.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds without a byte before a read fails
            (default: ``DOCKERCOMMS_READ_TIMEOUT``, else 60).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    total_budget: float = 25.0
    connect_timeout: float = 5.0
    read_timeout: float = field(default_factory=read_timeout_from_env)

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
