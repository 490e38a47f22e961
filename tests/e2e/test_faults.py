"""Faults between the CLI and a real distribution server, injected by the fault proxy.

For each fault, ``send`` and ``recv`` either succeed after a retry or fail with the
right exit code, and a failure leaves nothing half-done behind: no inbox tag without a
verifying signature, no file (not even a ``.part``) in the output folder. A failed
``recv`` is then run again without the fault and must deliver the file.

The read timeout is 2 s here (``DOCKERCOMMS_READ_TIMEOUT``) so stalls cost little.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3.util.connection

from dockercomms.core import protocol as p
from tests.conftest import Party, introduce, make_party
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.registry_server import RegistryServer, running_registry

CHUNK = 64 * 1024
CHUNKS = 4
READ_TIMEOUT = 2
TIMEOUT = 10


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("faults")) as server:
        yield server


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as fault_proxy:
        yield fault_proxy
    assert fault_proxy.errors == []


@pytest.fixture(autouse=True)
def short_read_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKERCOMMS_READ_TIMEOUT", str(READ_TIMEOUT))
    empty = tmp_path / "empty-docker-config"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))


@dataclass
class World:
    """Two parties talking through the proxy, and a way around it to check results."""

    alice: Party
    bob: Party
    name: str
    registry: RegistryServer
    proxy: FaultProxy
    source: Path
    out: Path

    def send(self) -> tuple[int, str]:
        result = self.alice.cli(
            "send", str(self.source), "--recipient", "bob", "--chunk-bytes", str(CHUNK)
        )
        return result.code, result.err

    def recv(self) -> tuple[int, str]:
        result = self.bob.cli("recv", "--out", str(self.out), "--json")
        return result.code, result.out + result.err

    def direct(self, *args: str) -> str:
        """Run a bob command against the registry itself, bypassing the proxy."""
        return self.bob.ok(*args, "--repo", f"{self.registry.host}/{self.name}")

    def inbox(self) -> list[dict[str, object]]:
        """bob's inbox as ``ls`` shows it, read from the registry itself."""
        url = f"{self.registry.url}/v2/{self.name}/tags/list"
        with requests.get(url, timeout=TIMEOUT) as resp:
            if resp.status_code == 404:  # nothing was ever tagged in this repository
                return []
            resp.raise_for_status()
        rows: list[dict[str, object]] = json.loads(self.direct("ls", "--json"))
        return rows

    def manifest(self, reference: str) -> dict[str, object]:
        url = f"{self.registry.url}/v2/{self.name}/manifests/{reference}"
        with requests.get(url, headers={"Accept": p.OCI_MANIFEST}, timeout=TIMEOUT) as resp:
            resp.raise_for_status()
            doc: dict[str, object] = resp.json()
            return doc

    def chunk_digest(self, index: int) -> str:
        """Digest of chunk ``index`` of the one message in bob's inbox."""
        (row,) = self.inbox()
        layers = self.manifest(str(row["digest"]))["layers"]
        assert isinstance(layers, list)
        digest: str = layers[index]["digest"]
        return digest


@pytest.fixture
def world(tmp_path: Path, registry: RegistryServer, proxy: FaultProxy) -> World:
    name = f"tests/{uuid.uuid4().hex[:12]}"
    alice = make_party(tmp_path, "alice@example.com", f"{proxy.host}/{name}")
    bob = make_party(tmp_path, "bob", f"{proxy.host}/{name}")
    introduce(alice, bob)
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(CHUNKS * CHUNK - 1000))
    return World(alice, bob, name, registry, proxy, source, tmp_path / "out")


def assert_nothing_partial(world: World) -> None:
    """Every inbox tag verifies; the output folder holds only complete files."""
    for row in world.inbox():
        assert row.get("verified") is True, row
    if world.out.exists():
        names = os.listdir(world.out)
        assert all(not n.startswith(".") and not n.endswith(".part") for n in names), names
        for name in names:
            assert (world.out / name).read_bytes() == world.source.read_bytes()


def assert_received(world: World) -> None:
    assert os.listdir(world.out) == [world.source.name]
    assert (world.out / world.source.name).read_bytes() == world.source.read_bytes()


Arm = Callable[[World], Fault]


@dataclass(frozen=True)
class Case:
    """One fault: what to arm before ``send`` and before ``recv``, and what must happen.

    Attributes:
        send_fault: armed before ``send`` (None: a clean send).
        recv_fault: armed before ``recv`` (None: a clean recv).
        recv_code: 0 if ``recv`` must succeed despite the fault, else the exit code of
            the failed attempt (which is then repeated without the fault).
        min_seconds: the least each faulted command must take (``Retry-After``).
    """

    send_fault: Arm | None
    recv_fault: Arm | None
    recv_code: int = 0
    min_seconds: float = 0.0


CASES = {
    "http-500": Case(
        lambda w: w.proxy.fail(500, method="POST", path=r"/blobs/uploads/", times=2),
        lambda w: w.proxy.fail(500, method="GET", path=r"/tags/list", times=2),
    ),
    "http-503": Case(
        lambda w: w.proxy.fail(503, method="PUT", path=r"/manifests/inbox-"),
        lambda w: w.proxy.fail(503, method="GET", path=r"/manifests/inbox-"),
    ),
    "http-429-retry-after": Case(
        lambda w: w.proxy.fail(429, retry_after=1, method="HEAD", path=r"/blobs/"),
        lambda w: w.proxy.fail(429, retry_after=1, method="GET", path=r"/blobs/"),
        min_seconds=1.0,
    ),
    "drop-upload-patch": Case(
        lambda w: w.proxy.drop_mid_body(16 * 1024, method="PATCH"),
        None,
    ),
    "drop-blob-get": Case(
        None,
        lambda w: w.proxy.drop_mid_body(
            1000, method="GET", path=f"/blobs/{w.chunk_digest(1)}", phase="response"
        ),
    ),
    "stall-past-read-timeout": Case(
        lambda w: w.proxy.stall(3 * READ_TIMEOUT, method="HEAD", path=r"/blobs/"),
        lambda w: w.proxy.stall(3 * READ_TIMEOUT, method="GET", path=r"/tags/list"),
    ),
    "truncate-manifest-get": Case(
        lambda w: w.proxy.truncate(10, method="GET", path=r"/manifests/"),
        lambda w: w.proxy.truncate(10, method="GET", path=r"/manifests/inbox-"),
    ),
    "truncate-blob-get": Case(
        None,
        lambda w: w.proxy.truncate(100, method="GET", path=f"/blobs/{w.chunk_digest(0)}"),
    ),
    "truncate-blob-get-every-time": Case(
        None,
        lambda w: w.proxy.truncate(
            100, method="GET", path=f"/blobs/{w.chunk_digest(0)}", times=None
        ),
        recv_code=1,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_send_and_recv_survive_or_fail_cleanly(world: World, case: Case) -> None:
    if case.send_fault is not None:
        fault = case.send_fault(world)
    started = time.monotonic()
    code, err = world.send()
    assert code == 0, err
    assert time.monotonic() - started >= case.min_seconds
    if case.send_fault is not None:
        assert fault.hits >= 1, "the send fault never struck"
    assert_nothing_partial(world)
    assert len(world.inbox()) == 1

    world.proxy.clear()
    if case.recv_fault is not None:
        fault = case.recv_fault(world)
    started = time.monotonic()
    code, output = world.recv()
    assert code == case.recv_code, output
    assert time.monotonic() - started >= case.min_seconds
    if case.recv_fault is not None:
        assert fault.hits >= 1, "the recv fault never struck"
    assert_nothing_partial(world)
    if code != 0:
        assert not world.out.exists() or os.listdir(world.out) == []
        world.proxy.clear()
        code, output = world.recv()
        assert code == 0, output
    assert_received(world)


def test_a_failed_chunk_is_restarted_alone(world: World) -> None:
    """One PATCH dropped mid-body: only that chunk is uploaded again (chunks + 1 PATCHes)."""
    fault = world.proxy.drop_mid_body(16 * 1024, method="PATCH")
    code, err = world.send()
    assert code == 0, err
    assert fault.hits == 1
    patches = [s for s in world.proxy.requests_seen if s.method == "PATCH"]
    assert len(patches) == CHUNKS + 1
    assert [s.status for s in patches].count(None) == 1
    assert all(s.status == 202 for s in patches if s.status is not None)


def test_persistent_upload_failure_fails_without_tagging(world: World) -> None:
    world.proxy.drop_mid_body(16 * 1024, method="PATCH", times=None)
    code, err = world.send()
    assert code == 1, err
    assert f"the registry at 127.0.0.1 port {world.proxy.host.rsplit(':')[1]}" in err
    assert "reset the connection" in err or "broke off" in err
    assert world.inbox() == []


@pytest.mark.slow
def test_persistent_tagging_failure_leaves_no_inbox_tag(world: World) -> None:
    world.proxy.fail(503, method="PUT", path=r"/manifests/inbox-", times=None)
    started = time.monotonic()
    code, err = world.send()
    assert code == 1, err
    assert "503" in err
    assert time.monotonic() - started < 30
    assert world.inbox() == []
    world.proxy.clear()
    code, output = world.recv()
    assert code == 0 and json.loads(output) == []
    assert not world.out.exists() or os.listdir(world.out) == []


DEAD_REGISTRY_COMMANDS = {
    "ls": ("ls",),
    "recv": ("recv", "--out", "{tmp}/out"),
    "verify": ("verify", "--digest", "sha256:" + "0" * 64),
    "gc": ("gc",),
    "send": ("send", "{tmp}/small.txt", "--recipient", "bob", "--plaintext"),
}


@pytest.mark.parametrize(
    "command", list(DEAD_REGISTRY_COMMANDS.values()), ids=list(DEAD_REGISTRY_COMMANDS)
)
def test_a_dead_registry_fails_at_once_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """Connection refused before the registry ever answered: one attempt, one sentence."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on ``port`` any more: every connection is refused.
    alice = make_party(tmp_path, "alice@example.com", f"127.0.0.1:{port}/x/y")
    (tmp_path / "small.txt").write_text("hello")
    connects: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def counted(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        connects.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counted)
    started = time.monotonic()
    result = alice.cli(*(arg.format(tmp=tmp_path) for arg in command))
    assert time.monotonic() - started < TIMEOUT  # a guard against hangs, not a measurement
    assert result.code == 1, result.err
    (line,) = result.err.splitlines()
    assert line.startswith("dockercomms: error: "), line
    assert line.endswith(
        f": the registry at 127.0.0.1 port {port} refused the connection (tried once)"
    ), line
    assert "HTTPConnectionPool" not in line and "Max retries" not in line
    assert connects == [("127.0.0.1", port)]
