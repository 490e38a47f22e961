"""``.status`` and the root's control attributes: the mount answers "is it working?".

Caveats first:

* The same JSON document is the file ``.status`` and the root's
  ``user.dockercomms.status`` attribute (s3ql-style control through the mount:
  ``dockercomms umount`` reads the daemon's PID from it, no socket needed).
* ``setfattr -n user.dockercomms.refresh MOUNTPOINT`` polls the inbox now and
  returns when that poll is done; any other attribute on the root is ``ENOTSUP``.
* The outbox part is the syncer's own ``status()`` (queue, upload in flight with
  progress, watcher, registry reachability); downloads in flight are ours.
* ``refusals`` lists the latest drops into ``outbox/`` that were refused, and why
  (names escaped); ``state_dir`` says whose mount this is, so ``dockercomms
  status`` finds it whatever ``--repo`` it was started with.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from dockercomms.core import protocol as p
from dockercomms.fsmount import xattrs
from dockercomms.fsmount.chunk_cache import ChunkCache
from dockercomms.fsmount.inbox_view import InboxView
from dockercomms.fsmount.inodes import Directory, InodeTable, fuse_error
from dockercomms.fsmount.receipt_sender import ReceiptSender
from dockercomms.fsmount.transfers import ChunkSource
from dockercomms.syncer.service import Syncer
from dockercomms.syncer.watcher import Refusals


@dataclass
class StatusReport:
    """Builds the status document from every part of the mount."""

    mountpoint: Path
    identity: str
    state_dir: Path
    repository: str
    inbox: InboxView
    syncer: Syncer | None
    chunks: ChunkSource
    cache: ChunkCache
    receipts: ReceiptSender
    started_at: datetime
    refusals: Refusals | None = None

    async def build(self) -> dict[str, Any]:
        """The whole document."""
        outbox: dict[str, Any] | None = None
        if self.syncer is not None:
            outbox = await trio.to_thread.run_sync(self.syncer.status)
        uploads = (
            [outbox["in_flight"] | {"direction": "upload"}]
            if outbox and outbox.get("in_flight")
            else []
        )
        errors: list[str] = []
        if self.inbox.status.error:
            errors.append(f"inbox: {self.inbox.status.error}")
        errors += [f"outbox: {e}" for e in (outbox or {}).get("errors", [])]
        answered = await trio.to_thread.run_sync(self.receipts.inbox.answer_count)
        return {
            "mountpoint": str(self.mountpoint),
            "pid": os.getpid(),
            "identity": self.identity,
            "state_dir": str(self.state_dir.absolute()),
            "repository": self.repository,
            "started_at": p.format_timestamp(self.started_at),
            "now": p.format_timestamp(datetime.now(UTC)),
            "inbox": self.inbox.status_json(),
            "outbox": outbox,
            "transfers": uploads + self.chunks.status(),
            "cache": self.cache.statistics().to_json(),
            "receipts": {
                "enabled": self.receipts.enabled,
                "answered": answered,
                "failed": self.receipts.failures,
            },
            "errors": errors,
            "refusals": [
                r.to_json() | {"path": f"outbox/{r.path}"}
                for r in (self.refusals.recent() if self.refusals is not None else [])
            ],
        }

    async def json_bytes(self) -> bytes:
        """The document as pretty JSON."""
        return (json.dumps(await self.build(), indent=2) + "\n").encode()


class MountRoot(Directory):
    """The mount's root: ``outbox/``, ``inbox/``, ``sent/``, ``.status``; fixed entries."""

    def __init__(self, table: InodeTable, report: StatusReport, inbox: InboxView) -> None:
        super().__init__("", table, 0o755)
        self.report = report
        self.inbox = inbox

    async def xattrs(self) -> dict[str, bytes]:
        return {xattrs.STATUS: await self.report.json_bytes()}

    async def setxattr(self, name: str, value: bytes) -> None:
        if name != xattrs.REFRESH:
            raise fuse_error(errno.ENOTSUP)
        await self.inbox.refresh()
