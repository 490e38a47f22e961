"""One client pool: a registry client per thread, closed when its thread ends or the pool closes."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import parse_repository
from dockercomms.core.clients import ClientPool
from dockercomms.core.errors import RegistryUnavailableError


class CountedClient(RegistryClient):
    """A real client on the embedded store that says when it is closed."""

    closed: list[CountedClient]

    def close(self) -> None:
        self.closed.append(self)
        super().close()


def pool_on(tmp_path: Path) -> tuple[ClientPool, list[CountedClient]]:
    ref = parse_repository(f"oci-layout:{tmp_path / 'layout'}")
    closed: list[CountedClient] = []

    def new_client() -> RegistryClient:
        client = CountedClient(ref)
        client.closed = closed
        return client

    return ClientPool(new_client, lambda: ref), closed


def test_each_thread_has_its_own_client_and_keeps_it(tmp_path: Path) -> None:
    pool, closed = pool_on(tmp_path)
    mine = pool.client()
    assert pool.client() is mine
    seen: list[RegistryClient] = []
    thread = threading.Thread(target=lambda: seen.extend([pool.client(), pool.client()]))
    thread.start()
    thread.join()
    assert seen[0] is seen[1] and seen[0] is not mine
    del thread
    gc.collect()
    assert closed == [seen[0]], "the ended thread's client is closed"
    pool.close()
    assert closed == [seen[0], mine]
    with pytest.raises(RegistryUnavailableError):
        pool.client()


def test_map_runs_on_threads_with_their_own_clients_in_order(tmp_path: Path) -> None:
    pool, closed = pool_on(tmp_path)
    with pool:
        results = pool.map(lambda n: (n, id(pool.client())), range(20), workers=3)
        assert [n for n, _ in results] == list(range(20))
        assert 1 <= len({client for _, client in results}) <= 3
        renewed = pool.client()
        pool.renew()
        assert pool.client() is not renewed and renewed in closed
