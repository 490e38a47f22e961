"""The mount facing a hostile repository: what it shows, what it signs, and that it lives on.

One mount (Alice's) per backend, shared by the module; Bob is the sender Alice
trusts, Mallory nobody trusts, Carol is trusted later. Forged messages are pushed
with the real registry client (tests/forge.py); manifests no registry would take
are planted in the storage (tests/hostile_manifests.py). The test that leaves
manifests which break parsers behind runs last.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.receipts import send_receipt
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.garbage import GarbageCollector, GcReport
from dockercomms.core.paths import resolve_paths
from dockercomms.core.untrusted import shown
from dockercomms.fsmount.mount import collect_garbage_periodically
from tests.conftest import make_party
from tests.forge import Forge, compress, honest_layer, regular, tar_bytes
from tests.fsmount_fixtures import (
    Identity,
    Mount,
    make_identities,
    mounted,
    scratch_root,
    trust,
    wait_for,
)
from tests.hostile_manifests import deep_manifest, inbox_tag, plant

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
MALLORY = "mallory@example.com"
ATTR = "user.dockercomms."

#: A claimed sender that, printed raw, forges a "verified" row and clears the screen.
FORGED_SENDER = (
    "bob@example.com\n2026-01-01T00:00:00Z  verified  1234  boss@example.com  pay-now.pdf"
    "\x1b[2J\x1b]0;owned\x07"
)


@dataclass
class World:
    """Alice's mount and everyone's identity, on one backend."""

    root: Path
    people: dict[str, Identity]
    alice: Mount

    def client(self, name: str) -> RegistryClient:
        """A registry client of ``name``'s (close it)."""
        return self.people[name].workspace().client()

    def forge(self, client: RegistryClient, signer_name: str, claimed_sender: str) -> Forge:
        """Pushes messages signed by ``signer_name`` that claim ``claimed_sender``."""
        return Forge(client, self.people[signer_name].workspace().signer(), claimed_sender)

    def work(self, name: str) -> Path:
        """A scratch folder outside the mount."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture(scope="module", params=["embedded", "distribution"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="hostile-mount-", dir=scratch_root()))
    try:
        people = make_identities(root, [ALICE, BOB, CAROL, MALLORY], data_home=root / "xdg-data")
        if request.param == "distribution":
            server = request.getfixturevalue("registry_server")
            repo = f"{server.host}/hostile/{uuid.uuid4().hex[:10]}"
            for identity in people.values():
                paths = resolve_paths(identity.env)
                save_settings(paths, dataclasses.replace(load_settings(paths), repository=repo))
        trust(people[ALICE], people[BOB])
        trust(people[BOB], people[ALICE])
        with mounted(people[ALICE], root / "mnt-alice", "--to", BOB) as alice:
            yield World(root, people, alice)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def xattr(path: Path, key: str) -> str | None:
    """``user.dockercomms.<key>`` of ``path``, or None."""
    try:
        return os.getxattr(path, ATTR + key).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def arrives(mount: Mount, relative: str) -> Path:
    """Wait until ``relative`` is listed in ``mount`` (polling the inbox each time)."""
    path = mount / relative
    wait_for(f"{relative} in the mount", path.exists, poke=mount.refresh)
    return path


def push(
    forge: Forge,
    recipient: str,
    data: bytes = b"forged payload\n",
    *,
    signed: bool = True,
    layer_blobs: list[bytes] | None = None,
    **overrides: str,
) -> tuple[str, str]:
    """A one-chunk message, signed by the forge's signer or not at all; (tag, digest)."""
    blobs = layer_blobs if layer_blobs is not None else [honest_layer(data, 0, "zstd")]
    layers = [forge.layer(blob, index) for index, blob in enumerate(blobs)]
    raw = m.build_message(forge.annotations(recipient, len(data), **overrides), layers)
    tag = inbox_tag(recipient)
    if signed:
        return tag, forge.push(raw, recipient, tag=tag)
    forge.client.push_manifest(raw, tag)
    return tag, p.sha256_digest(raw)


def receipts_for(client: RegistryClient, digest: str) -> list[m.Receipt]:
    """Every receipt tagged for the message ``digest`` (signatures not checked)."""
    found = []
    for tag in client.list_tags(f"receipt-{digest.split(':', 1)[1][:12]}-"):
        raw, receipt_digest = client.fetch_manifest(tag)
        found.append(m.parse_receipt(raw, receipt_digest))
    return found


# --- #13.12: untrusted text is shown escaped ---------------------------------------------


def test_a_claimed_sender_is_shown_escaped_wherever_it_appears(world: World) -> None:
    with world.client(MALLORY) as client:
        tag, _ = push(world.forge(client, MALLORY, FORGED_SENDER), ALICE)
    rejected = arrives(world.alice, f"inbox/.rejected/{tag}")

    text = rejected.read_text()
    assert f"claimed sender: {shown(FORGED_SENDER)}\n" in text
    assert "\x1b" not in text and "\n2026-01-01" not in text
    assert xattr(rejected, "claimed_sender") == shown(FORGED_SENDER)
    assert xattr(rejected, "verified") == "false"
    assert "UntrustedSignerError" in (xattr(rejected, "error") or "")

    listing = world.people[ALICE].cli("ls")
    assert "\x1b" not in listing and "\x07" not in listing
    rows = [line for line in listing.splitlines() if "owned" in line or "pay-now" in line]
    assert len(rows) == 1 and rows[0].startswith("REJECTED"), listing

    log = world.alice.log()
    assert "\x1b" not in log and "\n2026-01-01" not in log


# --- #13.13 / #13.14: receipts answer verified messages only ------------------------------


def test_forgeries_get_no_receipt_and_a_corrupt_verified_message_one(world: World) -> None:
    forged: list[tuple[str, str]] = []
    with world.client(MALLORY) as client:
        unsigned = world.forge(client, MALLORY, BOB)
        forged += [push(unsigned, ALICE, signed=False) for _ in range(23)]
        forged.append(push(world.forge(client, MALLORY, BOB), ALICE))  # untrusted signer
    with world.client(BOB) as client:
        forged.append(push(world.forge(client, BOB, CAROL), ALICE))  # trusted, other name
        evil_entry = "chunk_0.bin\x1b[2J\nreason: all fine"
        _, corrupt = push(
            world.forge(client, BOB, BOB),
            ALICE,
            b"abc",
            layer_blobs=[compress(tar_bytes([regular(evil_entry, b"abc")], [b"abc"]), "zstd")],
            **{p.A_FILENAME: "corrupt.bin"},
        )
    for tag, _ in forged:
        arrives(world.alice, f"inbox/.rejected/{tag}")
    received = arrives(world.alice, f"inbox/{BOB}/corrupt.bin")

    with pytest.raises(OSError) as caught:
        received.read_bytes()
    assert caught.value.errno == errno.EIO
    error = xattr(received, "error") or ""
    assert "ChunkError" in error and "\x1b" not in error and "\n" not in error

    with world.client(ALICE) as client:
        # Receipts go out in the order they were asked for (one FIFO limiter), so
        # once the corrupt message's receipt is there, any for the forgeries had begun.
        answer = wait_for("the corrupt message's receipt", lambda: receipts_for(client, corrupt))
        assert [r.status for r in answer] == ["rejected"]
        assert "\x1b" not in (answer[0].reason or "") and "\n" not in (answer[0].reason or "")
        signed_for_forgeries = [r for _, d in forged for r in receipts_for(client, d)]
    assert signed_for_forgeries == []


def test_a_message_from_before_trust_is_accepted_once_trusted(world: World) -> None:
    carol = world.people[CAROL]
    source = world.work("early") / "early.txt"
    source.write_bytes(b"sent before you knew me\n")
    sent = carol.send(source, ALICE)
    arrives(world.alice, f"inbox/.rejected/{sent.tag}")

    trust(world.people[ALICE], carol)
    received = arrives(world.alice, f"inbox/{CAROL}/early.txt")
    assert received.read_bytes() == b"sent before you knew me\n"

    answer = wait_for("Alice's receipt", lambda: xattr(received, "receipt"))
    assert answer.startswith("accepted sha256:"), answer
    with world.client(ALICE) as client:
        assert [r.status for r in receipts_for(client, sent.digest)] == ["accepted"]


# --- #16.9: a repeated condition is logged once --------------------------------------------


def syncer_polls(mount: Mount, count: int) -> None:
    """Wait until the mount's syncer finished ``count`` more polls (second resolution)."""
    seen: list[str] = []

    def moved() -> bool:
        at = mount.status()["outbox"]["inbox"]["last_poll_at"]
        if at and (not seen or seen[-1] != at):
            seen.append(at)
        return len(seen) > count

    wait_for(f"{count} more syncer polls", moved)


@pytest.mark.slow
def test_an_ignored_receipt_is_logged_once(world: World) -> None:
    (world.alice / "outbox/answer-me.txt").write_bytes(b"please answer\n")
    sent = world.alice / f"sent/{BOB}/answer-me.txt"
    wait_for("the message sent", lambda: sent.exists() and xattr(sent, "state") == "sent")
    digest = xattr(sent, "digest")
    assert digest is not None
    with world.client(MALLORY) as client:
        message = world.people[BOB].workspace().receiver(client).fetch_message(digest)
        mallory = world.people[MALLORY].workspace().signer()
        forged = send_receipt(
            client, mallory, me=BOB, message=message, status="accepted", verified=True
        )

    line = f"ignoring receipt {forged.digest[:19]}"
    wait_for("the ignored receipt in the log", lambda: line in world.alice.log())
    syncer_polls(world.alice, 3)

    assert world.alice.log().count(line) == 1
    assert xattr(sent, "receipt") is None


# --- #13.2: one hostile manifest does not stop the mount (runs last) -----------------------


def test_manifests_that_break_parsers_do_not_stop_the_mount(world: World) -> None:
    alice = world.alice
    alice.allowed_errors += ["unexpectedly", "Traceback (most recent call last)"]
    with world.client(MALLORY) as client:
        deep = inbox_tag(ALICE)
        plant(client, deep_manifest(), deep)
    with world.client(BOB) as client:
        endless, _ = push(world.forge(client, BOB, BOB), ALICE, **{p.A_TTL: "1" * 20})
    source = world.work("storm") / "after-the-storm.txt"
    source.write_bytes(b"still here\n")
    world.people[BOB].send(source, ALICE)

    assert arrives(alice, f"inbox/{BOB}/after-the-storm.txt").read_bytes() == b"still here\n"
    arrives(alice, f"inbox/.rejected/{deep}")
    arrives(alice, f"inbox/.rejected/{endless}")
    polls = alice.status()["inbox"]["last_poll"]["polls"]
    wait_for(
        "three more inbox polls",
        lambda: alice.status()["inbox"]["last_poll"]["polls"] >= polls + 3,
        poke=alice.refresh,
    )

    assert alice.process.poll() is None
    lines = alice.log().splitlines()
    # Each traceback follows the line that says what failed unexpectedly: once per input.
    blamed = [lines[n - 1] for n, line in enumerate(lines) if line.startswith("Traceback")]
    assert all("unexpectedly" in line for line in blamed), blamed
    for tag in (deep, endless):
        assert sum(1 for line in blamed if tag in line) <= 1, blamed


class CountedCollector(GarbageCollector):
    """The real collector, saying when each round (good or bad) is over."""

    rounds = 0
    finished: trio.Event

    def run_once(self, *, dry_run: bool = False) -> GcReport:
        try:
            return super().run_once(dry_run=dry_run)
        finally:
            self.rounds += 1
            trio.from_thread.run_sync(self.finished.set)


def test_the_hourly_gc_survives_a_manifest_that_breaks_it(tmp_path: Path) -> None:
    alice = make_party(tmp_path, ALICE, f"oci-layout:{tmp_path / 'layout'}")
    with alice.workspace().client() as client:
        plant(client, deep_manifest(), inbox_tag(ALICE))
    collector = CountedCollector(alice.workspace())

    async def two_rounds() -> None:
        collector.finished = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_garbage_periodically, collector)
            while collector.rounds < 2:
                await collector.finished.wait()
                collector.finished = trio.Event()
            nursery.cancel_scope.cancel()

    trio.run(two_rounds, clock=trio.testing.MockClock(autojump_threshold=0))
    assert collector.rounds == 2
