"""One HTTP service on 127.0.0.1, on a free port, served from a daemon thread.

Every fake service (OIDC, Fulcio, Rekor, TSA) is an :class:`App`: a function from
request to response. :class:`Service` owns the socket and the thread, so each
service file only describes its protocol. Responses close the connection
(HTTP/1.0), so sigstore-python's pooled ``requests`` sessions never hold a live
socket after a test and no ``ResourceWarning`` escapes.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

log = logging.getLogger("sigstore_stack")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, document: object) -> Response:
        return cls(status, json.dumps(document).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """Rekor-style error document; Fulcio reads the same ``message`` key."""
        return cls.json(status, {"code": status, "message": message})


class App(Protocol):
    name: str

    def handle(self, request: Request) -> Response: ...


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=self.path.split("?", 1)[0],
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
        )
        app = self.server.app
        try:
            response = app.handle(request)
        except Exception as exc:  # a bug in the fake must show up, not hang a test
            log.exception("%s: %s %s failed", app.name, request.method, request.path)
            response = Response.error(500, f"{type(exc).__name__}: {exc}")
        if response.status >= 400:
            # sigstore-python drops 4xx bodies (falsy Response), so say it here.
            log.warning(
                "%s: %s %s -> %d %s",
                app.name,
                request.method,
                request.path,
                response.status,
                response.body[:300],
            )
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = _dispatch
    do_POST = _dispatch

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s: " + format, self.server.app.name, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app = app


class Service:
    """Owns one server socket and its thread; ``stop()`` releases both."""

    def __init__(self, app: App) -> None:
        self._server = _Server(app)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sigstore-stack-{app.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
