"""``.status``: the mount answers "is it working?", from every part's typed statistics.

Caveats first:

* The same JSON document is the file ``.status`` and the root's
  ``user.dockercomms.status`` attribute (s3ql-style control through the mount:
  ``dockercomms umount`` reads the daemon's PID from it, no socket needed), and
  the sd_notify ``STATUS=`` line is made from the same tree
  (``core.status.status_line``).
* The outbox part is the syncer's own statistics (queue, upload in flight with
  progress, watcher, registry reachability); downloads in flight are ours.
* ``refusals`` lists the latest drops into ``outbox/`` that were refused, and why
  (names escaped); ``state_dir`` says whose mount this is, so ``dockercomms
  status`` finds it whatever ``--repo`` it was started with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from dockercomms.core.status import MountStatus, SyncerStatistics, to_json
from dockercomms.fsmount.chunk_cache import ChunkCache
from dockercomms.fsmount.inbox_view import InboxView
from dockercomms.fsmount.receipt_sender import ReceiptSender
from dockercomms.fsmount.transfers import ChunkSource
from dockercomms.syncer.syncer import Syncer
from dockercomms.syncer.watcher import Refusals


@dataclass
class StatusReport:
    """Builds the status tree from every part of the mount.

    Attributes:
        identity: whose mount it is.
        state_dir: that identity's state folder (``status`` matches by it).
        repository: the repository it serves, as text.
    """

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

    async def statistics(self) -> MountStatus:
        """The whole tree, as it is now."""
        outbox: SyncerStatistics | None = None
        if self.syncer is not None:
            outbox = await trio.to_thread.run_sync(self.syncer.statistics)
        uploads = [outbox.in_flight] if outbox is not None and outbox.in_flight else []
        inbox = self.inbox.statistics()
        errors: list[str] = []
        if inbox.last_poll.error:
            errors.append(f"inbox: {inbox.last_poll.error}")
        errors += [f"outbox: {e}" for e in (outbox.errors if outbox is not None else [])]
        answered = await trio.to_thread.run_sync(self.receipts.inbox.answer_count)
        refused = self.refusals.recent() if self.refusals is not None else []
        return MountStatus(
            mountpoint=str(self.mountpoint),
            pid=os.getpid(),
            identity=self.identity,
            state_dir=str(self.state_dir.absolute()),
            repository=self.repository,
            started_at=self.started_at,
            now=datetime.now(UTC),
            inbox=inbox,
            outbox=outbox,
            transfers=[*uploads, *self.chunks.statistics()],
            cache=self.cache.statistics(),
            receipts=self.receipts.statistics(answered),
            errors=errors,
            refusals=[dataclasses.replace(r, path=f"outbox/{r.path}") for r in refused],
        )

    async def json_bytes(self) -> bytes:
        """The tree as pretty JSON (``.status``)."""
        return (json.dumps(to_json(await self.statistics()), indent=2) + "\n").encode()
