"""What the kernel would ask: the FUSE operations called directly, a path or a file at a time.

Everything but the kernel is real: the tree is ``fsmount.drop_folder.assemble``'s,
over a real workspace, embedded store, push queue and spool. Only the reply
buffer of ``readdir`` (a kernel structure) is stood in for, by
:func:`collect_readdir`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from dockercomms.core.workspace import Workspace
from dockercomms.fsmount.drop_folder import DropFolder, assemble
from dockercomms.fsmount.operations import DropFolderOperations
from dockercomms.syncer.queue import PushQueue

CTX = pyfuse3.RequestContext()


@contextlib.asynccontextmanager
async def drop_folder(
    workspace: Workspace, *, default_recipient: str | None = None
) -> AsyncIterator[DropFolder]:
    """The assembled tree of ``workspace``'s mount (receipts off: nothing is sent)."""
    paths = workspace.paths
    with workspace.inbox() as inbox, PushQueue(paths.queue_db, paths.queue_dir) as queue:
        async with trio.open_nursery() as nursery:
            yield assemble(
                workspace,
                inbox,
                queue,
                nursery,
                mountpoint=Path("/fs-api"),
                repository=str(workspace.repository()),
                default_recipient=default_recipient,
                poll_seconds=60.0,
                cache_bytes=64 * 1024 * 1024,
                receipts=False,
            )
            nursery.cancel_scope.cancel()


async def lookup(ops: DropFolderOperations, path: str) -> pyfuse3.EntryAttributes:
    """Walk ``path`` from the root, one ``lookup`` per name, as the kernel does."""
    inode = pyfuse3.ROOT_INODE
    attrs = await ops.getattr(inode, CTX)
    for name in [part for part in path.split("/") if part]:
        attrs = await ops.lookup(inode, os.fsencode(name), CTX)
        inode = attrs.st_ino
    return attrs


async def read_all(ops: DropFolderOperations, inode: int, size: int = 128 * 1024) -> bytes:
    """``open``, ``read`` until end of file, ``release``."""
    info = await ops.open(inode, os.O_RDONLY, CTX)
    data = b""
    try:
        while piece := await ops.read(info.fh, len(data), size):
            data += piece
    finally:
        await ops.release(info.fh)
    return data


async def listdir(ops: DropFolderOperations, inode: int) -> list[str]:
    """``opendir``, ``readdir``, ``releasedir``: the names listed."""
    fh = await ops.opendir(inode, CTX)
    names: list[str] = []
    try:
        await ops.readdir(fh, 0, names)  # type: ignore[arg-type]
    finally:
        await ops.releasedir(fh)
    return names


async def fails_with(number: int, call: Callable[[], Awaitable[Any]]) -> None:
    """The operation fails with exactly ``FUSEError(number)`` (what the kernel gets)."""
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await call()
    assert caught.value.errno == number, errno.errorcode.get(caught.value.errno)


def collect_readdir(
    token: list[str], name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int
) -> bool:
    """Stands in for ``pyfuse3.readdir_reply``: the kernel's buffer is a list of names."""
    token.append(os.fsdecode(name))
    return True
