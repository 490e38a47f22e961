"""``sent/``: what I sent, per recipient, with its queue state and the recipient's receipt.

Caveats first:

* The listing is the push queue (``PushQueue.items()``), re-read at most twice a
  second when someone looks. State, receipt and errors are extended attributes
  (``user.dockercomms.state``...) and the whole queue is ``sent/.status.json``.
* Receipts are the syncer's: it polls for them and records only receipts whose
  signature verifies and whose signer is the recipient.
* Reading a file serves the queue's own copy while it has one (queued, uploading,
  failed). Once sent, the queue drops its copy and the file is read back from the
  registry like an inbox file (through ``core``'s ``Inbox``): verified at
  ``open()``, chunk by chunk.
* ``rm sent/<recipient>/FILE`` cancels a queued or failed item (its bytes are
  dropped); an item being uploaded is ``EBUSY`` and a sent one ``EPERM``: what is
  sent cannot be unsent. Everything else is read-only (``EROFS``).
* ``expires_at`` assumes the current ``ttl_seconds`` setting; an item queued
  under another setting keeps the TTL it was queued with. A sent message leaves
  the listing once it expires (as in ``inbox/``): recipients refuse it from then
  on and ``gc`` deletes it, so there would be nothing left to read.
* The queue's last error quotes what the registry answered; it is escaped
  before ``user.dockercomms.error`` or ``.status.json`` shows it. One queue item
  that cannot be listed (a bug) is logged once and left out; the others are.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from dockercomms.core.inbox import Inbox, Message
from dockercomms.core.log_once import LogOnce
from dockercomms.core.status import QueueStatistics, to_json
from dockercomms.core.untrusted import shown
from dockercomms.fsmount import xattrs
from dockercomms.fsmount.inodes import (
    DYNAMIC_TIMEOUT,
    Attributes,
    Handle,
    InodeTable,
    Node,
    SyncedDirectory,
    fuse_error,
)
from dockercomms.fsmount.names import folder_name, free_name
from dockercomms.fsmount.transfers import ChunkSource
from dockercomms.fsmount.virtual import GeneratedFile, wants_write
from dockercomms.fsmount.worker_threads import WorkerThreads
from dockercomms.syncer.queue import ItemState, PushQueue, QueueItem

log = logging.getLogger(__name__)

STATUS_FILE = ".status.json"
#: ``ls sent/`` re-reads the queue at most this often.
REFRESH_SECONDS = 0.5


@dataclass
class SentEntry:
    """A queue item as shown in ``sent/<folder>/<name>``."""

    item: QueueItem
    folder: str
    name: str


class SentDir(SyncedDirectory):
    """``sent/`` and ``sent/<recipient>/``: listing re-reads the queue first."""

    refuse = errno.EROFS

    def __init__(self, name: str, table: InodeTable, view: SentView) -> None:
        super().__init__(name, table, 0o755)
        self.view = view

    async def catch_up(self) -> None:
        await self.view.refresh()

    async def unlink(self, name: str) -> None:
        await self.view.refresh()
        node = self.children.get(name)
        if not isinstance(node, SentFile):
            raise fuse_error(errno.ENOENT if node is None else errno.EROFS)
        await self.view.cancel(node.entry)


class SentFile(Node):
    """One queue item."""

    refuse = errno.EROFS

    def __init__(self, view: SentView, entry: SentEntry) -> None:
        super().__init__(entry.name)
        self.view = view
        self.entry = entry

    async def attributes(self) -> Attributes:
        item = self.entry.item
        moment = item.sent_at or item.enqueued_at
        return Attributes(
            stat.S_IFREG | 0o444,
            size=item.size,
            mtime_ns=int(moment.timestamp() * 1_000_000_000),
            timeout=DYNAMIC_TIMEOUT,
        )

    async def open(self, flags: int) -> Handle:
        if wants_write(flags):
            raise fuse_error(errno.EROFS)
        return await self.view.open(self.entry)

    async def xattrs(self) -> dict[str, bytes]:
        await self.view.refresh()
        return self.view.xattrs_of(self.entry.item)


class LocalHandle(Handle):
    """The queue's own copy of an item not sent yet."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self.fd, size, offset)

    async def release(self) -> None:
        os.close(self.fd)


class RemoteHandle(Handle):
    """A sent item, read back from the registry through verified chunks."""

    def __init__(self, chunks: ChunkSource, message: Message) -> None:
        self.chunks = chunks
        self.message = message

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.chunks.read(self.message, offset, size)


class SentView:
    """The state behind ``sent/``.

    Attributes:
        signer_identity: my key's fingerprint (key-pair signing), else empty.
    """

    def __init__(
        self,
        table: InodeTable,
        queue: PushQueue,
        inbox: Inbox,
        threads: WorkerThreads,
        chunks: ChunkSource,
        *,
        signer_identity: str,
        ttl_seconds: int,
    ) -> None:
        self.table = table
        self.queue = queue
        self.inbox = inbox
        self.threads = threads
        self.chunks = chunks
        self.signer_identity = signer_identity
        self.ttl_seconds = ttl_seconds
        self.root = SentDir("sent", table, self)
        table.add(self.root)
        self.root.attach(STATUS_FILE, GeneratedFile(STATUS_FILE, self._status_bytes, changing=True))
        self.files: dict[str, SentFile] = {}
        self._folders: dict[str, SentDir] = {}
        self._lock = trio.Lock()
        self._refreshed_at = -1e9
        self._unexpected = LogOnce(log)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the queue if the last read is older than ``REFRESH_SECONDS``."""
        async with self._lock:
            if not force and time.monotonic() - self._refreshed_at < REFRESH_SECONDS:
                return
            items = await trio.to_thread.run_sync(self.queue.items)
            self._refreshed_at = time.monotonic()
            self._apply(items)

    def _apply(self, items: list[QueueItem]) -> None:
        now = datetime.now(UTC)
        items = [item for item in items if not self._expired(item, now)]
        current = {item.id for item in items}
        for item_id in [i for i in self.files if i not in current]:
            self._remove(self.files.pop(item_id).entry)
        self._unexpected.keep_only(frozenset(current))
        for item in items:
            try:
                self._show(item)
            except Exception as exc:
                self._unexpected.log(
                    logging.ERROR,
                    item.id,
                    "sent item %s cannot be listed (%s); left out",
                    item.id,
                    type(exc).__name__,
                    exc_info=True,
                )

    def _show(self, item: QueueItem) -> None:
        known = self.files.get(item.id)
        if known is not None:
            known.entry.item = item
            return
        folder = self._folder(item.recipient)
        suffix = f"{item.created_at:%Y%m%d}-{item.message_id[:8]}"
        name = free_name(item.filename, suffix, folder.children)
        node = SentFile(self, SentEntry(item, folder.name, name))
        folder.attach(name, node)
        self.files[item.id] = node

    def _expired(self, item: QueueItem, now: datetime) -> bool:
        """A sent message past its ``expires_at``: readers refuse it and gc deletes it."""
        return item.state == ItemState.SENT and self._expires_at(item) <= now

    def _expires_at(self, item: QueueItem) -> datetime:
        return item.created_at + timedelta(seconds=self.ttl_seconds)

    def _folder(self, recipient: str) -> SentDir:
        name = folder_name(recipient)
        folder = self._folders.get(name)
        if folder is None:
            folder = SentDir(name, self.table, self)
            self.root.attach(name, folder)
            self._folders[name] = folder
        return folder

    def _remove(self, entry: SentEntry) -> None:
        folder = self._folders.get(entry.folder)
        if folder is None:
            return
        folder.detach(entry.name)
        if not folder.children:
            self.root.detach(folder.name)
            del self._folders[folder.name]

    async def cancel(self, entry: SentEntry) -> None:
        """``rm``: drop a queued or failed item; refuse the rest."""
        item = entry.item
        if item.state == ItemState.UPLOADING:
            raise fuse_error(errno.EBUSY)
        if item.state == ItemState.SENT:
            raise fuse_error(errno.EPERM)
        try:
            await trio.to_thread.run_sync(self.queue.cancel, item.id)
        except KeyError:
            # It started uploading (or was sent) since we looked.
            raise fuse_error(errno.EBUSY) from None
        await self.refresh(force=True)

    async def open(self, entry: SentEntry) -> Handle:
        """The queue's copy if it still has one, else the message from the registry."""
        item = entry.item
        try:
            fd = os.open(item.data_path, os.O_RDONLY)
        except FileNotFoundError:
            await self.refresh(force=True)
            item = entry.item
            if item.digest is None:
                raise fuse_error(errno.EIO) from None
        else:
            return LocalHandle(fd)
        verified = await self.threads.run(self.inbox.verify, item.digest, to_me=False)
        message = verified.message
        if message.total_bytes:
            await self.chunks.warm(message, 0)
        return RemoteHandle(self.chunks, message)

    def xattrs_of(self, item: QueueItem) -> dict[str, bytes]:
        """``user.dockercomms.*`` of a sent file."""
        return xattrs.encode(
            {
                "sender": self.inbox.me,
                "recipient": item.recipient,
                "digest": item.digest,
                "verified": "true" if item.receipt else None,
                "signer_identity": self.signer_identity,
                "created_at": xattrs.timestamp(item.created_at),
                "expires_at": xattrs.timestamp(self._expires_at(item)),
                "receipt": item.receipt,
                "state": str(item.state),
                "error": shown(item.last_error) if item.last_error else None,
            }
        )

    async def _status_bytes(self) -> bytes:
        await self.refresh()
        statistics = await trio.to_thread.run_sync(self.queue.statistics)
        return (json.dumps(self._status_document(statistics), indent=2) + "\n").encode()

    def _status_document(self, statistics: QueueStatistics) -> dict[str, Any]:
        """``sent/.status.json``: every item with its path, plus queue statistics."""
        return {
            "statistics": to_json(statistics),
            "items": [
                _item_json(node.entry.item)
                | {"path": f"sent/{node.entry.folder}/{node.entry.name}"}
                for node in self.files.values()
            ],
        }


def _item_json(item: QueueItem) -> dict[str, Any]:
    """A queue item for ``.status.json``, its registry-quoting error escaped."""
    shown_item = item.to_json()
    if item.last_error:
        shown_item["last_error"] = shown(item.last_error)
    return shown_item
