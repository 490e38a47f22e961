"""Sealed messages in the mount's ``inbox/`` (SPEC 9), the FUSE operations called directly.

Listed under their real name once the signature verified and the ``sealed``
annotation opened; read lazily, a chunk at a time, each decrypted into the
private chunk cache and checked against ``chunk_sha256`` before a byte is
served; ``user.dockercomms.sealed`` says which. Built from the spec
(``tests.sealed_forge``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import pyfuse3
import pytest
import trio

from dockercomms.core import protocol as p
from dockercomms.core._internal import sealed_message as sm
from tests.conftest import Party, make_party
from tests.fs_api.kernel import CTX, collect_readdir, drop_folder, fails_with, listdir, lookup
from tests.sealed_forge import age_keys, sealer

CHUNK = 65536
DATA = os.urandom(4 * CHUNK + 123)


@pytest.fixture(autouse=True)
def readdir_without_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "readdir_reply", collect_readdir)


def test_sealed_inbox_files_are_listed_by_name_read_lazily_and_checked(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    carol = make_party(tmp_path, "carol", alice.repo)
    bob_age, alice_age = age_keys(bob).recipient, age_keys(alice).recipient
    forge = sealer(alice)
    good = forge.send(DATA, [bob.name], [bob_age, alice_age], chunk_bytes=CHUNK)
    # The same ciphertext blobs under another signed annotation that lies about chunk 3.
    digests = list(good.facts.chunk_sha256)
    digests[3] = "f" * 64
    lying = dataclasses.replace(good, message_id=p.new_message_id(), digests={})
    lying.sealed_value = sm.seal_annotation(
        sm.SealedFacts("lying.bin", len(DATA), tuple(digests)),
        [age_keys(bob).current.identity.to_public()],
    )
    forge.push(lying, bob.name, chunk_bytes=CHUNK)
    elsewhere = forge.build(b"for carol\n", [age_keys(carol).recipient], filename="carol.txt")
    forge.push(elsewhere, bob.name)
    note = tmp_path / "note.txt"
    note.write_bytes(b"plain\n")
    alice.ok("send", str(note), "-r", bob.name, "--plaintext")

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            folder_inode = (await lookup(ops, f"inbox/{alice.name}")).st_ino
            assert sorted(await listdir(ops, folder_inode)) == [
                "lying.bin",
                "note.txt",
                "report.pdf",
            ]
            report = await lookup(ops, f"inbox/{alice.name}/report.pdf")
            assert report.st_size == len(DATA)
            sealed = b"user.dockercomms.sealed"
            assert await ops.getxattr(report.st_ino, sealed, CTX) == b"true"
            plain = await lookup(ops, f"inbox/{alice.name}/note.txt")
            assert await ops.getxattr(plain.st_ino, sealed, CTX) == b"false"

            # Lazy: a read in chunk 2 needs chunks 0 (open) and 2, never all of them.
            info = await ops.open(report.st_ino, os.O_RDONLY, CTX)
            try:
                offset = 2 * CHUNK + 100
                assert await ops.read(info.fh, offset, 1000) == DATA[offset : offset + 1000]
                assert await ops.read(info.fh, 0, 10) == DATA[:10]
            finally:
                await ops.release(info.fh)
            cache = bob.workspace().paths.chunk_cache_dir
            assert stat.S_IMODE(cache.stat().st_mode) == 0o700

            # chunk_sha256 decides, even for a blob already opened and cached for another
            # message: the chunk whose digest lies fails its read (EIO).
            info = await ops.open(report.st_ino, os.O_RDONLY, CTX)
            last = DATA[3 * CHUNK : 3 * CHUNK + 100]
            assert await ops.read(info.fh, 3 * CHUNK, 100) == last
            await ops.release(info.fh)
            lie = await lookup(ops, f"inbox/{alice.name}/lying.bin")
            info = await ops.open(lie.st_ino, os.O_RDONLY, CTX)
            try:
                assert await ops.read(info.fh, 0, 100) == DATA[:100]
                await fails_with(errno.EIO, lambda: ops.read(info.fh, 3 * CHUNK, 100))
            finally:
                await ops.release(info.fh)
            error = await ops.getxattr(lie.st_ino, b"user.dockercomms.error", CTX)
            assert error.startswith(b"PlaintextMismatchError")

            # Sealed to someone else: in .rejected/ with the reason, under no name of its own
            # (beside the lying one, rejected by its read).
            rejected = await lookup(ops, "inbox/.rejected")
            reasons = []
            for tag in await listdir(ops, rejected.st_ino):
                entry = await lookup(ops, f"inbox/.rejected/{tag}")
                info = await ops.open(entry.st_ino, os.O_RDONLY, CTX)
                reasons.append(await ops.read(info.fh, 0, 4096))
                await ops.release(info.fh)
            assert len(reasons) == 2
            [text] = [r for r in reasons if b"NotARecipientError" in r]
            assert sm.neutral_filename(elsewhere.message_id).encode() in text
            assert b"carol.txt" not in text

    trio.run(body)


def test_a_sealed_chunk_that_does_not_open_is_sticky_corruption(
    embedded_pair: tuple[Party, Party],
) -> None:
    alice, bob = embedded_pair
    forge = sealer(alice)
    built = forge.build(DATA, [age_keys(bob).recipient], chunk_bytes=CHUNK)
    cut = forge.layer(built.layer_blobs[1][:-100], 1)
    forge.push(built, bob.name, chunk_bytes=CHUNK, layers=[built.layers[0], cut, *built.layers[2:]])

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            report = await lookup(ops, f"inbox/{alice.name}/report.pdf")
            info = await ops.open(report.st_ino, os.O_RDONLY, CTX)
            try:
                await fails_with(errno.EIO, lambda: ops.read(info.fh, CHUNK, 100))
            finally:
                await ops.release(info.fh)
            error = await ops.getxattr(report.st_ino, b"user.dockercomms.error", CTX)
            assert error.startswith(b"SealedTruncatedError")
            # The sender made it so (its ciphertext digest was signed): every later open fails.
            await fails_with(errno.EIO, lambda: ops.open(report.st_ino, os.O_RDONLY, CTX))

    trio.run(body)
