"""A hostile registry on 127.0.0.1: scripted answers, served from a thread.

Caveats first:

* Plain HTTP, or HTTPS with a certificate from ``generate_tls_files`` (the TLS
  handshake runs in the handler thread, so a client that gives up on it blocks
  nothing else).
* Answers are scripted: the first route whose method matches and whose regex is
  found (``re.search``) in the request target answers; no match is a 404.
  Routes can be added while the server runs.
* Every request is recorded (method, target, ``Authorization``) before it is
  answered, so a test that has its answer finds it in ``seen``.
* Endless and trickling answers write until the client hangs up (then
  ``abandoned`` is set: an event tests wait on) or the server stops. ``stop()``
  wakes them, shuts down every connection and joins every thread.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.servers.background_server import ServedInThread
from tests.servers.registry_server import TLSFiles

Action = Callable[["HostileHandler"], None]


@dataclass(frozen=True)
class Seen:
    """One request the hostile registry received.

    Attributes:
        method: request method.
        path: request target (path and query).
        authorization: the ``Authorization`` header, or None.
    """

    method: str
    path: str
    authorization: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: HostileRegistry) -> None:
        self.owner = owner
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), HostileHandler)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)
        if add and self.owner.stopping.is_set():
            _shutdown(sock)

    def server_close(self) -> None:
        self.owner.stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)
        super().server_close()

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up is what this server is for."""


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class HostileHandler(BaseHTTPRequestHandler):
    """Answers with whatever action the owner's routes say."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def setup(self) -> None:
        tls = self.server.owner.tls_context
        if tls is not None:
            self.request.settimeout(self.timeout)
            self.request = tls.wrap_socket(self.request, server_side=True)
        self.server.track(self.request, True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, False)
            if self.server.owner.tls_context is not None:
                # socketserver closes the plain socket it accepted, now detached.
                self.request.close()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet; see ``HostileRegistry.seen``."""

    def _dispatch(self) -> None:
        owner = self.server.owner
        owner.record(Seen(self.command, self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        owner.action_for(self.command, self.path)(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    # -- what actions use ----------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Send bytes now; False (and ``abandoned`` set) once the client is gone."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            self.server.owner.abandoned.set()
            return False
        return True

    def head(self, status: int, headers: Mapping[str, str]) -> None:
        """Status line and headers, as given (no Content-Length added)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


@dataclass
class _Route:
    method: str | None
    pattern: re.Pattern[str]
    action: Action


class HostileRegistry:
    """A registry that answers what the test scripts, however unreasonable.

    Attributes:
        seen: every request received, in arrival order.
        abandoned: set when a client hung up on an endless or trickling answer.
        stopping: set when the server stops (wakes trickling answers).
        tls_context: server-side TLS, or None for plain HTTP.
    """

    def __init__(self, tls: TLSFiles | None = None) -> None:
        self.seen: list[Seen] = []
        self.abandoned = threading.Event()
        self.stopping = threading.Event()
        self.tls_context: ssl.SSLContext | None = None
        if tls is not None:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(tls.cert_file, tls.key_file)
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        self._served = ServedInThread("hostile-registry", lambda: _Server(self))

    def start(self) -> HostileRegistry:
        """Bind a free port on 127.0.0.1 and serve in a thread."""
        self._served.start()
        return self

    def stop(self) -> None:
        """Wake every answer, close every connection, join every thread. Idempotent."""
        self._served.stop()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return self._served.host

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://{self.host}"

    def on(self, method: str | None, path: str, action: Action) -> None:
        """Answer requests matching ``method`` (None: any) and ``path`` with ``action``."""
        with self._lock:
            self._routes.append(_Route(method, re.compile(path), action))

    def action_for(self, method: str, target: str) -> Action:
        """The first matching route's action, else a 404."""
        with self._lock:
            for route in self._routes:
                if route.method in (None, method) and route.pattern.search(target):
                    return route.action
        return reply(404)

    def record(self, seen: Seen) -> None:
        """Append to ``seen`` (handler threads)."""
        with self._lock:
            self.seen.append(seen)

    def requests(self, method: str | None = None) -> list[Seen]:
        """A snapshot of ``seen``, optionally of one method."""
        with self._lock:
            return [s for s in self.seen if method in (None, s.method)]


@contextlib.contextmanager
def hostile(tls: TLSFiles | None = None) -> Iterator[HostileRegistry]:
    """A started :class:`HostileRegistry`, stopped at the end."""
    server = HostileRegistry(tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- actions ---------------------------------------------------------------------------------


def reply(status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> Action:
    """A complete, ordinary answer."""

    def act(handler: HostileHandler) -> None:
        handler.head(status, {**(headers or {}), "Content-Length": str(len(body))})
        if handler.command != "HEAD":
            handler.write(body)

    return act


def endless(
    status: int = 200, headers: Mapping[str, str] | None = None, fill: bytes = b" "
) -> Action:
    """Headers, then a body that never ends (chunked), as fast as the client reads."""
    piece = fill * (64 * 1024 // len(fill))
    frame = b"%x\r\n%s\r\n" % (len(piece), piece)

    def act(handler: HostileHandler) -> None:
        handler.head(status, {**(headers or {}), "Transfer-Encoding": "chunked"})
        stopping = handler.server.owner.stopping
        while not stopping.is_set() and handler.write(frame):
            pass
        handler.close_connection = True

    return act


def trickle(
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    in_headers: bool = False,
    every: float = 0.01,
) -> Action:
    """An answer that never ends, one byte at a time: in a header line or in the body.

    Each byte comes well within any read timeout, so only a deadline on the
    whole answer stops it.
    """

    def act(handler: HostileHandler) -> None:
        stopping = handler.server.owner.stopping
        if in_headers:
            handler.send_response_only(status)
            handler.flush_headers()
            handler.write(b"X-Slow: ")
        else:
            handler.head(status, {**(headers or {}), "Content-Length": str(1 << 40)})
        while not stopping.wait(every) and handler.write(b"a"):
            pass
        handler.close_connection = True

    return act
