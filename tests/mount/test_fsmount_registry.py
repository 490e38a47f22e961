"""The mount against a real distribution server: drop -> verified inbox, and kill -9.

Two identities, two mounts, one repository on Debian's ``docker-registry``. The
daemon of the sender is SIGKILLed in the middle of an upload and started again:
the recipient must see the file exactly once, same message id, same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockercomms.core._internal.listing import BATCH
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.paths import resolve_paths
from dockercomms.fsmount.inbox_view import SCAN_WORKERS
from dockercomms.syncer.queue import PushQueue
from tests.fsmount_fixtures import (
    Identity,
    make_identities,
    mounted,
    scratch_root,
    seed_inbox,
    seeded_content,
    trust,
    unmount_quietly,
    wait_for,
)
from tests.servers.registry_server import RegistryServer

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture
def pair(registry_server: RegistryServer) -> Iterator[tuple[Path, Identity, Identity]]:
    root = Path(tempfile.mkdtemp(prefix="fsmount-reg-", dir=scratch_root()))
    try:
        people = make_identities(root, [ALICE, BOB], data_home=root / "xdg-data")
        alice, bob = people[ALICE], people[BOB]
        repo = f"{registry_server.host}/fsmount/{uuid.uuid4().hex[:10]}"
        for identity in (alice, bob):
            paths = resolve_paths(identity.env)
            settings = dataclasses.replace(load_settings(paths), repository=repo)
            save_settings(paths, settings)
        trust(alice, bob)
        trust(bob, alice)
        yield root, alice, bob
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def inbox_entries(bob: Identity, filename: str) -> list[dict[str, object]]:
    rows = json.loads(bob.cli("ls", "--json"))
    return [r for r in rows if r.get("filename") == filename]


@pytest.mark.slow
def test_cp_into_outbox_arrives_on_the_registry_server(
    pair: tuple[Path, Identity, Identity],
) -> None:
    root, alice, bob = pair
    source = root / "report.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    alice.set_chunk_bytes(512 * 1024)
    with (
        mounted(alice, root / "mnt-alice", "--to", BOB) as alice_mount,
        mounted(bob, root / "mnt-bob") as bob_mount,
    ):
        subprocess.run(["cp", str(source), str(alice_mount / "outbox")], check=True)
        received = bob_mount / f"inbox/{ALICE}/report.bin"
        wait_for("the file in bob's inbox", received.exists, timeout=60, poke=bob_mount.refresh)
        assert subprocess.run(["cmp", str(source), str(received)]).returncode == 0


@pytest.mark.slow
def test_kill_9_mid_upload_then_restart_sends_exactly_once(
    pair: tuple[Path, Identity, Identity],
) -> None:
    root, alice, bob = pair
    alice.set_chunk_bytes(64 * 1024)  # many chunks: the upload takes long enough to hit
    source = root / "big.bin"
    source.write_bytes(os.urandom(24 * 1024 * 1024))
    state = resolve_paths(alice.env).state_dir
    mountpoint = root / "mnt-alice"
    with mounted(alice, mountpoint, "--to", BOB) as alice_mount:
        subprocess.run(["cp", str(source), str(alice_mount / "outbox")], check=True)
        with PushQueue(state / "queue.db", state / "queue") as queue:

            def some_chunks_uploaded() -> bool:
                items = queue.items()
                return bool(items) and len(queue.known_chunks(items[0].id)) >= 8

            wait_for("chunks to upload", some_chunks_uploaded, timeout=60)
            items = queue.items()
            assert items[0].state.value == "uploading"
            message_id = items[0].message_id
        os.kill(alice_mount.process.pid, signal.SIGKILL)
        alice_mount.process.wait(timeout=10)
    unmount_quietly(mountpoint)
    assert inbox_entries(bob, "big.bin") == []  # nothing is visible half-sent

    with mounted(alice, mountpoint, "--to", BOB):
        wait_for("the resent message", lambda: inbox_entries(bob, "big.bin"), timeout=120)
        with PushQueue(state / "queue.db", state / "queue") as queue:
            wait_for("sent state", lambda: queue.items()[0].state.value == "sent", timeout=60)
            assert [i.message_id for i in queue.items()] == [message_id]
    entries = inbox_entries(bob, "big.bin")
    assert [e["message_id"] for e in entries] == [message_id]
    out = root / "out"
    bob.cli("recv", "--out", str(out))
    assert (out / "big.bin").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]


def test_a_first_listing_checks_many_new_messages_in_parallel_batches(
    pair: tuple[Path, Identity, Identity],
) -> None:
    """More tags than SCAN_WORKERS x BATCH: every batch lands, in order, once."""
    root, alice, bob = pair
    count = SCAN_WORKERS * BATCH + 17
    seeded = seed_inbox(alice, bob.name, count)

    with mounted(bob, root / "mnt-bob", "--no-receipts") as mount:
        folder = mount / f"inbox/{ALICE}"
        listed = {path.name: path.stat().st_size for path in folder.iterdir()}
        assert listed == {message.filename: message.size for message in seeded}
        assert mount.status()["inbox"]["rejected"] == 0
        sample = seeded[count // 2]
        assert (folder / sample.filename).read_bytes() == seeded_content(sample.size)
