"""HTTP under the registry client and the token service: deadlines, redirects, credentials.

Caveats first:

* requests' timeouts are per socket operation, so a server that sends one byte
  every few seconds never trips them, in its headers or in its body. Every
  answer here is read through a file whose each ``recv`` may wait only for the
  time left before the answer's deadline (and at most the idle read timeout):
  the status line, headers and body end by the deadline whatever the server does.
* The deadline of an answer is given by whoever sends the request
  (:func:`send`'s ``answer_seconds``) through a context variable read when the
  answer starts; each redirect hop gets its own. An answer started without one
  gets :data:`DEFAULT_ANSWER_SECONDS`.
* Connecting and the TLS handshake are bounded by the connect timeout (CPython
  applies a socket timeout to a whole handshake, and to a whole ``sendall``).
* Redirects are followed here, for GET and HEAD only, at most
  :data:`MAX_REDIRECTS` times: requests would read a redirect's whole body into
  memory first (even with ``allow_redirects=False``), so it never follows one.
* Credentials go only to one origin (scheme, host and port), the one the caller
  names: a redirect to anywhere else, a blob on S3 for instance, gets none.
  Once a request has used HTTPS, a URL with plain HTTP is refused, never followed.
* The deadline rides on urllib3's plain and TLS connection classes; through a
  SOCKS proxy (urllib3's own connection classes) only the timeouts apply.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from dockercomms.core._internal.registry.retry import answer_too_slow
from dockercomms.core.errors import RegistryError
from dockercomms.core.untrusted import shown

#: Deadline of an answer read without :func:`send` (a policy's default: 2 x 60 s).
DEFAULT_ANSWER_SECONDS = 120.0
#: Redirects one request may follow (a blob GET to object storage needs one).
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_ANSWER_SECONDS: ContextVar[float | None] = ContextVar("answer_seconds", default=None)


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port: what may receive a credential (RFC 6454).

    Attributes:
        scheme: ``http`` or ``https`` (lower case).
        host: host name or address (lower case, IPv6 without brackets).
        port: the port, the scheme's default when the URL names none.
    """

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of an absolute URL; ValueError if it has none."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url[:80]!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname.lower(), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@contextlib.contextmanager
def answer_deadline(seconds: float) -> Iterator[None]:
    """Answers started in this block must end within ``seconds`` each."""
    token = _ANSWER_SECONDS.set(seconds)
    try:
        yield
    finally:
        _ANSWER_SECONDS.reset(token)


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    trusted: Origin,
    answer_seconds: float,
    timeout: tuple[float, float],
    verify: bool | str,
    credentials: Callable[[], Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    data: Any = None,
    https_only: bool | None = None,
) -> requests.Response:
    """Send one request (following GET/HEAD redirects); the body is left to stream.

    ``credentials`` is asked for headers only for a URL of origin ``trusted``.
    Plain HTTP is refused when ``https_only`` (default: ``trusted`` is HTTPS) and
    after any hop over HTTPS. Raises :class:`RegistryError` for such a downgrade,
    an unusable URL or too many redirects; transport failures come out as
    requests raised them.
    """
    secure = trusted.scheme == "https" if https_only is None else https_only
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            target = Origin.of(url)
        except ValueError:
            raise RegistryError(f"{what}: unusable URL {_display(url)}") from None
        if secure and target.scheme != "https":
            raise RegistryError(
                f"{what}: refusing {_display(url)}: plain HTTP after HTTPS would expose "
                "credentials and data; the registry must not downgrade"
            )
        secure = secure or target.scheme == "https"
        merged = dict(headers or {})
        if credentials is not None and target == trusted:
            merged.update(credentials())
        with answer_deadline(answer_seconds):
            response = session.request(
                method,
                url,
                data=data,
                headers=merged,
                stream=True,
                timeout=timeout,
                verify=verify,
                allow_redirects=False,
            )
        location = response.headers.get("Location")
        if (
            response.status_code not in REDIRECT_STATUSES
            or method not in ("GET", "HEAD")
            or not location
        ):
            return response
        # Never read: a redirect's body means nothing, and could be endless.
        response.close()
        url = urljoin(response.url, session.get_redirect_target(response) or location)
    raise RegistryError(f"{what}: redirected more than {MAX_REDIRECTS} times")


def _display(url: str) -> str:
    """A URL for a message: no query (signed URLs carry secrets there), escaped."""
    parts = urlsplit(url)
    return shown(f"{parts.scheme}://{parts.netloc}{parts.path}")


class BoundedSession(requests.Session):
    """A session whose answers all have deadlines and which follows no redirect itself.

    Also: no cookies (some registries take one as a sign of a browser and start
    CSRF checks) and ``Accept-Encoding: identity`` (manifests are hashed as sent,
    and nothing is decompressed before it is counted).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mount("https://", _BoundedAdapter())
        self.mount("http://", _BoundedAdapter())
        self.headers["Accept-Encoding"] = "identity"
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))

    def resolve_redirects(
        self, resp: requests.Response, req: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> Generator[Any, None, None]:
        """Nothing: :func:`send` follows redirects (requests would read their bodies)."""
        yield from ()


# --- the deadline, under http.client -------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each allowed only the time left before a deadline."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__()
        self._sock = sock
        # A counted reference: the connection may close its socket while this
        # answer is still being read (``Connection: close``), as with makefile().
        self._file = sock.makefile("rb", buffering=0)
        self._seconds = seconds
        self._end = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._end - time.monotonic()
        if left <= 0:
            raise answer_too_slow(self._seconds)
        idle = self._sock.gettimeout()
        if idle is not None and idle <= left:
            return self._file.readinto(buffer)
        self._sock.settimeout(left)
        try:
            return self._file.readinto(buffer)
        except TimeoutError:
            if self._end - time.monotonic() <= 0:
                raise answer_too_slow(self._seconds) from None
            raise
        finally:
            self._sock.settimeout(idle)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _DeadlineSocket:
    """What :class:`http.client.HTTPResponse` needs of a socket: ``makefile``."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._seconds = seconds

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._seconds))


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        seconds = _ANSWER_SECONDS.get()
        wrapped: Any = _DeadlineSocket(sock, DEFAULT_ANSWER_SECONDS if seconds is None else seconds)
        super().__init__(wrapped, debuglevel, method, url)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _BoundedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with pools of deadline-bound connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager
