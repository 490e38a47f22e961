"""An HTTP server on 127.0.0.1 (free port) served from a thread: start, stop, address.

The test doubles (token server, fault proxy) differ in what they answer, not in
how they live, so the life cycle is here once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Generic, TypeVar

S = TypeVar("S", bound=ThreadingHTTPServer)


class ServedInThread(Generic[S]):
    """Owns one server object and the thread running ``serve_forever``."""

    def __init__(self, name: str, make_server: Callable[[], S]) -> None:
        self._name = name
        self._make_server = make_server
        self.server: S | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> S:
        """Bind and serve in a daemon thread; the server's ``server_close`` joins handlers."""
        if self.server is not None:
            raise RuntimeError(f"{self._name} already started")
        self.server = self._make_server()
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self._name,
            daemon=True,
        )
        self._thread.start()
        return self.server

    def stop(self) -> None:
        """Stop serving, close the socket, join the thread. Idempotent."""
        server, thread = self.server, self._thread
        self.server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (only while started)."""
        if self.server is None:
            raise RuntimeError(f"{self._name} not started")
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"
