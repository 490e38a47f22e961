"""The filesystem on real FUSE mounts: two identities, two daemons, one embedded registry.

Everything here goes through the kernel (``cp``, ``cat``, ``cmp``, ``getfattr``,
``ls -l``, plain ``os`` calls on the mount point); nothing calls the Operations
class directly. Mounts are stopped by PID and unmounted in ``finally`` by
:func:`tests.fsmount_fixtures.mounted`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import filelock
import pytest
import trio

from dockercomms.core._internal.send import SendRequest
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.paths import resolve_paths
from dockercomms.fsmount.sdnotify import read_mount_status
from tests.fsmount_fixtures import (
    Identity,
    Mount,
    background_mount,
    is_stale,
    make_identities,
    mounted,
    scratch_root,
    seed_inbox,
    seeded_content,
    trust,
    unmount_quietly,
    wait_for,
)

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
MALLORY = "mallory@example.com"
ATTR = "user.dockercomms."


@dataclass
class World:
    """Alice and Bob mounted (each sending to the other by default), plus two senders."""

    root: Path
    people: dict[str, Identity]
    alice: Mount
    bob: Mount

    def work(self, name: str) -> Path:
        """A scratch folder outside the mounts."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder on tmpfs (see fsmount_fixtures), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fsmount-", dir=scratch_root()))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def world(scratch: Path) -> Iterator[World]:
    people = make_identities(scratch, [ALICE, BOB, CAROL, MALLORY], data_home=scratch / "xdg-data")
    alice, bob, carol = people[ALICE], people[BOB], people[CAROL]
    trust(alice, bob)
    trust(bob, alice, carol)
    alice.set_chunk_bytes(256 * 1024)
    carol.set_chunk_bytes(64 * 1024)
    with (
        mounted(alice, scratch / "mnt-alice", "--to", BOB) as alice_mount,
        mounted(bob, scratch / "mnt-bob", "--to", ALICE) as bob_mount,
    ):
        yield World(scratch, people, alice_mount, bob_mount)


def xattr(path: Path, key: str) -> str | None:
    """``user.dockercomms.<key>`` of ``path``, or None when it has none."""
    try:
        return os.getxattr(path, ATTR + key).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def arrives(mount: Mount, relative: str, *, timeout: float = 60.0) -> Path:
    """Wait until ``relative`` shows up in ``mount`` (polling the inbox each time)."""
    path = mount / relative
    wait_for(
        f"{relative} in {mount.identity.name}'s mount",
        path.exists,
        timeout=timeout,
        poke=mount.refresh,
    )
    return path


def fails_with(number: int, action: Callable[[], Any]) -> None:
    """``action`` raises ``OSError`` with exactly ``number``."""
    with pytest.raises(OSError) as caught:
        action()
    assert caught.value.errno == number, f"expected {errno.errorcode[number]}, got {caught.value}"


WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def open_fails(number: int, path: Path, flags: int) -> None:
    """``open(path, flags)`` fails with exactly ``number``."""
    fails_with(number, lambda: os.close(os.open(path, flags, 0o644)))


def layer_digests(identity: Identity, manifest_digest: str) -> list[str]:
    """The chunk layer digests of a message, read from the registry's layout."""
    raw = (identity.layout / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_bytes()
    return [layer["digest"] for layer in json.loads(raw)["layers"]]


def tamper(identity: Identity, blob_digest: str) -> None:
    """Flip one byte of a stored blob, as a compromised registry would."""
    path = identity.layout / "blobs" / "sha256" / blob_digest.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


# --- outbox -> inbox ------------------------------------------------------------------


@pytest.mark.slow
def test_cp_into_outbox_arrives_verified_and_equal(world: World) -> None:
    source = world.work("cp") / "photo.bin"
    data = os.urandom(3 * 1024 * 1024 + 123)  # 13 chunks of 256 KiB
    source.write_bytes(data)

    subprocess.run(["cp", str(source), str(world.alice / "outbox")], check=True)
    received = arrives(world.bob, f"inbox/{ALICE}/photo.bin")

    assert received.stat().st_size == len(data)
    assert subprocess.run(["cmp", str(source), str(received)]).returncode == 0
    sent = world.alice / f"sent/{BOB}/photo.bin"
    assert xattr(sent, "state") == "sent"
    assert xattr(sent, "digest") == xattr(received, "digest")
    wait_for("the accepted receipt", lambda: xattr(sent, "receipt") == "accepted", timeout=30)
    assert xattr(received, "state") == "read"
    assert not (world.alice / "outbox/photo.bin").exists()


def test_read_is_lazy_and_per_chunk(world: World) -> None:
    source = world.work("lazy") / "large.bin"
    source.write_bytes(os.urandom(16 * 256 * 1024))  # 16 chunks
    subprocess.run(["cp", str(source), str(world.alice / "outbox")], check=True)
    received = arrives(world.bob, f"inbox/{ALICE}/large.bin")
    before = world.bob.status()["cache"]["entries"]

    with open(received, "rb") as handle:
        first = handle.read(4096)
        time.sleep(0.5)  # let the two-chunk prefetch land, so the count is stable
        partway = world.bob.status()["cache"]["entries"]
        rest = handle.read()

    assert first + rest == source.read_bytes()
    assert partway - before <= 3, "open + first read fetched more than chunks 0, 1 and 2"
    assert world.bob.status()["cache"]["entries"] - before == 16


@pytest.mark.slow
def test_rename_into_outbox_sends_and_temp_names_do_not(world: World) -> None:
    folder = world.alice / f"outbox/{BOB}"
    folder.mkdir()
    (folder / ".report.txt.part").write_bytes(b"quarterly numbers\n")
    (world.alice / "outbox/draft.txt~").write_bytes(b"backup")
    (world.alice / "outbox/.draft.txt.swp").write_bytes(b"swap")
    (world.alice / "outbox/download.crdownload").write_bytes(b"half")
    time.sleep(2)  # four settle times: a temp name would have been taken by now
    assert (folder / ".report.txt.part").exists()

    os.rename(folder / ".report.txt.part", folder / "report.txt")
    received = arrives(world.bob, f"inbox/{ALICE}/report.txt")

    assert received.read_bytes() == b"quarterly numbers\n"
    for name in ("draft.txt~", ".draft.txt.swp", "download.crdownload"):
        assert (world.alice / "outbox" / name).exists(), f"{name} was taken for sending"
        assert not (world.bob / f"inbox/{ALICE}/{name}").exists()
        (world.alice / "outbox" / name).unlink()
    folder.rmdir()


@pytest.mark.slow
def test_fsync_sends_once_and_close_does_not_resend(world: World) -> None:
    fd = os.open(world.alice / "outbox/synced.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"version one\n")
        os.fsync(fd)
        received = arrives(world.bob, f"inbox/{ALICE}/synced.txt")  # while still open
    finally:
        os.close(fd)
    time.sleep(2)
    world.bob.refresh()

    assert received.read_bytes() == b"version one\n"
    copies = [n for n in os.listdir(world.bob / f"inbox/{ALICE}") if n.startswith("synced")]
    assert copies == ["synced.txt"]
    assert not (world.alice / "outbox/synced.txt").exists()


@pytest.mark.slow
def test_200_files_dropped_at_once(world: World) -> None:
    folder = world.work("burst")
    names = [f"burst-{i:03d}.txt" for i in range(200)]
    for i, name in enumerate(names):
        (folder / name).write_text(f"file {i}\n" * (i + 1))

    subprocess.run(
        ["cp", *[str(folder / n) for n in names], str(world.alice / "outbox")], check=True
    )
    inbox = world.bob / f"inbox/{ALICE}"
    wait_for(
        "all 200 files in Bob's inbox",
        lambda: set(names) <= set(os.listdir(inbox)),
        timeout=150,
        poke=world.bob.refresh,
    )

    for name in names:
        assert (inbox / name).read_bytes() == (folder / name).read_bytes(), name
    items = json.loads((world.alice / "sent/.status.json").read_bytes())["items"]
    burst = [i for i in items if i["filename"].startswith("burst-")]
    assert len(burst) == 200 and {i["state"] for i in burst} == {"sent"}


def test_name_collision_gets_date_and_digest_suffix(world: World) -> None:
    folder = world.work("dup")
    sent = {}
    for content in (b"first\n", b"second\n"):
        (folder / "dup").write_bytes(content)
        sent[content] = world.people[CAROL].send(folder / "dup", BOB, filename="dup.txt")

    def names() -> list[str]:
        found = os.listdir(world.bob / f"inbox/{CAROL}")
        return sorted(n for n in found if n.startswith("dup"))

    listed = wait_for("both dup.txt", lambda: len(names()) == 2 and names(), poke=world.bob.refresh)

    assert listed[1] == "dup.txt"
    holder = sent[(world.bob / f"inbox/{CAROL}/{listed[0]}").read_bytes()]
    digest8 = holder.digest.split(":")[1][:8]
    assert listed[0] == f"dup ({holder.created_at:%Y%m%d}-{digest8}).txt"
    other = next(m for m in sent.values() if m is not holder)
    assert xattr(world.bob / f"inbox/{CAROL}/dup.txt", "digest") == other.digest


# --- verify before expose ---------------------------------------------------------------


def test_tampered_chunk_cat_fails_with_zero_bytes(world: World) -> None:
    source = world.work("tamper") / "tampered.bin"
    source.write_bytes(os.urandom(100_000))
    sent = world.people[ALICE].send(source, BOB)
    tamper(world.people[ALICE], layer_digests(world.people[ALICE], sent.digest)[0])
    received = arrives(world.bob, f"inbox/{ALICE}/tampered.bin")

    cat = subprocess.run(["cat", str(received)], capture_output=True)

    assert cat.returncode != 0
    assert cat.stdout == b""
    assert b"Input/output error" in cat.stderr
    assert "DigestMismatchError" in (xattr(received, "error") or "")
    assert xattr(received, "verified") == "false"
    open_fails(errno.EIO, received, os.O_RDONLY)  # sticky for this mount
    reason = (world.bob / f"inbox/.rejected/{sent.tag}").read_text()
    assert "DigestMismatchError" in reason and sent.digest in reason


def test_tampered_later_chunk_fails_only_that_range(world: World) -> None:
    source = world.work("tamper2") / "halfbad.bin"
    data = os.urandom(4 * 64 * 1024)
    source.write_bytes(data)
    carol = world.people[CAROL]
    sent = carol.send(source, BOB)
    tamper(carol, layer_digests(carol, sent.digest)[2])
    received = arrives(world.bob, f"inbox/{CAROL}/halfbad.bin")

    fd = os.open(received, os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 0) == data[:1000]
        fails_with(errno.EIO, lambda: os.pread(fd, 1000, 2 * 64 * 1024 + 10))
        # Spanning reads stop short of the bad chunk: the kernel returns what earlier
        # requests verified, and no byte of chunk 2 ever.
        spanning = os.pread(fd, 2 * 64 * 1024, 64 * 1024)
        assert len(spanning) <= 64 * 1024
        assert spanning == data[64 * 1024 : 64 * 1024 + len(spanning)]
    finally:
        os.close(fd)


def test_untrusted_sender_is_only_listed_as_rejected(world: World) -> None:
    source = world.work("mallory") / "invoice.pdf"
    source.write_bytes(b"%PDF-1.7 pay me\n")
    sent = world.people[MALLORY].send(source, BOB)
    rejected = arrives(world.bob, f"inbox/.rejected/{sent.tag}")

    assert "UntrustedSignerError" in rejected.read_text()
    assert not (world.bob / f"inbox/{MALLORY}").exists()


def test_open_reverifies_trust_policy_eacces(world: World) -> None:
    source = world.work("revoke") / "memo.txt"
    source.write_bytes(b"still trusted?\n")
    carol, bob = world.people[CAROL], world.people[BOB]
    carol.send(source, BOB)
    received = arrives(world.bob, f"inbox/{CAROL}/memo.txt")

    bob.cli("trust", "remove", CAROL)
    try:
        cat = subprocess.run(["cat", str(received)], capture_output=True)
        assert cat.returncode != 0 and cat.stdout == b""
        assert b"Permission denied" in cat.stderr
        assert "UntrustedSignerError" in (xattr(received, "error") or "")
    finally:
        trust(bob, carol)
    assert received.read_bytes() == b"still trusted?\n"  # a policy failure is not sticky


def test_chunk_cache_rehashes_on_read_and_keeps_its_cap(world: World) -> None:
    grace = make_identities(world.root, ["grace@example.com"], data_home=world.root / "xdg-data")[
        "grace@example.com"
    ]
    trust(grace, world.people[ALICE])
    data = os.urandom(4 * 256 * 1024)  # four of Alice's 256 KiB chunks
    (world.work("cache") / "cached.bin").write_bytes(data)
    world.people[ALICE].send(world.work("cache") / "cached.bin", grace.name)
    mountpoint = world.root / "mnt-grace"
    cap = 600_000

    with mounted(grace, mountpoint, "--cache-bytes", str(cap)) as mount:
        assert arrives(mount, f"inbox/{ALICE}/cached.bin").read_bytes() == data
        cache = mount.status()["cache"]
        assert cache["bytes"] <= cap and cache["evictions"] >= 2

    cached = sorted((grace.home / "cache" / "chunks").glob("*.bin"))
    assert cached, "nothing left in the cache to corrupt"
    with open(cached[0], "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))

    with mounted(grace, mountpoint) as mount:  # default cap: the bad entry is not evicted
        assert arrives(mount, f"inbox/{ALICE}/cached.bin").read_bytes() == data
        assert mount.status()["cache"]["corruptions"] == 1  # dropped and fetched again
    assert "block 0 hash mismatch" in mount.log()


# --- attributes and control ---------------------------------------------------------------


def getfattr_dump(path: Path) -> dict[str, str]:
    """``getfattr -d -m -`` parsed into ``{name: value}``."""
    out = subprocess.run(
        ["getfattr", "-d", "-m", "-", "--absolute-names", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value.strip('"')
    return values


def test_getfattr_values(world: World) -> None:
    (world.alice / "outbox/facts.txt").write_bytes(b"facts\n")
    received = arrives(world.bob, f"inbox/{ALICE}/facts.txt")
    sent = world.alice / f"sent/{BOB}/facts.txt"
    before_read = getfattr_dump(received)
    assert received.read_bytes() == b"facts\n"

    inbox = getfattr_dump(received)
    outbox = getfattr_dump(sent)
    created = datetime.fromisoformat(inbox[ATTR + "created_at"].replace("Z", "+00:00"))
    assert before_read[ATTR + "state"] == "verified"
    assert inbox[ATTR + "sender"] == ALICE
    assert inbox[ATTR + "recipient"] == BOB
    assert inbox[ATTR + "digest"] == outbox[ATTR + "digest"]
    assert inbox[ATTR + "digest"].startswith("sha256:")
    assert inbox[ATTR + "verified"] == "true"
    assert inbox[ATTR + "signer_identity"] == world.people[ALICE].fingerprint()
    assert ATTR + "issuer" not in inbox  # key-signed: no OIDC issuer
    assert inbox[ATTR + "expires_at"] == (created + timedelta(days=7)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert inbox[ATTR + "state"] == "read"
    assert outbox[ATTR + "state"] == "sent"
    assert outbox[ATTR + "created_at"] == inbox[ATTR + "created_at"]
    wait_for("Bob's receipt on his copy", lambda: getfattr_dump(received).get(ATTR + "receipt"))
    assert getfattr_dump(received)[ATTR + "receipt"].startswith("accepted sha256:")
    wait_for("Alice's receipt", lambda: xattr(sent, "receipt") == "accepted", timeout=30)

    root_status = subprocess.run(
        ["getfattr", "-n", ATTR + "status", "--only-values", str(world.bob.mountpoint)],
        capture_output=True,
        check=True,
    ).stdout
    status = json.loads(root_status)
    assert status["identity"] == BOB and status["pid"] == world.bob.process.pid
    dotstatus = json.loads((world.bob / ".status").read_bytes())
    assert dotstatus["inbox"]["messages"] >= 1 and "outbox" in dotstatus
    subprocess.run(
        ["setfattr", "-n", ATTR + "refresh", "-v", "1", str(world.bob.mountpoint)], check=True
    )


def test_a_message_recv_answered_is_not_answered_again_through_the_mount(world: World) -> None:
    """One receipt store: the mount sees the receipt ``recv`` sent, and sends none of its own."""
    carol = world.people[CAROL]
    grace = make_identities(world.root, ["grace@example.com"], data_home=world.root / "xdg-data")[
        "grace@example.com"
    ]
    trust(grace, carol)
    note = world.work("one-receipt") / "answered-once.txt"
    note.write_bytes(b"answered once\n")
    sent = carol.send(note, grace.name)
    grace.cli("recv", "--out", str(world.work("grace-recv")))

    with mounted(grace, world.root / "mnt-grace") as mount:
        path = arrives(mount, f"inbox/{CAROL}/answered-once.txt")
        assert path.read_bytes() == b"answered once\n"
        wait_for("the receipt on the mount's copy", lambda: xattr(path, "receipt"))
        # The mount shows the receipt recv recorded: one store, so it has nothing to send.
        assert (xattr(path, "receipt") or "").startswith("accepted sha256:")
    with grace.workspace().client() as client:
        receipts = client.list_tags(f"receipt-{sent.digest.split(':', 1)[1][:12]}-")
    assert len(receipts) == 1, receipts


def test_refresh_by_touch(world: World) -> None:
    source = world.work("touch") / "poke.txt"
    source.write_bytes(b"poke\n")
    world.people[CAROL].send(source, BOB)
    polls = world.bob.status()["inbox"]["last_poll"]["polls"]

    subprocess.run(["touch", str(world.bob / "inbox/.refresh")], check=True)

    assert world.bob.status()["inbox"]["last_poll"]["polls"] > polls
    assert (world.bob / f"inbox/{CAROL}/poke.txt").exists()  # no waiting after the touch


@pytest.mark.slow
def test_expired_messages_disappear_from_the_inbox(world: World) -> None:
    source = world.work("expiring") / "short-lived.txt"
    source.write_bytes(b"read me soon\n")
    carol = world.people[CAROL].workspace()
    # Valid for about 8 more seconds, counting the receivers' 5-minute clock skew.
    created = datetime.now(UTC) - timedelta(seconds=60 + 300 - 8)
    with carol.client() as client:
        carol.sender(client).send(
            SendRequest(source, BOB, ttl_seconds=60, created_at=created, chunk_bytes=1 << 20)
        )
    listed = world.bob / f"inbox/{CAROL}/short-lived.txt"
    arrives(world.bob, f"inbox/{CAROL}/short-lived.txt", timeout=6)
    wait_for("the expired message to go", lambda: not listed.exists(), timeout=30)
    world.bob.refresh()
    assert not listed.exists()
    rejected = os.listdir(world.bob / "inbox/.rejected")
    assert not any("short" in (world.bob / "inbox/.rejected" / r).read_text() for r in rejected)


@pytest.mark.slow
def test_expired_sent_messages_leave_sent(scratch: Path) -> None:
    """With a 5 s TTL, a sent file is listed, then goes once recipients would refuse it."""
    root = scratch / "short-ttl"  # scratch is the module's, shared with `world`
    root.mkdir()
    people = make_identities(root, [ALICE, BOB], data_home=root / "xdg-data")
    alice = people[ALICE]
    trust(alice, people[BOB])
    paths = resolve_paths(alice.env)
    save_settings(paths, dataclasses.replace(load_settings(paths), ttl_seconds=5))
    with mounted(alice, root / "mnt-alice", "--to", BOB) as mount:
        (mount / "outbox/brief.txt").write_bytes(b"gone soon\n")
        listed = mount / f"sent/{BOB}/brief.txt"
        wait_for("the sent state", lambda: listed.exists() and xattr(listed, "state") == "sent")
        assert xattr(listed, "expires_at") is not None
        wait_for("the expired message to leave sent/", lambda: not listed.exists(), timeout=20)
        assert os.listdir(mount / "sent") == [".status.json"]


# --- semantics: loud failures ---------------------------------------------------------------


def test_unsupported_operations_fail_loudly(world: World) -> None:
    bob, alice = world.bob, world.alice
    (alice / "outbox/semantics.txt").write_bytes(b"semantics\n")
    received = arrives(bob, f"inbox/{ALICE}/semantics.txt")

    # inbox/: read-only file system
    open_fails(errno.EROFS, bob / "inbox/new.txt", WRITE)
    open_fails(errno.EROFS, bob / f"inbox/{ALICE}/new.txt", WRITE)
    fails_with(errno.EROFS, lambda: os.mkdir(bob / "inbox/folder"))
    open_fails(errno.EROFS, received, os.O_RDWR)
    fails_with(errno.EROFS, lambda: os.truncate(received, 0))
    fails_with(errno.EROFS, lambda: os.unlink(received))
    fails_with(errno.EROFS, lambda: os.rename(received, bob / f"inbox/{ALICE}/x.txt"))
    fails_with(errno.EROFS, lambda: os.chmod(received, 0o600))
    fails_with(errno.EROFS, lambda: os.setxattr(received, "user.note", b"x"))
    fails_with(errno.EROFS, lambda: os.symlink("x", bob / f"inbox/{ALICE}/link"))
    fails_with(errno.EROFS, lambda: os.rename(received, bob / "outbox/moved.txt"))
    fails_with(errno.EPERM, lambda: os.rename(bob / "outbox", bob / "inbox/outbox"))
    # mmap reads go through the same verified reads
    with open(received, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == b"semantics\n"

    # outbox/: only regular files and folders, no xattrs, nothing leaves sideways
    fails_with(errno.EPERM, lambda: os.symlink("/etc/passwd", alice / "outbox/link"))
    fails_with(errno.EPERM, lambda: os.mkfifo(alice / "outbox/fifo"))
    (alice / "outbox/.keep.swp").write_bytes(b"x")
    fails_with(errno.EPERM, lambda: os.link(alice / "outbox/.keep.swp", alice / "outbox/.k2"))
    fails_with(errno.ENOTSUP, lambda: os.setxattr(alice / "outbox/.keep.swp", "user.a", b"1"))
    fails_with(errno.EXDEV, lambda: os.rename(alice / "outbox/.keep.swp", alice / "sent/k"))
    os.chmod(alice / "outbox/.keep.swp", 0o600)  # applies to the local spool file
    assert (alice / "outbox/.keep.swp").stat().st_mode & 0o777 == 0o600
    os.truncate(alice / "outbox/.keep.swp", 0)
    assert (alice / "outbox/.keep.swp").stat().st_size == 0
    os.unlink(alice / "outbox/.keep.swp")

    # sent/: what is sent cannot be unsent or edited
    sent = alice / f"sent/{BOB}/semantics.txt"
    fails_with(errno.EPERM, lambda: os.unlink(sent))
    open_fails(errno.EROFS, sent, os.O_WRONLY | os.O_APPEND)
    open_fails(errno.EROFS, alice / f"sent/{BOB}/new.txt", WRITE)
    assert sent.read_bytes() == b"semantics\n"  # read back from the registry, verified

    # the root and .status
    open_fails(errno.EPERM, alice / "new.txt", WRITE)
    fails_with(errno.EPERM, lambda: os.mkdir(alice / "folder"))
    open_fails(errno.EROFS, alice / ".status", WRITE)
    fails_with(errno.ENOTSUP, lambda: os.setxattr(alice.mountpoint, "user.other", b"1"))


# --- a big inbox ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ls_l_of_an_inbox_with_1000_messages(scratch: Path) -> None:
    people = make_identities(
        scratch / "big",
        ["dave@example.com", "erin@example.com"],
        data_home=scratch / "big" / "xdg-data",
    )
    dave, erin = people["dave@example.com"], people["erin@example.com"]
    trust(erin, dave)
    seeded = seed_inbox(dave, erin.name, 1000)

    with mounted(erin, scratch / "big" / "mnt-erin", "--no-receipts") as mount:
        started = time.monotonic()
        listing = subprocess.run(
            ["ls", "-l", "--time-style=+%s", str(mount / f"inbox/{dave.name}")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        seconds = time.monotonic() - started
        rows = {parts[-1]: parts for line in listing[1:] if (parts := line.split())}

        assert len(rows) == 1000, f"{len(rows)} entries listed in {seconds:.1f}s"
        for message in seeded:
            row = rows[message.filename]
            assert row[0] == "-r--r--r--"
            assert int(row[4]) == message.size
            assert int(row[5]) == int(message.created_at.timestamp())
        sample = seeded[777]
        assert (mount / f"inbox/{dave.name}/{sample.filename}").read_bytes() == seeded_content(
            sample.size
        )


# --- life cycle -----------------------------------------------------------------------------


@pytest.mark.slow
def test_lifecycle_stale_mount_sigterm_and_umount(world: World) -> None:
    frank = make_identities(world.root, ["frank@example.com"], data_home=world.root / "xdg-data")[
        "frank@example.com"
    ]
    trust(frank, world.people[BOB])  # his card: frank's drop for bob goes sealed
    mountpoint = world.root / "mnt-frank"
    with mounted(frank, mountpoint) as mount:
        # No --to: a sendable name directly in outbox/ would never be sent.
        open_fails(errno.EDESTADDRREQ, mount / "outbox/orphan.txt", WRITE)
        (mount / "outbox/.scratch.swp").write_bytes(b"temp names are fine")
        os.kill(mount.process.pid, signal.SIGKILL)
        mount.process.wait(timeout=10)
        assert is_stale(mountpoint)

    with mounted(frank, mountpoint) as mount:
        assert (mount / "outbox/.scratch.swp").read_bytes() == b"temp names are fine"
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=30) == 0
        assert not os.path.ismount(mountpoint) and not is_stale(mountpoint)

    # SIGTERM while an upload is in flight: the upload finishes, then the unmount. Tagging
    # takes the embedded registry's index lock, so holding it keeps the upload in flight
    # for as long as the test needs (no race with a fast machine).
    with mounted(frank, mountpoint, "--to", BOB, "--drain-timeout", "300") as mount:
        with filelock.FileLock(frank.layout / "index.json.lock"):
            (mount / "outbox/drain.bin").write_bytes(os.urandom(300_000))
            sent = mount / f"sent/{BOB}/drain.bin"
            wait_for(
                "the upload to start",
                lambda: sent.exists() and xattr(sent, "state") == "uploading",
            )
            mount.process.send_signal(signal.SIGTERM)
            wait_for("the drain to start", lambda: "draining uploads" in mount.log())
            assert mount.process.poll() is None
        assert mount.process.wait(timeout=60) == 0
    log = mount.log()
    drained, unmounted = log.index("draining uploads"), log.index(f"unmounting {mountpoint}")
    assert drained < log.index("sent drain.bin") < unmounted
    with mounted(frank, mountpoint) as mount:
        assert xattr(mount / f"sent/{BOB}/drain.bin", "state") == "sent"

    with mounted(frank, mountpoint) as mount:
        umount = subprocess.run(
            [sys.executable, "-m", "dockercomms.fsmount", "umount", str(mountpoint)],
            env=frank.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert umount.returncode == 0, umount.stderr
        assert mount.process.wait(timeout=30) == 0
        assert not os.path.ismount(mountpoint)
    unmount_quietly(mountpoint)


def lstat_fails_with(path: Path, number: int) -> bool:
    """``lstat(path)`` fails with ``number`` (a dead mount, once the kernel stops caching it)."""
    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno == number
    return False


@pytest.mark.slow
def test_a_mount_killed_with_sigkill_is_mounted_again_by_the_next_mount(world: World) -> None:
    heidi = make_identities(world.root, ["heidi@example.com"], data_home=world.root / "xdg-data")[
        "heidi@example.com"
    ]
    mountpoint = world.root / "mnt-heidi"
    with mounted(heidi, mountpoint) as crashed:
        os.kill(crashed.process.pid, signal.SIGKILL)
        crashed.process.wait(timeout=10)
        # Once the kernel's cached attributes of the root expire, even lstat fails.
        wait_for("the dead mount", lambda: lstat_fails_with(mountpoint, errno.ENOTCONN))

        # No fixture clears it: `dockercomms mount` as a user runs it again.
        with background_mount(heidi, mountpoint) as started:
            assert started.code == 0, started.err
            status = json.loads(os.getxattr(mountpoint, ATTR + "status"))
            assert status["pid"] != crashed.process.pid
            assert f"pid {status['pid']}" in started.out
            log = (heidi.home / "state" / "mount.log").read_text()
            assert "clearing a stale mount" in log
        assert not os.path.ismount(mountpoint) and not is_stale(mountpoint)


@pytest.mark.slow
def test_a_refused_mount_says_why_once_and_exits_non_zero(world: World) -> None:
    alice, carol = world.people[ALICE], world.people[CAROL]
    taken = world.alice.mountpoint
    elsewhere = world.root / "mnt-alice-again"

    # The same identity twice: refused before anything is created.
    with background_mount(alice, elsewhere) as again:
        assert again.code == 1, again.out
        assert again.out == ""
        assert again.err.count("dockercomms: error:") == 1, again.err
        assert len(again.err.strip().splitlines()) == 1, again.err
        assert f"{ALICE} is already mounted at {taken}" in again.err
        assert not elsewhere.exists()
    # --to for a second mount of the same identity is refused, not silently dropped.
    with background_mount(alice, taken, "--to", CAROL) as retarget:
        assert retarget.code == 1 and retarget.out == "", retarget.out
        assert f"{ALICE} is already mounted at {taken}" in retarget.err
    # Another identity on a live mount point.
    with background_mount(carol, taken) as occupied:
        assert occupied.code == 1 and occupied.out == "", occupied.out
        assert f"{taken} is already mounted" in occupied.err
        assert occupied.err.count("dockercomms: error:") == 1, occupied.err
    # The outbox queue held by a `dockercomms sync`: the folder this start made goes again.
    fresh = world.root / "mnt-carol-while-syncing"
    with (
        filelock.FileLock(carol.home / "state" / "queue.lock"),
        background_mount(carol, fresh) as locked,
    ):
        assert locked.code == 1 and locked.out == "", locked.out
        assert locked.err.count("dockercomms: error:") == 1, locked.err
        assert "another dockercomms sync is running" in locked.err
        assert not fresh.exists()
    assert world.alice.status()["pid"] == world.alice.process.pid  # still serving


def test_status_finds_a_mount_started_with_repo_and_says_why_drops_were_refused(
    world: World,
) -> None:
    carol = world.people[CAROL]
    layout = world.root / "carol-layout"
    with mounted(carol, world.root / "mnt-carol", "--repo", f"oci-layout:{layout}") as mount:
        status = json.loads(carol.cli("status", "--json"))
        assert status["source"] == "mount", status
        assert status["daemon"]["pid"] == mount.process.pid
        assert str(layout) in status["repository"]

        open_fails(errno.EDESTADDRREQ, mount / "outbox/stray.txt", WRITE)
        document = json.loads((mount / ".status").read_bytes())
        [refusal] = document["refusals"]
        assert refusal["path"] == "outbox/stray.txt" and "--to" in refusal["reason"]
        status = json.loads(carol.cli("status", "--json"))
        assert status["refusals"] == document["refusals"]
        text = carol.cli("status")
        assert "refused: outbox/stray.txt" in text and "--to" in text


def test_whole_file_mode_opens_a_file_complete_or_not_at_all(world: World) -> None:
    ivan = make_identities(world.root, ["ivan@example.com"], data_home=world.root / "xdg-data")[
        "ivan@example.com"
    ]
    carol = world.people[CAROL]  # 64 KiB chunks
    trust(ivan, carol)
    folder = world.work("whole")
    good, bad = os.urandom(4 * 64 * 1024), os.urandom(4 * 64 * 1024)
    (folder / "whole-good.bin").write_bytes(good)
    (folder / "whole-bad.bin").write_bytes(bad)
    carol.send(folder / "whole-good.bin", ivan.name)
    sent = carol.send(folder / "whole-bad.bin", ivan.name)
    tamper(carol, layer_digests(carol, sent.digest)[2])

    with mounted(ivan, world.root / "mnt-ivan", "--whole-file") as mount:
        complete = arrives(mount, f"inbox/{CAROL}/whole-good.bin")
        broken = arrives(mount, f"inbox/{CAROL}/whole-bad.bin")
        before = mount.status()["cache"]["entries"]
        with open(complete, "rb") as handle:
            # open() returned: every chunk was fetched and verified before it did.
            assert mount.status()["cache"]["entries"] - before == 4
            assert handle.read() == good

        cat = subprocess.run(["cat", str(broken)], capture_output=True)
        assert cat.returncode != 0 and cat.stdout == b""
        copy = folder / "copy.bin"
        cp = subprocess.run(["cp", str(broken), str(copy)], capture_output=True)
        assert cp.returncode != 0 and not copy.exists()
        assert b"Input/output error" in cp.stderr
        assert "DigestMismatchError" in (xattr(broken, "error") or "")


def test_the_readiness_probe_never_touches_the_mount_from_its_own_process(world: World) -> None:
    """The daemon proves its mount answers through a child process, never a thread of its own.

    A daemon thread blocked on its own mount when the daemon is killed (SIGKILL,
    systemd's watchdog, the OOM killer) keeps ``/dev/fuse`` open in a process that
    can never finish dying: the mount and every process touching it hang until the
    connection is aborted by hand. The probe is run here in this process, with an
    audit hook recording every file this process opens under the mount.
    """
    mountpoint = world.alice.mountpoint.absolute()
    opened: list[str] = []
    watching = True

    def audit(event: str, args: tuple[object, ...]) -> None:
        if watching and event == "open" and str(args[0]).startswith(str(mountpoint)):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        status = trio.run(read_mount_status, mountpoint)
    finally:
        watching = False
    assert status.pid == world.alice.process.pid
    assert opened == []
