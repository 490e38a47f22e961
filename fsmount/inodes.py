"""The inode tree: typed ids, nodes, open handles, and exact kernel lookup counts.

Caveats first:

* Inode numbers come from a counter and are never reused within one mount, so a
  stale kernel reference can never reach a different file. They are not stable
  across mounts (nothing here is persistent).
* A node leaves the table only when it is out of the tree (``attached`` is False)
  *and* the kernel has forgotten it (lookup count 0): the pyfuse3 rule that the
  data of an unlinked inode lives until ``forget``.
* Every method of :class:`Node` and :class:`Handle` fails loudly by default
  (``EROFS``/``EPERM``/``ENOTSUP``...). A subclass implements what its folder
  supports and nothing else, so an operation nobody thought about is refused, never
  silently accepted.
* Nodes and handles are touched only from the trio thread; blocking work is done
  in worker threads by the views, which hand results back to this thread.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import NewType

import pyfuse3

log = logging.getLogger(__name__)

InodeT = NewType("InodeT", int)
"""A FUSE inode number handed to the kernel."""

FileHandleT = NewType("FileHandleT", int)
"""A FUSE file (or directory) handle number handed to the kernel."""

ROOT_INODE = InodeT(pyfuse3.ROOT_INODE)

#: Cache time for entries whose content changes behind the kernel's back (polls).
DYNAMIC_TIMEOUT = 1.0


def fuse_error(number: int) -> pyfuse3.FUSEError:
    """The one exception type allowed across the FUSE boundary."""
    return pyfuse3.FUSEError(number)


def now_ns() -> int:
    """Wall-clock time in nanoseconds (for virtual files)."""
    return time.time_ns()


@dataclass
class Attributes:
    """What ``stat`` shows for a node, in our own terms.

    Attributes:
        mode: full ``st_mode`` including the file type bits.
        size: ``st_size``; for generated files the size of the latest snapshot.
        mtime_ns: modification time; inbox files use the message's ``created_at``.
        ctime_ns: change time (defaults to ``mtime_ns``).
        atime_ns: access time (defaults to ``mtime_ns``).
        nlink: link count (2 for directories, 1 for files).
        uid: owner; the mounting user for virtual nodes.
        gid: group; the mounting user's group for virtual nodes.
        timeout: how long the kernel may cache the entry and these attributes.
    """

    mode: int
    size: int = 0
    mtime_ns: int = field(default_factory=now_ns)
    ctime_ns: int | None = None
    atime_ns: int | None = None
    nlink: int = 1
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    timeout: float = DYNAMIC_TIMEOUT

    @classmethod
    def from_stat(cls, st: os.stat_result, timeout: float) -> Attributes:
        """Attributes of a real file (the outbox spool)."""
        return cls(
            mode=st.st_mode,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            atime_ns=st.st_atime_ns,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            timeout=timeout,
        )


def directory_attributes(permissions: int, mtime_ns: int | None = None) -> Attributes:
    """Attributes for a virtual directory."""
    return Attributes(stat.S_IFDIR | permissions, nlink=2, mtime_ns=mtime_ns or now_ns())


class Handle:
    """An open file. Every operation is refused unless a subclass supports it.

    Attributes:
        direct_io: bypass the page cache (generated files whose size is a guess).
        keep_cache: keep cached pages from an earlier open.
    """

    direct_io: bool = False
    keep_cache: bool = False

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Bytes at ``offset``; refused for handles opened write-only."""
        raise fuse_error(errno.EBADF)

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data``; refused for read-only handles."""
        raise fuse_error(errno.EBADF)

    async def flush(self) -> None:
        """``close()`` of one descriptor; nothing to do by default."""

    async def fsync(self, datasync: bool) -> None:
        """Nothing is buffered by default, so there is nothing to sync."""

    async def release(self) -> None:
        """The last descriptor closed; nothing to free by default."""


class Node:
    """One file or directory the kernel may know about.

    Attributes:
        inode: assigned by :class:`InodeTable` when the node is added.
        name: the entry name in ``parent`` (informational for the outbox).
        attached: False once the node left the tree; it then lives until forgotten.
        refuse: errno for operations this kind of node does not support at all
            (``EROFS`` in read-only views, ``EPERM`` elsewhere).
    """

    refuse: int = errno.EPERM

    def __init__(self, name: str) -> None:
        self.inode = InodeT(0)
        self.name = name
        self.attached = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.inode} {self.name!r}>"

    async def attributes(self) -> Attributes:
        """``stat`` of this node."""
        raise NotImplementedError

    # --- directories ----------------------------------------------------------------

    async def lookup(self, name: str) -> Node:
        """The child ``name``; ``ENOTDIR`` for files."""
        raise fuse_error(errno.ENOTDIR)

    async def entries(self) -> list[tuple[str, Node]]:
        """A snapshot of the children, for ``readdir``."""
        raise fuse_error(errno.ENOTDIR)

    async def create(self, name: str, mode: int, flags: int) -> tuple[Node, Handle]:
        """Create and open a file."""
        raise fuse_error(self.refuse)

    async def mkdir(self, name: str, mode: int) -> Node:
        """Create a directory."""
        raise fuse_error(self.refuse)

    async def unlink(self, name: str) -> None:
        """Remove a file entry."""
        raise fuse_error(self.refuse)

    async def rmdir(self, name: str) -> None:
        """Remove an empty directory."""
        raise fuse_error(self.refuse)

    async def rename(self, name: str, new_parent: Node, new_name: str, flags: int) -> None:
        """Move the entry ``name`` to ``new_parent``/``new_name``."""
        raise fuse_error(self.refuse)

    def refused(self, name: str, why: str) -> None:
        """A request to make ``name`` here was refused; a folder that sends says so."""

    # --- files ----------------------------------------------------------------------

    async def open(self, flags: int) -> Handle:
        """Open the node; directories are opened with ``opendir`` instead."""
        raise fuse_error(errno.EISDIR)

    async def setattr(
        self,
        *,
        size: int | None,
        mode: int | None,
        owner: tuple[int | None, int | None] | None,
        times: tuple[int | None, int | None] | None,
        handle: Handle | None,
    ) -> Attributes:
        """truncate/chmod/chown/utimes; ``times`` is (atime_ns, mtime_ns)."""
        raise fuse_error(self.refuse)

    # --- xattrs ---------------------------------------------------------------------

    async def xattrs(self) -> dict[str, bytes]:
        """Every extended attribute with a value (``user.dockercomms.*``)."""
        return {}

    async def setxattr(self, name: str, value: bytes) -> None:
        """Set an extended attribute; none are writable by default."""
        raise fuse_error(self._xattr_refusal())

    async def removexattr(self, name: str) -> None:
        """Remove an extended attribute; none are removable by default."""
        raise fuse_error(self._xattr_refusal())

    def _xattr_refusal(self) -> int:
        # A read-only view says so; elsewhere extended attributes are simply unsupported.
        return errno.EROFS if self.refuse == errno.EROFS else errno.ENOTSUP

    # --- life -----------------------------------------------------------------------

    def forgotten(self) -> bool:
        """The kernel dropped its last reference; True lets the table drop the node."""
        return not self.attached


class Directory(Node):
    """A virtual directory whose children are held in memory (inbox, sent, root).

    Attributes:
        children: name -> node, in insertion order (readdir order).
        permissions: mode bits shown by ``ls``.
    """

    def __init__(self, name: str, table: InodeTable, permissions: int = 0o555) -> None:
        super().__init__(name)
        self.children: dict[str, Node] = {}
        self.permissions = permissions
        self.table = table
        self.mtime_ns = now_ns()

    async def attributes(self) -> Attributes:
        return directory_attributes(self.permissions, self.mtime_ns)

    async def lookup(self, name: str) -> Node:
        try:
            return self.children[name]
        except KeyError:
            raise fuse_error(errno.ENOENT) from None

    async def entries(self) -> list[tuple[str, Node]]:
        return list(self.children.items())

    def attach(self, name: str, node: Node) -> Node:
        """Add ``node`` as ``name`` (registering it in the table)."""
        if node.inode == 0:
            self.table.add(node)
        node.name = name
        node.attached = True
        self.children[name] = node
        self.mtime_ns = now_ns()
        return node

    def detach(self, name: str) -> Node | None:
        """Remove the entry ``name``; the node lives on until the kernel forgets it."""
        node = self.children.pop(name, None)
        if node is None:
            return None
        self.mtime_ns = now_ns()
        node.attached = False
        self.table.left_tree(self, name, node)
        return node


class SyncedDirectory(Directory):
    """A directory whose children mirror outside state, brought up to date before use.

    ``inbox/`` waits for the first registry poll, ``sent/`` re-reads the queue: both
    must catch up before a lookup or listing answers, so the order lives here once.
    """

    async def catch_up(self) -> None:
        """Bring ``children`` up to date (the subclass says how)."""
        raise NotImplementedError

    async def lookup(self, name: str) -> Node:
        await self.catch_up()
        return await super().lookup(name)

    async def entries(self) -> list[tuple[str, Node]]:
        await self.catch_up()
        return await super().entries()


class InodeTable:
    """inode -> node, with the kernel's lookup count of each.

    Attributes:
        notify_kernel: when True, entries that disappear are invalidated in the
            kernel's dentry cache (off when the table is used without a mount).
    """

    def __init__(self) -> None:
        self._nodes: dict[InodeT, Node] = {}
        self._lookups: dict[InodeT, int] = {}
        self._next_inode = itertools.count(ROOT_INODE + 1)
        self._handles: dict[FileHandleT, Handle] = {}
        self._next_handle = itertools.count(1)
        self.notify_kernel = False

    def add(self, node: Node, *, inode: InodeT | None = None) -> Node:
        """Give ``node`` an inode number and make it reachable by it."""
        node.inode = inode if inode is not None else InodeT(next(self._next_inode))
        self._nodes[node.inode] = node
        return node

    def get(self, inode: int) -> Node:
        """The node for ``inode``; ``ESTALE`` if the kernel asks for one we dropped."""
        try:
            return self._nodes[InodeT(inode)]
        except KeyError:
            log.error("kernel referenced unknown inode %d", inode)
            raise fuse_error(errno.ESTALE) from None

    def remember(self, node: Node) -> None:
        """The kernel got one more reference (lookup, readdirplus, create, mkdir)."""
        self._lookups[node.inode] = self._lookups.get(node.inode, 0) + 1

    def lookups(self, node: Node) -> int:
        """The kernel's current lookup count of ``node``."""
        return self._lookups.get(node.inode, 0)

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references; free the node if nothing holds it."""
        key = InodeT(inode)
        left = self._lookups.get(key, 0) - count
        if left > 0:
            self._lookups[key] = left
            return
        if left < 0:
            log.error("lookup count of inode %d went negative (%d)", inode, left)
        self._lookups.pop(key, None)
        node = self._nodes.get(key)
        if node is not None and node.inode != ROOT_INODE and node.forgotten():
            del self._nodes[key]

    def left_tree(self, parent: Node, name: str, node: Node) -> None:
        """``node`` is no longer reachable by name: drop it now, or tell the kernel."""
        if self._lookups.get(node.inode, 0) == 0:
            self._nodes.pop(node.inode, None)
            return
        if self.notify_kernel:
            # Async variant: the sync one may deadlock when called from a handler.
            pyfuse3.invalidate_entry_async(
                pyfuse3.InodeT(parent.inode),
                os.fsencode(name),
                deleted=pyfuse3.InodeT(node.inode),
                ignore_enoent=True,
            )

    def discard(self, node: Node) -> None:
        """Drop a node the kernel never saw (a failed create)."""
        if self._lookups.get(node.inode, 0) == 0:
            self._nodes.pop(node.inode, None)

    def __len__(self) -> int:
        return len(self._nodes)

    # --- handles --------------------------------------------------------------------

    def open_handle(self, handle: Handle) -> FileHandleT:
        """Register an open file; the number goes to the kernel."""
        number = FileHandleT(next(self._next_handle))
        self._handles[number] = handle
        return number

    def handle(self, number: int) -> Handle:
        """The open file ``number``."""
        try:
            return self._handles[FileHandleT(number)]
        except KeyError:
            raise fuse_error(errno.EBADF) from None

    def close_handle(self, number: int) -> Handle | None:
        """Forget an open file (after ``release``)."""
        return self._handles.pop(FileHandleT(number), None)

    def open_handles(self) -> list[Handle]:
        """Every open file (for shutdown)."""
        return list(self._handles.values())
