"""The blocking core engine, called from trio through a bounded pool of worker threads.

Caveats first:

* Every registry call (list, fetch, verify, receipt) blocks on the network or the
  disk, so it runs in a worker thread via ``trio.to_thread.run_sync``, at most
  ``threads`` at a time; the trio thread only ever waits for results.
* Each worker thread has its own ``RegistryClient`` (a ``requests`` session is not
  promised to be thread-safe); trio reuses its worker threads, so clients are
  reused too. ``close()`` closes them all.
* A fresh ``Receiver`` is built for every call, so a change to ``trust.json``
  takes effect on the next poll or ``open()`` without a remount.
* A thread that is running cannot be cancelled; a cancelled caller simply stops
  waiting for its result (``abandon_on_cancel``), which only happens at shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from dockercomms.core.receive import Receiver
from dockercomms.core.registry.client import RegistryClient
from dockercomms.core.send import DigestSigner
from dockercomms.core.workspace import RegistryOptions, Workspace

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_THREADS = 4


class Engine:
    """Registry access for the filesystem: one limiter, one client per worker thread.

    Attributes:
        workspace: the identity whose inbox and keys we use.
        options: how to reach the registry.
        me: my identity (the recipient of ``inbox/``).
    """

    def __init__(
        self,
        workspace: Workspace,
        options: RegistryOptions,
        *,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.workspace = workspace
        self.options = options
        self.me = workspace.identity
        self._limiter = trio.CapacityLimiter(threads)
        self._local = threading.local()
        self._clients: list[RegistryClient] = []
        self._clients_lock = threading.Lock()
        self._signer: DigestSigner | None = None
        self._signer_lock = threading.Lock()

    async def call(self, work: Callable[[RegistryClient], T]) -> T:
        """Run ``work(client)`` in a worker thread and return its result."""
        return await trio.to_thread.run_sync(
            self._in_thread, work, limiter=self._limiter, abandon_on_cancel=True
        )

    def _in_thread(self, work: Callable[[RegistryClient], T]) -> T:
        client: RegistryClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self.workspace.client(self.options)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return work(client)

    def receiver(self, client: RegistryClient) -> Receiver:
        """A receiver over the trust policy as it is on disk right now."""
        return self.workspace.receiver(client)

    def signer(self) -> DigestSigner:
        """My signer (loaded once; receipts are signed with it)."""
        with self._signer_lock:
            if self._signer is None:
                self._signer = self.workspace.signer()
            return self._signer

    def close(self) -> None:
        """Close every client the worker threads opened."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception as exc:  # closing must not stop the rest of teardown
                log.info("closing a registry client: %s", exc)
