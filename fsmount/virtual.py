"""Read-only files whose bytes are produced by the mount (status JSON, rejection reasons).

Caveats first:

* The content is produced once per ``open()`` and the handle reads from that
  snapshot, so a reader sees one consistent JSON document even while the status
  changes underneath.
* ``st_size`` of a changing file is the size of the latest snapshot (refreshed
  at most once a second by ``stat``); such handles use ``direct_io`` so readers
  get the whole snapshot whatever ``stat`` said a moment earlier.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable

from dockercomms.fsmount.inodes import Attributes, Handle, Node, fuse_error, now_ns

Producer = Callable[[], Awaitable[bytes]]

#: ``stat`` of a changing file regenerates its content at most this often.
SNAPSHOT_SECONDS = 1.0


def wants_write(flags: int) -> bool:
    """True when ``open`` flags ask for writing (or truncation)."""
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR) or bool(flags & os.O_TRUNC)


class BytesHandle(Handle):
    """An open snapshot."""

    def __init__(self, content: bytes, *, direct_io: bool) -> None:
        self.content = content
        self.direct_io = direct_io

    async def read(self, offset: int, size: int) -> bytes:
        return self.content[offset : offset + size]


class GeneratedFile(Node):
    """A read-only file; ``produce`` returns its bytes.

    Attributes:
        changing: content may differ between opens (``.status``): direct I/O and
            a size refreshed by ``stat``.
        mtime_ns: shown as the modification time of a fixed file.
        extended: its ``user.dockercomms.*`` attributes (values escaped by the caller).
    """

    def __init__(
        self,
        name: str,
        produce: Producer,
        *,
        changing: bool,
        refuse: int = errno.EROFS,
        mtime_ns: int | None = None,
        extended: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(name)
        self.produce = produce
        self.changing = changing
        self.refuse = refuse
        self.mtime_ns = mtime_ns or now_ns()
        self.extended = extended or {}
        self._snapshot: bytes | None = None
        self._snapshot_at = 0.0

    async def _content(self, *, fresh: bool) -> bytes:
        stale = self.changing and time.monotonic() - self._snapshot_at > SNAPSHOT_SECONDS
        if self._snapshot is None or fresh or stale:
            self._snapshot = await self.produce()
            self._snapshot_at = time.monotonic()
            if self.changing:
                self.mtime_ns = now_ns()
        return self._snapshot

    async def attributes(self) -> Attributes:
        content = await self._content(fresh=False)
        return Attributes(stat.S_IFREG | 0o444, size=len(content), mtime_ns=self.mtime_ns)

    async def open(self, flags: int) -> Handle:
        if wants_write(flags):
            raise fuse_error(self.refuse)
        content = await self._content(fresh=self.changing)
        return BytesHandle(content, direct_io=self.changing)

    async def xattrs(self) -> dict[str, bytes]:
        return dict(self.extended)


def fixed(data: bytes) -> Producer:
    """A producer of constant bytes."""

    async def produce() -> bytes:
        return data

    return produce
