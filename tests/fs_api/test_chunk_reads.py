"""Reading an inbox file through the operations: blocks checked ahead, damage met ahead.

A sequential reader is served from blocks the chunk source re-hashed ahead of it
in a thread; a block that fails that check ahead of the reader is dropped with
its chunk, which the reader then fetches again, and the bytes it gets are still
the sender's.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dockercomms.fsmount.chunk_cache import BLOCK_BYTES, ChunkKey
from dockercomms.fsmount.drop_folder import DropFolder
from dockercomms.fsmount.transfers import READ_AHEAD_BLOCKS
from tests.conftest import Party
from tests.fs_api.kernel import CTX, drop_folder, lookup

PIECE = 128 * 1024  # what the kernel asks for at a time


def send(sender: Party, recipient: Party, tmp_path: Path, data: bytes, *extra: str) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    json.loads(sender.ok("send", str(path), "-r", recipient.name, "--json", *extra))


async def checks_done(folder: DropFolder) -> None:
    """Wait until no block check runs in the background (they are short)."""
    with trio.fail_after(60):
        while folder.chunks.checks_in_flight:
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def big_bin_opened(folder: DropFolder, sender: Party) -> AsyncIterator[int]:
    """``inbox/<sender>/big.bin`` listed and opened for reading; its file handle."""
    ops = folder.operations
    await folder.inbox.poll_once()
    entry = await lookup(ops, f"inbox/{sender.name}/big.bin")
    info = await ops.open(entry.st_ino, os.O_RDONLY, CTX)
    try:
        yield info.fh
    finally:
        await ops.release(info.fh)


def the_one_chunk(folder: DropFolder) -> ChunkKey:
    """The key of the only chunk in the cache (opening the file fetched it)."""
    (sidecar,) = folder.chunks.cache.root.glob("*.json")
    doc = json.loads(sidecar.read_text())
    return ChunkKey(doc["layer"], doc["index"])


@pytest.mark.parametrize("sealing", [(), ("--plaintext",)], ids=["sealed", "plaintext"])
def test_a_sequential_reader_finds_the_next_blocks_checked_ahead_of_it(
    embedded_pair: tuple[Party, Party], tmp_path: Path, sealing: tuple[str, ...]
) -> None:
    """Sealed chunks are cached under a key bound to their plaintext digest (SPEC 9);
    the read-ahead and the memory fast path must use that key too."""
    alice, bob = embedded_pair
    data = os.urandom((READ_AHEAD_BLOCKS + 2) * BLOCK_BYTES + 999)
    send(alice, bob, tmp_path, data, *sealing)

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder, big_bin_opened(folder, alice) as fh:
            ops = folder.operations
            cache = folder.chunks.cache
            key = the_one_chunk(folder)
            got = await ops.read(fh, 0, PIECE)
            got += await ops.read(fh, PIECE, PIECE)  # sequential now
            await checks_done(folder)
            ahead = cache.unverified_blocks(key, 0, (READ_AHEAD_BLOCKS + 1) * BLOCK_BYTES)
            assert ahead == []  # checked before the reader got there
            while piece := await ops.read(fh, len(got), PIECE):
                got += piece
            assert got == data

    trio.run(body)


def test_a_block_damaged_ahead_of_the_reader_is_fetched_again(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    data = os.urandom((READ_AHEAD_BLOCKS + 4) * BLOCK_BYTES)
    send(alice, bob, tmp_path, data)

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder, big_bin_opened(folder, alice) as fh:
            ops = folder.operations
            cache = folder.chunks.cache
            key = the_one_chunk(folder)
            got = await ops.read(fh, 0, PIECE)  # block 0 only: no read-ahead yet
            damaged = READ_AHEAD_BLOCKS  # inside the window the next read checks
            with open(cache.root / f"{key.name}.bin", "r+b") as handle:
                handle.seek(damaged * BLOCK_BYTES + 7)
                handle.write(bytes([data[damaged * BLOCK_BYTES + 7] ^ 0xFF]))
            while piece := await ops.read(fh, len(got), PIECE):
                got += piece
            assert got == data
            assert cache.statistics().corruptions == 1

    trio.run(body)
