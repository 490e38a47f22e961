"""The pyfuse3 request handlers: decode, call the node, turn errors into ``errno``. Thin.

Caveats first:

* Nothing but ``FUSEError`` leaves a handler (:func:`boundary`). Nodes raise
  ``FUSEError`` themselves for what they refuse (``inodes.fuse_error``: ``EROFS``,
  ``EPERM``...); everything else becomes one here: ``OSError`` keeps its errno,
  ``DockerCommsError`` goes through :mod:`.errno_map`, and anything else is a
  bug, logged with its traceback and answered with ``EIO`` (an escaping
  exception would stop pyfuse3's main loop and with it the mount).
* Lookup counts are exact: ``lookup``, ``create``, ``mkdir`` and each entry
  ``readdir_reply`` accepts count one; ``forget`` gives them back
  (:class:`~.inodes.InodeTable`).
* ``readdir`` works on a snapshot taken at ``opendir``, so entries that come or go
  during a listing never make it skip or repeat others.
* Links, symlinks and device nodes are refused everywhere (``EPERM``, ``EROFS``
  in read-only views); nothing could send them. ``.``/``..`` lookups are not
  supported (no NFS export).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from dockercomms.core.errors import DockerCommsError
from dockercomms.fsmount.errno_map import errno_for
from dockercomms.fsmount.inodes import Attributes, Handle, InodeTable, Node, fuse_error

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def boundary(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only ``FUSEError`` out of a handler."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except trio.Cancelled:
            raise
        except DockerCommsError as exc:
            raise fuse_error(errno_for(exc)) from exc
        except OSError as exc:
            raise fuse_error(exc.errno or errno.EIO) from exc
        except Exception as exc:
            log.exception("%s failed unexpectedly", handler.__name__)
            raise fuse_error(errno.EIO) from exc

    return wrapper


def entry_attributes(node: Node, attrs: Attributes) -> pyfuse3.EntryAttributes:
    """Our attributes as pyfuse3 wants them."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = pyfuse3.InodeT(node.inode)
    entry.generation = 0
    entry.entry_timeout = attrs.timeout
    entry.attr_timeout = attrs.timeout
    entry.st_mode = pyfuse3.ModeT(attrs.mode)
    entry.st_nlink = attrs.nlink
    entry.st_uid = attrs.uid
    entry.st_gid = attrs.gid
    entry.st_rdev = 0
    entry.st_size = attrs.size
    entry.st_blksize = 128 * 1024
    entry.st_blocks = (attrs.size + 511) // 512
    entry.st_mtime_ns = attrs.mtime_ns
    entry.st_ctime_ns = attrs.ctime_ns if attrs.ctime_ns is not None else attrs.mtime_ns
    entry.st_atime_ns = attrs.atime_ns if attrs.atime_ns is not None else attrs.mtime_ns
    return entry


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Listing(Handle):
    """An open directory: the entries as they were at ``opendir``."""

    def __init__(self, entries: list[tuple[str, Node]]) -> None:
        self.entries = entries


class DropFolderOperations(pyfuse3.Operations):
    """Routes every request to the node it is about.

    Attributes:
        table: inodes, lookup counts and open handles.
        statfs_path: the folder whose filesystem ``df`` reports (the spool's).
    """

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, table: InodeTable, statfs_path: Path) -> None:
        super().__init__()
        self.table = table
        self.statfs_path = statfs_path

    async def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = entry_attributes(node, await node.attributes())
        self.table.remember(node)
        return attrs

    # --- names ----------------------------------------------------------------------

    @boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.table.get(parent_inode).lookup(_name(name))
        return await self._entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.table.forget(inode, count)

    @boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        return entry_attributes(node, await node.attributes())

    @boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        owner = None
        if fields.update_uid or fields.update_gid:
            owner = (
                attr.st_uid if fields.update_uid else None,
                attr.st_gid if fields.update_gid else None,
            )
        times = None
        if fields.update_atime or fields.update_mtime:
            times = (
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        attrs = await node.setattr(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            owner=owner,
            times=times,
            handle=self.table.handle(fh) if fh is not None else None,
        )
        return entry_attributes(node, attrs)

    @boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        node = await parent.mkdir(_name(name), mode & ~ctx.umask)
        return await self._entry(node)

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.table.get(parent_inode).unlink(_name(name))

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.table.get(parent_inode).rmdir(_name(name))

    @boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self.table.get(parent_inode_old)
        new_parent = self.table.get(parent_inode_new)
        await old_parent.rename(_name(name_old), new_parent, _name(name_new), flags)

    def _no_special_files(self, parent_inode: int, name: bytes, what: str) -> pyfuse3.FUSEError:
        """Only regular files can be sent: ``EROFS`` in read-only views, else ``EPERM``."""
        parent = self.table.get(parent_inode)
        if parent.refuse == errno.EROFS:
            return fuse_error(errno.EROFS)
        parent.refused(_name(name), f"{what} cannot be sent; only regular files are")
        return fuse_error(errno.EPERM)

    @boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._no_special_files(parent_inode, name, "a device node or FIFO")

    @boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._no_special_files(parent_inode, name, "a symbolic link")

    @boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._no_special_files(new_parent_inode, new_name, "a hard link")

    @boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        raise fuse_error(errno.EINVAL)

    # --- directories ----------------------------------------------------------------

    @boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        entries = await self.table.get(inode).entries()
        return self.table.open_handle(Listing(entries))

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.table.handle(fh)
        assert isinstance(listing, Listing)
        for index in range(start_id, len(listing.entries)):
            name, node = listing.entries[index]
            if not node.attached:
                continue  # gone since opendir; its inode may be freed already
            try:
                attrs = entry_attributes(node, await node.attributes())
            except FileNotFoundError:
                continue  # an outbox file the syncer took meanwhile
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                return
            self.table.remember(node)

    @boundary
    async def releasedir(self, fh: int) -> None:
        self.table.close_handle(fh)

    @boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # --- files ----------------------------------------------------------------------

    @boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        handle = await self.table.get(inode).open(flags)
        return self._file_info(handle)

    @boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.table.get(parent_inode)
        node, handle = await parent.create(_name(name), mode & ~ctx.umask, flags)
        try:
            attrs = await self._entry(node)
        except BaseException:
            await handle.release()
            raise
        return self._file_info(handle), attrs

    def _file_info(self, handle: Handle) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(
            fh=pyfuse3.FileHandleT(self.table.open_handle(handle)),
            direct_io=handle.direct_io,
            keep_cache=handle.keep_cache,
        )

    @boundary
    async def read(  # type: ignore[override]  # the stub says bytes; any buffer is replied
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        # A view of a verified block in memory is replied without a copy of its own
        # (pyfuse3 takes the buffer with PyObject_GetBuffer).
        return await self.table.handle(fh).read(off, size)

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.table.handle(fh).write(off, buf)

    @boundary
    async def flush(self, fh: int) -> None:
        await self.table.handle(fh).flush()

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.table.handle(fh).fsync(datasync)

    @boundary
    async def release(self, fh: int) -> None:
        handle = self.table.close_handle(fh)
        if handle is not None:
            await handle.release()

    # --- extended attributes --------------------------------------------------------

    @boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # Only user.* is ours. ``ls -l`` asks two others per file (security.selinux,
            # the ACL); EOPNOTSUPP makes it stop asking for the rest of this filesystem
            # (coreutils remembers it per device), and no node's attributes are made
            # (a database read per inbox file): ``ls -l`` of 10,000 messages took 5 s.
            self.table.get(inode)
            raise fuse_error(errno.EOPNOTSUPP)
        values = await self.table.get(inode).xattrs()
        try:
            return values[_name(name)]
        except KeyError:
            raise fuse_error(pyfuse3.ENOATTR) from None

    @boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in await self.table.get(inode).xattrs()]

    @boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.table.get(inode).setxattr(_name(name), value)

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.table.get(inode).removexattr(_name(name))

    # --- filesystem -----------------------------------------------------------------

    @boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.statfs_path)
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(data, attr, getattr(st, attr))
        for attr in ("f_files", "f_ffree", "f_favail"):
            setattr(data, attr, getattr(st, attr))
        data.f_namemax = 255
        return data
