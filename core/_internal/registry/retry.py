"""Which registry failures are temporary, how long to wait, and how long anything may take.

Decided in one place (as s3ql does) so every retry loop shares one policy:
capped exponential backoff with full jitter, ``Retry-After`` honoured within the
cap, a bounded total, and a wall-clock limit on every answer. Each loop counts
and waits through :class:`Attempts` (a request, a body that broke off, the token
service, a chunk upload restarted); the push queue's backoff between sends is
:meth:`RetryPolicy.delay` too.

Caveats first:

* A failure to *connect* (refused, unknown host, no route, connect timeout) is
  not retried while nothing at that address has answered this client yet: a
  registry that is down or mistyped does not come back in the next few seconds,
  so the user hears about it at once instead of after the whole budget. Once the
  registry has answered, the same failure is taken for a restart and retried.
* An answer that outlives its deadline (:meth:`RetryPolicy.answer_seconds`), or
  an upload the server takes in more slowly than :attr:`RetryPolicy.min_rate`
  (:class:`Pace`), is not retried either: a server that slow would be slow again.
* :func:`classify` reads the exception chains of requests and urllib3 and turns
  them into a few plain words; their own text (``HTTPConnectionPool(host=...):
  Max retries exceeded ...``) is never shown to a user.

The read timeout defaults to ``DOCKERCOMMS_READ_TIMEOUT`` seconds when that is set
(read when a policy is created), so a slow link can wait longer and tests can
make a stalled registry fail fast.
"""

from __future__ import annotations

import errno
import http.client
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from dockercomms.core._internal.limits import KIB
from dockercomms.core.errors import ConfigError, RegistryError, RegistryUnavailableError
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

READ_TIMEOUT_ENV = "DOCKERCOMMS_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 60.0
#: An answer may take this many read timeouts in all (plus time for its size).
ANSWER_TIMEOUTS = 2
#: Slowest average rate a large transfer may keep up (16 KiB/s: a 32 MiB chunk
#: may take about 35 minutes before it is given up).
MIN_RATE = 16 * KIB
#: Longest ``Retry-After`` value read; anything longer is not a number of seconds.
MAX_RETRY_AFTER_CHARS = 64

TEMPORARY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
    """Backoff parameters and time limits.

    Attributes:
        attempts: total tries, the first included.
        base_delay: first backoff, doubled each time before jitter.
        max_delay: cap on a single wait (also caps ``Retry-After``).
        total_budget: no new attempt starts after this many seconds.
        connect_timeout: seconds to establish a connection (a TLS handshake included).
        read_timeout: seconds without a byte before a read fails
            (default: ``DOCKERCOMMS_READ_TIMEOUT``, else 60).
        answer_timeout: seconds one answer (status line, headers and a small body)
            may take in all, however steadily its bytes trickle in; None means
            ``ANSWER_TIMEOUTS`` read timeouts.
        min_rate: bytes per second a large body must average; its deadline grows
            by its size over this rate.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    total_budget: float = 25.0
    connect_timeout: float = 5.0
    read_timeout: float = field(default_factory=read_timeout_from_env)
    answer_timeout: float | None = None
    min_rate: float = MIN_RATE

    @property
    def timeout(self) -> tuple[float, float]:
        """The ``timeout=`` argument for requests."""
        return (self.connect_timeout, self.read_timeout)

    def answer_seconds(self, size: int = 0) -> float:
        """Wall-clock limit for one answer whose body is about ``size`` bytes."""
        base = self.answer_timeout
        if base is None:
            base = ANSWER_TIMEOUTS * self.read_timeout
        return base + max(size, 0) / self.min_rate

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(response: requests.Response) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class Deadline:
    """A point in time an operation must not run past (its retries or its answer)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._end = self._start + budget

    def allows(self, wait: float) -> bool:
        """Whether waiting ``wait`` seconds and trying again still fits the budget."""
        return self._clock() + wait < self._end

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self._end - self._clock()

    def elapsed(self) -> float:
        """Seconds since the deadline was set."""
        return self._clock() - self._start


class Attempts:
    """The tries of one operation under a :class:`RetryPolicy`: counted, waited between, ended.

    Call :meth:`start` before each try; after a failure worth retrying,
    :meth:`again` waits the policy's delay and returns True, or returns False at
    once when the attempts or the time budget are spent (the caller then raises).

    Attributes:
        number: the try under way (1-based; 0 before the first).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        what: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.what = what
        self.number = 0
        self._deadline = Deadline(policy.total_budget, clock)
        self._sleep = sleep

    def start(self) -> int:
        """Count one more try; its number."""
        self.number += 1
        return self.number

    def again(
        self,
        why: str,
        *,
        retry_after: float | None = None,
        before_waiting: Callable[[], None] | None = None,
    ) -> bool:
        """Wait before the next try and return True, or False if none fits the policy.

        ``before_waiting`` runs only when another try follows (to put back a
        connection before the pause, say).
        """
        wait = self.policy.delay(self.number, retry_after)
        if self.number >= self.policy.attempts or not self._deadline.allows(wait):
            return False
        if before_waiting is not None:
            before_waiting()
        log.info("%s: %s; retrying in %.1fs", self.what, why, wait)
        self._sleep(wait)
        return True

    @property
    def elapsed(self) -> float:
        """Seconds since the first try started."""
        return self._deadline.elapsed()


class TooSlowError(TimeoutError):
    """A transfer ran past its wall-clock limit (raised where its bytes move).

    A :class:`TimeoutError`, so requests and urllib3 treat it as the socket
    timeout it stands in for; :func:`classify` finds it in their exception chains.

    Attributes:
        reason: completes "the registry at HOST port PORT ...".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answer_too_slow(seconds: float) -> TooSlowError:
    """The error for an answer that did not end within ``seconds``."""
    return TooSlowError(f"did not finish its answer within {seconds:g} s")


class Pace:
    """A transfer's wall-clock limit that grows with what it moved.

    After ``grace`` seconds, the transfer must have averaged ``min_rate`` bytes
    per second; checked between pieces, so it ends at most one piece late.
    """

    def __init__(
        self, grace: float, min_rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._grace = grace
        self._min_rate = min_rate
        self._clock = clock
        self._start: float | None = None

    def check(self, done: int) -> None:
        """Raise :class:`TooSlowError` if ``done`` bytes took too long."""
        now = self._clock()
        if self._start is None:
            self._start = now
        if now - self._start > self._grace + done / self._min_rate:
            raise TooSlowError(f"took the upload more slowly than {self._min_rate / KIB:g} KiB/s")


@dataclass(frozen=True)
class Failure:
    """Why a request got no usable answer, in words a user can act on.

    Attributes:
        reason: completes "the registry at HOST port PORT ...", e.g.
            "refused the connection".
        temporary: trying again may help.
        connecting: no connection was made at all; not worth retrying while
            nothing at that address has answered yet.
        unavailable: the registry was not there or not usable now
            (:class:`RegistryUnavailableError`, which a queue retries later),
            rather than set up wrong (a TLS failure, an answer that is not HTTP).
    """

    reason: str
    temporary: bool
    connecting: bool = False
    unavailable: bool = True

    def worth_retrying(self, answered_before: bool) -> bool:
        """Whether to try again, given whether the server has ever answered."""
        return self.temporary and (answered_before or not self.connecting)

    def sentence(
        self,
        what: str,
        url: str,
        attempts: int = 0,
        seconds: float = 0.0,
        *,
        server: str = "registry",
    ) -> str:
        """One plain sentence: what was tried, where, what happened, how often."""
        parts = urlsplit(url)
        host = parts.hostname or "?"
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        text = f"{what}: the {server} at {shown(host)} port {port} {self.reason}"
        if attempts == 1:
            text += " (tried once)"
        elif attempts > 1:
            text += f" (tried {attempts} times in {seconds:.0f} s)"
        return text

    def error(self, what: str, url: str, attempts: int, seconds: float) -> RegistryError:
        """The exception to raise once no more attempts will be made."""
        text = self.sentence(what, url, attempts, seconds)
        return RegistryUnavailableError(text) if self.unavailable else RegistryError(text)


#: Errno values of a connect() that found nothing to talk to.
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})
#: Name lookups that may succeed later (the resolver itself failed).
_DNS_AGAIN = frozenset({socket.EAI_AGAIN})


def classify(exc: BaseException, policy: RetryPolicy) -> Failure:
    """The :class:`Failure` behind an exception raised while sending or reading.

    Everything in the chain (``__cause__``, ``__context__``, urllib3's
    ``reason``, exceptions carried in ``args``) is looked at; the most specific
    recognised cause wins, whichever wrapper carries it.
    """
    chain = list(_chain(exc))
    for rule in _RULES:
        for item in chain:
            found = rule(item, policy)
            if found is not None:
                return found
    if isinstance(exc, requests.ConnectionError | OSError):
        return Failure("could not be talked to", True)
    return Failure("answered with something that is not HTTP", False, unavailable=False)


def _too_slow(item: BaseException, policy: RetryPolicy) -> Failure | None:
    if isinstance(item, TooSlowError):
        return Failure(item.reason, False)
    return None


def _not_connected(item: BaseException, policy: RetryPolicy) -> Failure | None:
    if isinstance(item, ConnectionRefusedError):
        return Failure("refused the connection", True, connecting=True)
    if isinstance(item, socket.gaierror):
        if item.errno in _DNS_AGAIN:
            return Failure("could not be looked up (DNS failed)", True, connecting=True)
        return Failure("does not exist (unknown host name)", True, connecting=True)
    if isinstance(item, urllib3.exceptions.NameResolutionError):
        return Failure("does not exist (unknown host name)", True, connecting=True)
    if isinstance(item, OSError) and item.errno in _NO_ROUTE:
        return Failure("cannot be reached (no route to it)", True, connecting=True)
    # urllib3's NewConnectionError is a ConnectTimeoutError too; its cause says more.
    timeouts = requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError
    if isinstance(item, timeouts) and not isinstance(item, urllib3.exceptions.NewConnectionError):
        reason = f"did not accept a connection within {policy.connect_timeout:g} s"
        return Failure(reason, True, connecting=True)
    return None


def _answer_failed(item: BaseException, policy: RetryPolicy) -> Failure | None:
    if isinstance(item, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError):
        return Failure(f"sent nothing for {policy.read_timeout:g} s", True)
    if isinstance(item, ssl.SSLError):
        reason = f"failed the TLS connection: {_ssl_reason(item)}"
        return Failure(reason, False, unavailable=False)
    if isinstance(item, http.client.IncompleteRead | http.client.RemoteDisconnected):
        return Failure("broke off the connection in the middle of its answer", True)
    if isinstance(item, ConnectionResetError):
        return Failure("reset the connection", True)
    if isinstance(item, http.client.HTTPException):
        # A bad status line, a header line over 64 KiB, over 100 headers.
        return Failure("answered with something that is not HTTP", False, unavailable=False)
    return None


def _generic(item: BaseException, policy: RetryPolicy) -> Failure | None:
    broken = urllib3.exceptions.ProtocolError | requests.exceptions.ChunkedEncodingError
    if isinstance(item, broken):
        return Failure("broke off the connection in the middle of its answer", True)
    if isinstance(item, TimeoutError):
        return Failure(f"sent nothing for {policy.read_timeout:g} s", True)
    return None


#: Most specific first: each rule is tried on the whole chain before the next.
_RULES: tuple[Callable[[BaseException, RetryPolicy], Failure | None], ...] = (
    _too_slow,
    _not_connected,
    _answer_failed,
    _generic,
)


def _chain(exc: BaseException, limit: int = 32) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, each once, breadth first, at most ``limit``."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < limit:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        reason = getattr(item, "reason", None)
        wrapped = [item.__cause__, item.__context__, reason, *item.args]
        queue.extend(w for w in wrapped if isinstance(w, BaseException))


def _ssl_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    reason = error.reason or error.strerror or type(error).__name__
    return str(reason).replace("_", " ").lower()
