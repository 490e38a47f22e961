"""The FUSE operations, called directly: inbox/, outbox/, .status and errno mapping, no kernel.

Each test assembles the mount's tree for bob (``fsmount.drop_folder.assemble``)
on the embedded store and drives ``DropFolderOperations`` as the kernel would:
``lookup`` by name, ``open``/``read``/``release``, ``create``/``write``/``fsync``,
``getxattr``; every failure must come out as ``FUSEError`` with the errno
SEMANTICS.md promises.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyfuse3
import pytest
import trio

from tests.conftest import Party, make_party
from tests.fs_api.kernel import (
    CTX,
    collect_readdir,
    drop_folder,
    fails_with,
    listdir,
    lookup,
    read_all,
)

NOTE = b"a note for bob\n"


@pytest.fixture(autouse=True)
def readdir_without_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "readdir_reply", collect_readdir)


def send(sender: Party, recipient: Party, tmp_path: Path, data: bytes = NOTE, *extra: str) -> str:
    """``dockercomms send`` a file named note.txt (with ``extra`` options); its digest."""
    note = tmp_path / "note.txt"
    note.write_bytes(data)
    sent = sender.ok("send", str(note), "-r", recipient.name, "--json", *extra)
    return str(json.loads(sent)["digest"])


def test_an_inbox_file_is_listed_read_and_described_after_a_poll(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    digest = send(alice, bob, tmp_path)

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            inbox = await lookup(ops, "inbox")
            assert alice.name in await listdir(ops, inbox.st_ino)
            note = await lookup(ops, f"inbox/{alice.name}/note.txt")
            assert note.st_size == len(NOTE) and note.st_mode & 0o777 == 0o444
            assert await read_all(ops, note.st_ino, size=5) == NOTE
            attribute = await ops.getxattr(note.st_ino, b"user.dockercomms.verified", CTX)
            assert attribute == b"true"
            names = await ops.listxattr(note.st_ino, CTX)
            assert b"user.dockercomms.sender" in names
            assert await ops.getxattr(note.st_ino, b"user.dockercomms.digest", CTX) == (
                digest.encode()
            )

    trio.run(body)


def test_the_inbox_is_read_only_and_unknown_names_are_enoent(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    send(alice, bob, tmp_path)

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            sender = await lookup(ops, f"inbox/{alice.name}")
            note = await lookup(ops, f"inbox/{alice.name}/note.txt")
            await fails_with(errno.EROFS, lambda: ops.open(note.st_ino, os.O_WRONLY, CTX))
            await fails_with(errno.EROFS, lambda: ops.unlink(sender.st_ino, b"note.txt", CTX))
            await fails_with(
                errno.EROFS,
                lambda: ops.create(sender.st_ino, b"new.txt", 0o644, os.O_WRONLY, CTX),
            )
            await fails_with(errno.EROFS, lambda: ops.mkdir(sender.st_ino, b"d", 0o755, CTX))
            await fails_with(errno.ENOENT, lambda: lookup(ops, "inbox/nobody"))
            await fails_with(
                errno.ENOTSUP, lambda: ops.setxattr(pyfuse3.ROOT_INODE, b"user.x", b"1", CTX)
            )

    trio.run(body)


def test_a_file_written_to_outbox_is_in_the_spool_and_fsync_queues_it_once(
    embedded_pair: tuple[Party, Party],
) -> None:
    alice, bob = embedded_pair

    async def body() -> None:
        workspace = bob.workspace()
        async with drop_folder(workspace) as folder:
            ops = folder.operations
            outbox = await lookup(ops, "outbox")
            recipient = await ops.mkdir(outbox.st_ino, alice.name.encode(), 0o755, CTX)
            flags = os.O_WRONLY | os.O_CREAT
            info, created = await ops.create(recipient.st_ino, b"hi.txt", 0o644, flags, CTX)
            assert created.st_size == 0
            assert await ops.write(info.fh, 0, b"hello alice\n") == len(b"hello alice\n")
            spooled = workspace.paths.spool_dir / alice.name / "hi.txt"
            assert spooled.read_bytes() == b"hello alice\n"
            await ops.fsync(info.fh, False)
            [item] = folder.sent.queue.items()
            assert (item.recipient, item.filename, item.size) == (alice.name, "hi.txt", 12)
            await ops.release(info.fh)
            assert not spooled.exists()  # fsync sent this very content: not sent again
            sent = await lookup(ops, f"sent/{alice.name}/hi.txt")
            assert sent.st_size == 12

    trio.run(body)


def test_refusals_and_failures_reach_the_caller_as_the_promised_errno(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    carol = make_party(tmp_path, "carol", alice.repo)  # bob does not trust carol
    (tmp_path / "from-alice").mkdir()
    send(alice, bob, tmp_path / "from-alice")
    send(carol, bob, tmp_path, NOTE, "--plaintext")  # carol knows no age key of bob's

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            rejected = await lookup(ops, "inbox/.rejected")
            [tag] = await listdir(ops, rejected.st_ino)
            entry = await lookup(ops, f"inbox/.rejected/{tag}")
            assert b"UntrustedSignerError" in await read_all(ops, entry.st_ino)

            note = await lookup(ops, f"inbox/{alice.name}/note.txt")
            bob.ok("trust", "remove", alice.name)  # open() verifies again: EACCES now
            await fails_with(errno.EACCES, lambda: ops.open(note.st_ino, os.O_RDONLY, CTX))
            error = await ops.getxattr(note.st_ino, b"user.dockercomms.error", CTX)
            assert error.startswith(b"UntrustedSignerError")

            outbox = await lookup(ops, "outbox")
            flags = os.O_WRONLY | os.O_CREAT
            await fails_with(  # no default recipient: it would never be sent
                errno.EDESTADDRREQ, lambda: ops.create(outbox.st_ino, b"x.txt", 0o644, flags, CTX)
            )
            await fails_with(errno.EPERM, lambda: ops.symlink(outbox.st_ino, b"l", b"/etc", CTX))
            inbox = await lookup(ops, "inbox")
            await fails_with(
                errno.EXDEV,
                lambda: ops.rename(outbox.st_ino, b"x", inbox.st_ino, b"x", 0, CTX),
            )

    trio.run(body)


def test_status_is_the_mounts_tree_as_json(embedded_pair: tuple[Party, Party]) -> None:
    _, bob = embedded_pair

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            status = await lookup(ops, ".status")
            document = json.loads(await read_all(ops, status.st_ino))
            assert document["identity"] == bob.name and document["pid"] == os.getpid()
            assert document["inbox"]["last_poll"]["polls"] == 1
            assert document["receipts"]["enabled"] is False
            root = await ops.getxattr(pyfuse3.ROOT_INODE, b"user.dockercomms.status", CTX)
            assert json.loads(root)["identity"] == bob.name

    trio.run(body)
