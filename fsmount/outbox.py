"""``outbox/``: a passthrough of the syncer's spool folder, plus "send on fsync".

Caveats first:

* Every file in ``outbox/`` is a real file in ``state_dir/spool/``; writes land
  there, on disk, never in memory. The syncer's watcher queues a file once it is
  complete: closed by every writer (it probes with a Linux read lease, which the
  kernel refuses while this daemon holds a write descriptor, i.e. while any
  writer has it open through the mount), unchanged for the settle time, and not a
  temporary name. Queuing *moves* the file out of the spool, so it disappears
  from ``outbox/`` and appears in ``sent/``.
* ``outbox/FILE`` goes to the default recipient (``--to``); ``outbox/<recipient>/
  FILE`` to that recipient (``mkdir outbox/bob@example.com``), or to every member
  of a group (``outbox/team/``, expanded when it is sent). Without ``--to``,
  creating or renaming a non-temporary file directly in ``outbox/`` fails with
  ``EDESTADDRREQ`` instead of leaving a file that would never be sent.
* ``fsync`` of a file with a sendable name sends a snapshot of it right away (a
  copy goes straight into the queue). If no write follows before the last close,
  the spool file is removed at that close instead of being sent a second time;
  if writes follow, the final version is sent as another message.
* Metadata operations (``lstat``, ``mkdir``, ``rename``, ``unlink``) run inline on
  the trio thread on purpose: the spool is a local folder and they take
  microseconds. Data transfer and ``fsync`` run in worker threads.
* Attribute and entry caching is off (timeout 0) because the watcher moves files
  behind the kernel's back.
* Only regular files and folders: symlinks, hard links, device nodes and
  extended attributes are refused (``EPERM``/``ENOTSUP``), since none of them
  could be sent. ``chmod`` and ``utimes`` apply to the local spool file only.
* A rename out of ``outbox/`` (to ``inbox/`` or ``sent/``) is ``EXDEV``; ``mv``
  then falls back to copy-and-delete, which the read-only side refuses loudly.
* Refused drops (no recipient, links, special files) are kept with their reason
  in the watcher's :class:`~dockercomms.syncer.watcher.Refusals`, next to the
  files the watcher itself refused: ``.status``, ``dockercomms status`` and a
  desktop notification show them (:func:`refusal_events`), not only the log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pyfuse3
import trio

from dockercomms.core.outbox import Route, is_temporary_name, route
from dockercomms.core.untrusted import shown
from dockercomms.fsmount.desktop import Event
from dockercomms.fsmount.inodes import (
    Attributes,
    Handle,
    InodeTable,
    Node,
    fuse_error,
)
from dockercomms.syncer.watcher import Refusals

if TYPE_CHECKING:
    from dockercomms.syncer.queue import PushQueue

log = logging.getLogger(__name__)

ROOT = PurePosixPath(".")
#: Flags passed through to ``os.open``; ``O_APPEND`` is not among them because
#: FUSE sends explicit offsets and ``pwrite`` on an append descriptor ignores them.
_PASSTHROUGH_FLAGS = os.O_ACCMODE | os.O_SYNC | os.O_DSYNC


def _backing_flags(flags: int) -> int:
    """Writers get a read-write descriptor: ``fsync`` reads it back for the snapshot."""
    passed = flags & _PASSTHROUGH_FLAGS
    if passed & os.O_ACCMODE == os.O_WRONLY:
        passed = (passed & ~os.O_ACCMODE) | os.O_RDWR
    return passed


class OutboxView:
    """The spool, the nodes the kernel knows in it, and sending on ``fsync``.

    Attributes:
        spool: the folder the syncer's watcher watches.
        staging: where ``fsync`` snapshots are written before they are queued
            (same filesystem as the queue, so queuing is a rename).
        queue: the push queue (None when running without a syncer, in tests).
        default_recipient: where ``outbox/FILE`` goes; None means nowhere.
        refusals: where refused drops are kept (the watcher's, when there is one).
    """

    def __init__(
        self,
        table: InodeTable,
        spool: Path,
        staging: Path,
        queue: PushQueue | None,
        default_recipient: str | None,
        refusals: Refusals | None = None,
    ) -> None:
        self.table = table
        self.spool = spool
        self.staging = staging
        self.queue = queue
        self.default_recipient = default_recipient
        self.refusals = refusals if refusals is not None else Refusals()
        spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in staging.iterdir():
            leftover.unlink(missing_ok=True)
        self._by_path: dict[PurePosixPath, OutboxNode] = {}
        st = os.lstat(spool)
        self.root = OutboxDir(self, ROOT)
        self.root.backing = (st.st_dev, st.st_ino)
        table.add(self.root)
        self._by_path[ROOT] = self.root

    def path(self, rel: PurePosixPath) -> Path:
        """The spool path of ``rel``."""
        return self.spool / rel

    def route(self, rel: PurePosixPath) -> Route | None:
        """Where the watcher will send ``rel``; None if never (``core.outbox.route``)."""
        where = route(rel, self.default_recipient)
        return where if where is not None and where.recipient is not None else None

    def check_file_name(self, parent: PurePosixPath, name: str) -> None:
        """Refuse a sendable file name directly in ``outbox/`` when nobody would get it."""
        if parent == ROOT and self.default_recipient is None and not is_temporary_name(name):
            self.refuse(
                parent / name,
                "no default recipient; mount with --to RECIPIENT or use outbox/<recipient>/",
            )
            raise fuse_error(errno.EDESTADDRREQ)

    def refuse(self, rel: PurePosixPath, why: str) -> None:
        """Keep (and, the first time, log) why ``outbox/rel`` was refused."""
        if self.refusals.add(str(rel), why):
            log.warning("outbox/%s refused: %s", shown(str(rel)), why)

    # --- node identity --------------------------------------------------------------

    def node_for(self, rel: PurePosixPath, st: os.stat_result) -> OutboxNode:
        """The node for the file now at ``rel``; a new one if the file is another."""
        node = self._by_path.get(rel)
        is_dir = stat.S_ISDIR(st.st_mode)
        if (
            node is not None
            and node.backing == (st.st_dev, st.st_ino)
            and isinstance(node, OutboxDir) == is_dir
        ):
            return node
        if node is not None:
            self._unmap(rel, node)
        fresh: OutboxNode = OutboxDir(self, rel) if is_dir else OutboxFile(self, rel)
        fresh.backing = (st.st_dev, st.st_ino)
        self.table.add(fresh)
        self._by_path[rel] = fresh
        return fresh

    def gone(self, rel: PurePosixPath) -> None:
        """``rel`` was unlinked or removed through the mount."""
        node = self._by_path.get(rel)
        if node is not None:
            self._unmap(rel, node)

    def moved(self, old: PurePosixPath, new: PurePosixPath) -> None:
        """``old`` was renamed to ``new`` (with everything below it)."""
        replaced = self._by_path.get(new)
        if replaced is not None:
            self._unmap(new, replaced)
        for rel in [r for r in self._by_path if r == old or old in r.parents]:
            node = self._by_path.pop(rel)
            node.rel = new / rel.relative_to(old)
            node.name = node.rel.name
            self._by_path[node.rel] = node

    def forgotten(self, node: OutboxNode) -> None:
        """The kernel forgot ``node``: stop mapping its path to it."""
        if self._by_path.get(node.rel) is node:
            del self._by_path[node.rel]

    def _unmap(self, rel: PurePosixPath, node: OutboxNode) -> None:
        del self._by_path[rel]
        node.attached = False
        self.table.discard(node)

    # --- sending on fsync -----------------------------------------------------------

    async def send_snapshot(self, node: OutboxFile, fd: int) -> None:
        """Queue a copy of the open file now (``fsync`` of a sendable file)."""
        where = self.route(node.rel)
        if where is None or where.recipient is None or self.queue is None:
            return
        recipient, filename = where.recipient, where.filename
        queue = self.queue
        target = self.staging / f"{uuid.uuid4().hex}.snapshot"

        def snapshot() -> None:
            try:
                with open(target, "xb") as out:
                    offset = 0
                    while piece := os.pread(fd, 1024 * 1024, offset):
                        out.write(piece)
                        offset += len(piece)
                    out.flush()
                    os.fsync(out.fileno())
                queue.enqueue(target, recipient, filename)
            finally:
                target.unlink(missing_ok=True)

        await trio.to_thread.run_sync(snapshot)
        log.info("outbox/%s sent on fsync to %s", node.rel, recipient)


def refusal_events(refusals: Refusals) -> list[Event]:
    """Refused drops as desktop events (one per refusal, however often it recurs)."""
    return [
        Event("refused", f"refused:{r.seq}", f"outbox/{r.path}: {r.reason}")
        for r in refusals.recent()
    ]


class OutboxNode(Node):
    """A file or folder in the spool.

    Attributes:
        rel: its path below the spool (kept up to date on rename).
        backing: (st_dev, st_ino) of the spool file it stands for.
    """

    def __init__(self, view: OutboxView, rel: PurePosixPath) -> None:
        super().__init__(rel.name or "outbox")
        self.view = view
        self.rel = rel
        self.backing = (0, 0)

    @property
    def path(self) -> Path:
        """Where it is in the spool."""
        return self.view.path(self.rel)

    def forgotten(self) -> bool:
        if self.rel == ROOT:
            return False
        self.view.forgotten(self)
        return True

    async def _set_common(
        self,
        mode: int | None,
        owner: tuple[int | None, int | None] | None,
        times: tuple[int | None, int | None] | None,
    ) -> os.stat_result:
        st = os.lstat(self.path)
        if owner is not None:
            uid, gid = owner
            if (uid is not None and uid != st.st_uid) or (gid is not None and gid != st.st_gid):
                raise fuse_error(errno.EPERM)
        if mode is not None:
            os.chmod(self.path, stat.S_IMODE(mode))
        if times is not None:
            atime, mtime = times
            os.utime(
                self.path,
                ns=(
                    atime if atime is not None else st.st_atime_ns,
                    mtime if mtime is not None else st.st_mtime_ns,
                ),
                follow_symlinks=False,
            )
        return st


class OutboxDir(OutboxNode):
    """A folder in the spool: ``outbox/`` itself or ``outbox/<recipient>/...``."""

    def refused(self, name: str, why: str) -> None:
        self.view.refuse(self.rel / name, why)

    async def attributes(self) -> Attributes:
        return Attributes.from_stat(os.lstat(self.path), timeout=0.0)

    async def lookup(self, name: str) -> Node:
        rel = self.rel / name
        return self.view.node_for(rel, os.lstat(self.view.path(rel)))

    async def entries(self) -> list[tuple[str, Node]]:
        found: list[tuple[str, Node]] = []
        with os.scandir(self.path) as listing:
            for entry in listing:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # the watcher took it in between
                found.append((entry.name, self.view.node_for(self.rel / entry.name, st)))
        return found

    async def create(self, name: str, mode: int, flags: int) -> tuple[Node, Handle]:
        self.view.check_file_name(self.rel, name)
        rel = self.rel / name
        fd = os.open(
            self.view.path(rel),
            _backing_flags(flags) | os.O_CREAT | os.O_EXCL,
            stat.S_IMODE(mode),
        )
        try:
            node = self.view.node_for(rel, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        assert isinstance(node, OutboxFile)
        node.generation += 1
        return node, OutboxHandle(node, fd, flags)

    async def mkdir(self, name: str, mode: int) -> Node:
        rel = self.rel / name
        os.mkdir(self.view.path(rel), stat.S_IMODE(mode))
        return self.view.node_for(rel, os.lstat(self.view.path(rel)))

    async def unlink(self, name: str) -> None:
        rel = self.rel / name
        os.unlink(self.view.path(rel))
        self.view.gone(rel)

    async def rmdir(self, name: str) -> None:
        rel = self.rel / name
        os.rmdir(self.view.path(rel))
        self.view.gone(rel)

    async def rename(self, name: str, new_parent: Node, new_name: str, flags: int) -> None:
        if not isinstance(new_parent, OutboxDir):
            raise fuse_error(errno.EXDEV)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise fuse_error(errno.EINVAL)
        old, new = self.rel / name, new_parent.rel / new_name
        source, target = self.view.path(old), self.view.path(new)
        if not stat.S_ISDIR(os.lstat(source).st_mode):
            self.view.check_file_name(new_parent.rel, new_name)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(target):
            raise fuse_error(errno.EEXIST)
        os.rename(source, target)
        self.view.moved(old, new)

    async def setattr(
        self,
        *,
        size: int | None,
        mode: int | None,
        owner: tuple[int | None, int | None] | None,
        times: tuple[int | None, int | None] | None,
        handle: Handle | None,
    ) -> Attributes:
        if size is not None:
            raise fuse_error(errno.EISDIR)
        await self._set_common(mode, owner, times)
        return await self.attributes()


class OutboxFile(OutboxNode):
    """A file in the spool.

    Attributes:
        handles: open handles (their descriptors keep a file the watcher moved).
        writers: handles open for writing; the watcher waits while any is open.
        generation: bumped by every write and truncate.
        sent_generation: the generation an ``fsync`` last sent.
    """

    def __init__(self, view: OutboxView, rel: PurePosixPath) -> None:
        super().__init__(view, rel)
        self.handles: set[OutboxHandle] = set()
        self.writers = 0
        self.generation = 0
        self.sent_generation = -1

    async def attributes(self) -> Attributes:
        st = os.fstat(next(iter(self.handles)).fd) if self.handles else os.lstat(self.path)
        return Attributes.from_stat(st, timeout=0.0)

    async def open(self, flags: int) -> Handle:
        try:
            fd = os.open(self.path, _backing_flags(flags))
        except PermissionError:
            fd = os.open(self.path, flags & _PASSTHROUGH_FLAGS)
        return OutboxHandle(self, fd, flags)

    async def setattr(
        self,
        *,
        size: int | None,
        mode: int | None,
        owner: tuple[int | None, int | None] | None,
        times: tuple[int | None, int | None] | None,
        handle: Handle | None,
    ) -> Attributes:
        if size is not None:
            if isinstance(handle, OutboxHandle) and handle.writable:
                os.ftruncate(handle.fd, size)
            else:
                os.truncate(self.path, size)
            self.generation += 1
        await self._set_common(mode, owner, times)
        return await self.attributes()


class OutboxHandle(Handle):
    """An open spool file; writes go straight to the spool file on disk."""

    def __init__(self, node: OutboxFile, fd: int, flags: int) -> None:
        self.node = node
        self.fd = fd
        self.writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        node.handles.add(self)
        if self.writable:
            node.writers += 1

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.fd, size, offset)

    async def write(self, offset: int, data: bytes) -> int:
        written = await trio.to_thread.run_sync(os.pwrite, self.fd, data, offset)
        self.node.generation += 1
        return written

    async def fsync(self, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, self.fd)
        node = self.node
        if self.writable and node.generation != node.sent_generation:
            generation = node.generation
            await node.view.send_snapshot(node, self.fd)
            if node.view.route(node.rel) is not None and node.view.queue is not None:
                node.sent_generation = generation

    async def release(self) -> None:
        node = self.node
        node.handles.discard(self)
        try:
            if self.writable:
                node.writers -= 1
                if node.writers == 0 and node.sent_generation == node.generation:
                    self._drop_sent_file()
        finally:
            os.close(self.fd)

    def _drop_sent_file(self) -> None:
        """An ``fsync`` already sent this exact content: do not let the watcher resend it."""
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.node.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.node.path)
                self.node.view.gone(self.node.rel)
