"""A streaming HTTP/1.1 reverse proxy that injects faults, for registry client tests.

Caveats first:

* Plain HTTP on both sides; the upstream is ``host:port`` (e.g. ``RegistryServer.host``
  of a registry started with ``tls=False``). Each client request opens its own upstream
  connection; the client side keeps connections alive.
* Bodies are streamed in pieces of at most 64 KiB in both directions, never buffered
  whole. A ``Transfer-Encoding: chunked`` request body is forwarded chunked (re-framed
  piece by piece); a response without ``Content-Length`` is sent chunked to the client.
* The client's ``Host`` header is forwarded unchanged, so distribution builds
  ``Location`` URLs that already point at the proxy. ``Location`` values that do name the
  upstream are rewritten anyway and counted in ``location_rewrites``.
* Faults match on method and a regex searched in the request target (path *and* query,
  e.g. ``r"/blobs/uploads/.*[?&]digest="`` for the final upload ``PUT``). The first
  matching fault with ``times`` left is applied; ``times=None`` means forever.
* ``drop`` closes with a TCP reset (``SO_LINGER`` 0); ``truncate`` closes cleanly (FIN)
  after a short body, so clients see a reset vs. an incomplete read.
* ``shutdown()`` wakes stalled handlers, shuts down every open socket and joins all
  threads.

Fault kinds:

========== ===================================================================
status     Reply ``status`` (with ``Retry-After`` if set) and an OCI error body,
           without contacting the upstream. The request body is read and discarded
           first, so the connection stays usable.
drop       ``phase="request"``: forward the headers and ``after_bytes`` of the request
           body, then reset both connections (the upstream sees a broken upload).
           ``phase="response"``: forward the request, send the response headers and
           ``after_bytes`` of its body, then reset. ``"auto"`` picks ``request`` when
           the request has a body, else ``response``.
stall      Read the request headers, then say nothing for ``seconds``; then close
           (``then="close"``) or forward normally (``then="forward"``, a slow server).
truncate   Forward; send the response with its full ``Content-Length`` but only
           ``after_bytes`` of the body, then close cleanly.
========== ===================================================================
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, NamedTuple

from tests.servers.background_server import ServedInThread

PIECE = 64 * 1024
MAX_LINE = 64 * 1024

FaultKind = Literal["status", "drop", "stall", "truncate"]

# Hop-by-hop headers (RFC 9110 7.6.1) plus Expect, which this proxy answers itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)

_ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


class SeenRequest(NamedTuple):
    """One request handled by the proxy.

    Attributes:
        method: request method.
        path: request target as sent by the client (path and query).
        status: status sent to the client; ``None`` if no status line was sent (a
            stall that closed, a drop during the request body, an upstream failure
            after which the connection was closed).
    """

    method: str
    path: str
    status: int | None


@dataclass
class Fault:
    """A fault for the next ``times`` requests matching ``method`` and ``path``.

    Attributes:
        kind: see the module docstring.
        method: request method to match (case-insensitive); ``None`` matches any.
        path: regex searched (``re.search``) in the request target.
        times: how many matching requests to affect; ``None`` = all of them.
        status: status code for ``kind="status"``.
        retry_after: ``Retry-After`` seconds for ``kind="status"``.
        after_bytes: body bytes passed through before ``drop``/``truncate`` strike.
        seconds: how long ``stall`` stays silent.
        phase: which body ``drop`` interrupts.
        then: what ``stall`` does after ``seconds``.
        hits: how many requests this fault has affected so far.
    """

    kind: FaultKind
    method: str | None = None
    path: str = ""
    times: int | None = 1
    status: int = 503
    retry_after: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    phase: Literal["auto", "request", "response"] = "auto"
    then: Literal["close", "forward"] = "close"
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path)

    @property
    def exhausted(self) -> bool:
        """Whether the fault has been applied ``times`` times."""
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, target: str) -> bool:
        """Whether a request is one this fault is aimed at (ignoring ``times``)."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._pattern.search(target) is not None


class _Abort(Exception):
    """Raised inside the handler to reset the client connection."""


class _ProxyHTTPServer(ThreadingHTTPServer):
    # Non-daemon handler threads so that server_close() joins them.
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: FaultProxy) -> None:
        self.owner = owner
        self._sockets: set[socket.socket] = set()
        self._abort: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self.stopping.is_set():
            _shutdown_socket(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def mark_abort(self, sock: socket.socket) -> None:
        # SO_LINGER with a zero timeout turns close() into a TCP reset.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self._abort.add(sock)

    def server_close(self) -> None:
        """Wake stalled handlers and drop their connections before joining them."""
        self.close_all()
        super().server_close()

    def close_all(self) -> None:
        self.stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown_socket(sock)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        assert isinstance(request, socket.socket)
        with self._lock:
            abort = request in self._abort
            self._abort.discard(request)
        if abort:
            # Skip the FIN that shutdown(SHUT_WR) would send: close() resets.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        # Connection errors are the point of this proxy; anything else is a bug in it
        # and is kept for tests to assert on.
        exc = sys.exception()
        if exc is not None and not isinstance(exc, OSError | http.client.HTTPException):
            self.owner.errors.append(exc)


def _shutdown_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyHTTPServer
    protocol_version = "HTTP/1.1"
    _seen: SeenRequest | None = None
    # Idle keep-alive connections and stuck peers give up after this long.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr log; see ``FaultProxy.requests_seen``."""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Abort:
            self.close_connection = True
            self.server.mark_abort(self.connection)

    def _proxy(self) -> None:
        self._seen = SeenRequest(self.command, self.path, None)
        fault = self.server.owner.take_fault(self.command, self.path)
        try:
            self._serve(fault)
        except _Abort:
            raise
        except (OSError, http.client.HTTPException):
            # The client or the upstream went away. If no response has started, tell a
            # client that is still there; either way this connection is finished.
            self.close_connection = True
            if self._seen is not None:
                with contextlib.suppress(OSError):
                    self._send_error(502, None)
        finally:
            if self._seen is not None:
                self.server.owner.record(self._seen)

    def _start_response(self, status: int, reason: str | None = None) -> None:
        # Recorded before any byte of the response leaves, so a client that has read
        # the response always finds its request in ``requests_seen``.
        if self._seen is not None:
            self.server.owner.record(self._seen._replace(status=status))
            self._seen = None
        self.send_response_only(status, reason)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy

    # -- request body ----------------------------------------------------------------

    def _request_body_kind(self) -> tuple[bool, int]:
        """``(chunked, content_length)`` of the request body."""
        encoding = self.headers.get("Transfer-Encoding", "")
        if "chunked" in encoding.lower():
            return True, 0
        try:
            return False, int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ConnectionError("bad Content-Length") from None

    def _copy_fixed(
        self, length: int, sink: http.client.HTTPConnection | None, limit: int | None
    ) -> bool:
        """Copy ``length`` body bytes to ``sink``; return ``False`` if ``limit`` struck."""
        remaining = length
        sent = 0
        while remaining > 0:
            want = min(PIECE, remaining)
            if limit is not None:
                want = min(want, limit - sent)
                if want <= 0:
                    return False
            data = self.rfile.read1(want)
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            if sink is not None:
                sink.send(data)
            remaining -= len(data)
            sent += len(data)
        return True

    def _copy_chunked(self, sink: http.client.HTTPConnection | None, limit: int | None) -> bool:
        """Re-frame a chunked body to ``sink``; return ``False`` if ``limit`` struck."""
        sent = 0
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line.endswith(b"\n"):
                raise ConnectionError("bad chunk size line")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                # Trailers (ignored) end with an empty line.
                while self.rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                    pass
                if sink is not None:
                    sink.send(b"0\r\n\r\n")
                return True
            if sink is not None:
                sink.send(b"%x\r\n" % size)
            remaining = size
            while remaining > 0:
                want = min(PIECE, remaining)
                if limit is not None:
                    want = min(want, limit - sent)
                    if want <= 0:
                        return False
                data = self.rfile.read1(want)
                if not data:
                    raise ConnectionError("client closed the connection mid-chunk")
                if sink is not None:
                    sink.send(data)
                remaining -= len(data)
                sent += len(data)
            if self.rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
                raise ConnectionError("missing CRLF after chunk")
            if sink is not None:
                sink.send(b"\r\n")

    def _copy_body(self, sink: http.client.HTTPConnection | None, limit: int | None) -> bool:
        chunked, length = self._request_body_kind()
        if chunked:
            return self._copy_chunked(sink, limit)
        return self._copy_fixed(length, sink, limit)

    # -- the proxying itself ---------------------------------------------------------

    def _serve(self, fault: Fault | None) -> None:
        proxy = self.server.owner
        if fault is not None and fault.kind == "stall":
            self.server.stopping.wait(fault.seconds)
            if fault.then == "close" or self.server.stopping.is_set():
                self.close_connection = True
                return
        if fault is not None and fault.kind == "status":
            self._copy_body(None, None)
            self._send_error(fault.status, fault.retry_after)
            return

        chunked, length = self._request_body_kind()
        has_body = chunked or length > 0
        drop_request = (
            fault is not None
            and fault.kind == "drop"
            and (fault.phase == "request" or (fault.phase == "auto" and has_body))
        )
        upstream = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
        )
        try:
            try:
                upstream.connect()
            except OSError:
                self._copy_body(None, None)
                self._send_error(502, None)
                return
            assert upstream.sock is not None
            self.server.track(upstream.sock)
            try:
                self._forward(upstream, fault, chunked, drop_request)
            finally:
                self.server.untrack(upstream.sock)
        finally:
            upstream.close()

    def _forward(
        self,
        upstream: http.client.HTTPConnection,
        fault: Fault | None,
        chunked: bool,
        drop_request: bool,
    ) -> None:
        proxy = self.server.owner
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        dropped = {h.strip().lower() for h in self.headers.get("Connection", "").split(",")}
        for name, value in self.headers.items():
            if name.lower() not in _HOP_BY_HOP and name.lower() not in dropped:
                upstream.putheader(name, value)
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        limit = fault.after_bytes if drop_request and fault is not None else None
        if not self._copy_body(upstream, limit) or drop_request:
            raise _Abort

        response = upstream.getresponse()
        self._start_response(response.status, response.reason)
        dropped = {h.strip().lower() for h in (response.getheader("Connection") or "").split(",")}
        for name, value in response.getheaders():
            lname = name.lower()
            if lname in _HOP_BY_HOP or lname in dropped:
                continue
            if lname == "location" and value.startswith(proxy.upstream_url):
                value = proxy.url + value[len(proxy.upstream_url) :]
                proxy.count_location_rewrite()
            self.send_header(name, value)

        bodyless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        length_header = response.getheader("Content-Length")
        send_chunked = not bodyless and length_header is None
        if send_chunked and self.request_version == "HTTP/1.0":
            send_chunked = False
            self.close_connection = True
        if send_chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if bodyless:
            return

        limit = None
        if fault is not None and fault.kind in ("drop", "truncate"):
            limit = fault.after_bytes
        sent = 0
        while True:
            want = PIECE if limit is None else min(PIECE, limit - sent)
            data = response.read1(want) if want > 0 else b""
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if send_chunked else data)
            sent += len(data)
        if limit is not None and not response.isclosed():
            if fault is not None and fault.kind == "drop":
                raise _Abort
            self.close_connection = True
            return
        if send_chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send_error(self, status: int, retry_after: int | None) -> None:
        code = _ERROR_CODES.get(status, "UNKNOWN")
        body = json.dumps(
            {"errors": [{"code": code, "message": f"injected fault: HTTP {status}"}]}
        ).encode()
        self._start_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FaultProxy:
    """Reverse proxy from ``url`` to ``upstream`` (``host:port``) with injected faults.

    Attributes:
        upstream_host: upstream host name or IP.
        upstream_port: upstream port.
        upstream_timeout: socket timeout towards the upstream, seconds.
        faults: faults in match order, including exhausted ones (see ``Fault.hits``).
        requests_seen: every request handled, in completion order.
        location_rewrites: ``Location`` headers that named the upstream and were
            rewritten to the proxy.
        errors: unexpected (non-connection) exceptions raised in handler threads; a
            test can assert it is empty.
    """

    def __init__(self, upstream: str, *, upstream_timeout: float = 30.0) -> None:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream must be host:port, got {upstream!r}")
        self.upstream_host = host
        self.upstream_port = int(port)
        self.upstream_timeout = upstream_timeout
        self.faults: list[Fault] = []
        self.requests_seen: list[SeenRequest] = []
        self.location_rewrites = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._served = ServedInThread("fault-proxy", lambda: _ProxyHTTPServer(self))

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind a random port on 127.0.0.1 and serve in a thread; return ``self``."""
        self._served.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, wake stalls, close every connection, join threads. Idempotent."""
        self._served.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        return self._served.host

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return f"http://{self.host}"

    @property
    def upstream_url(self) -> str:
        """``http://host:port`` of the upstream."""
        return f"http://{self.upstream_host}:{self.upstream_port}"

    # -- faults ----------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        """Arm ``fault`` (after those already armed); return it for ``hits``."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail(
        self,
        status: int = 503,
        *,
        retry_after: int | None = None,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
    ) -> Fault:
        """Answer matching requests with ``status`` instead of forwarding them."""
        return self.add_fault(
            Fault("status", method, path, times, status=status, retry_after=retry_after)
        )

    def drop_mid_body(
        self,
        after_bytes: int,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        phase: Literal["auto", "request", "response"] = "auto",
    ) -> Fault:
        """Reset the connection after ``after_bytes`` of the request or response body."""
        return self.add_fault(
            Fault("drop", method, path, times, after_bytes=after_bytes, phase=phase)
        )

    def stall(
        self,
        seconds: float,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        then: Literal["close", "forward"] = "close",
    ) -> Fault:
        """Stay silent for ``seconds`` after the request headers."""
        return self.add_fault(Fault("stall", method, path, times, seconds=seconds, then=then))

    def truncate(
        self,
        after_bytes: int,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
    ) -> Fault:
        """Send the full ``Content-Length`` but only ``after_bytes`` of body, then close."""
        return self.add_fault(Fault("truncate", method, path, times, after_bytes=after_bytes))

    def clear(self) -> None:
        """Disarm all faults and forget recorded requests."""
        with self._lock:
            self.faults.clear()
            self.requests_seen.clear()
            self.location_rewrites = 0

    def take_fault(self, method: str, target: str) -> Fault | None:
        """Consume one use of the first armed fault matching the request."""
        with self._lock:
            for fault in self.faults:
                if not fault.exhausted and fault.matches(method, target):
                    fault.hits += 1
                    return fault
        return None

    def record(self, seen: SeenRequest) -> None:
        """Append to ``requests_seen`` (called by handler threads)."""
        with self._lock:
            self.requests_seen.append(seen)

    def count_location_rewrite(self) -> None:
        """Count one rewritten ``Location`` header."""
        with self._lock:
            self.location_rewrites += 1
