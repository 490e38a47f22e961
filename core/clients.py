"""One registry client per thread: the pool every part that calls the registry shares.

Caveats first:

* A ``requests`` session is not promised to be thread-safe, so each thread gets
  its own client, made on its first call and reused by every later call on that
  thread (trio's worker threads, an executor's, the syncer's). Nothing else in
  dockercomms keeps clients per thread.
* A thread's client is closed when its thread ends (trio retires idle worker
  threads), and every client when the pool is closed; :meth:`ClientPool.renew`
  drops the calling thread's client (a connection pool that may hold dead
  sockets after the registry went away).
* After :meth:`ClientPool.close` no client is made any more: work abandoned at
  shutdown fails at its next registry call instead of running on.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import RepositoryRef
from dockercomms.core.errors import RegistryUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class ClientPool:
    """Registry clients, one per thread, all made by ``new_client`` and closed together.

    ``repository`` says (on first use) which repository the clients talk to; a
    bad ``--repo`` therefore fails when the pool is first used, as a client would.
    """

    def __init__(
        self,
        new_client: Callable[[], RegistryClient],
        repository: Callable[[], RepositoryRef],
    ) -> None:
        self._repository = repository
        self._new_client = new_client
        self._lock = threading.Lock()
        self._clients: dict[int, RegistryClient] = {}
        self._closed = False

    def client(self) -> RegistryClient:
        """The calling thread's client (made now if it has none)."""
        thread = threading.current_thread()
        key = id(thread)
        with self._lock:
            if self._closed:
                raise RegistryUnavailableError(
                    "the registry connections are closed (shutting down)"
                )
            client = self._clients.get(key)
        if client is not None:
            return client
        client = self._new_client()
        with self._lock:
            if self._closed:
                client.close()
                raise RegistryUnavailableError(
                    "the registry connections are closed (shutting down)"
                )
            self._clients[key] = client
        # The thread's id may be reused once it is gone: the finalizer runs first.
        weakref.finalize(thread, self._retire, key, client)
        return client

    @property
    def repository(self) -> RepositoryRef:
        """The repository every client of the pool talks to."""
        return self._repository()

    def renew(self) -> None:
        """Close the calling thread's client; its next call makes a fresh one."""
        key = id(threading.current_thread())
        with self._lock:
            client = self._clients.pop(key, None)
        if client is not None:
            _close(client)

    def map(self, work: Callable[[T], R], items: Iterable[T], *, workers: int) -> list[R]:
        """``work(item)`` for every item on up to ``workers`` threads; results in order.

        ``work`` calls :meth:`client` for its thread's client; the threads end (and
        their clients are closed) when every item is done.
        """
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="registry") as pool:
            return list(pool.map(work, items))

    def close(self) -> None:
        """Close every client; later calls to :meth:`client` fail."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            _close(client)

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retire(self, key: int, client: RegistryClient) -> None:
        """A thread ended: close its client (unless it was renewed or closed already)."""
        with self._lock:
            if self._clients.get(key) is not client:
                return
            del self._clients[key]
        _close(client)


def _close(client: RegistryClient) -> None:
    try:
        client.close()
    except Exception as exc:  # closing must not stop the rest of a teardown
        log.info("closing a registry client: %s", exc)
