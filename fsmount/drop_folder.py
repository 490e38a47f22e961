"""The drop folder's tree, assembled: everything a mount serves except the kernel.

The mount (``mount.py``) assembles it and hands :attr:`DropFolder.operations` to
pyfuse3; the filesystem API tests (``tests/fs_api``) assemble the same tree and
call the operations directly, with no kernel in between.

Caveats first:

* The parts that run in the background (chunk prefetches, receipts) start tasks
  in ``nursery``; nothing here polls on its own: the mount starts an
  :class:`~.inbox_view.InboxPoller` for that.
* ``queue`` is the push queue the outbox sends ``fsync`` snapshots to and
  ``sent/`` lists; ``syncer`` (None in tests) adds its statistics to ``.status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from dockercomms.core.inbox import Inbox
from dockercomms.core.workspace import Workspace
from dockercomms.fsmount.chunk_cache import ChunkCache
from dockercomms.fsmount.inbox_view import InboxView
from dockercomms.fsmount.inodes import ROOT_INODE, InodeTable
from dockercomms.fsmount.operations import DropFolderOperations
from dockercomms.fsmount.outbox import OutboxView
from dockercomms.fsmount.receipt_sender import ReceiptSender
from dockercomms.fsmount.root import MountRoot
from dockercomms.fsmount.sent_view import SentView
from dockercomms.fsmount.status import StatusReport
from dockercomms.fsmount.transfers import ChunkSource
from dockercomms.fsmount.virtual import GeneratedFile
from dockercomms.fsmount.worker_threads import WorkerThreads
from dockercomms.syncer.queue import PushQueue
from dockercomms.syncer.syncer import Syncer
from dockercomms.syncer.watcher import Refusals


@dataclass
class DropFolder:
    """The assembled tree and the parts that serve it."""

    table: InodeTable
    operations: DropFolderOperations
    inbox: InboxView
    outbox: OutboxView
    sent: SentView
    chunks: ChunkSource
    receipts: ReceiptSender
    report: StatusReport


def assemble(
    workspace: Workspace,
    inbox: Inbox,
    queue: PushQueue,
    nursery: trio.Nursery,
    *,
    mountpoint: Path,
    repository: str,
    default_recipient: str | None,
    poll_seconds: float,
    cache_bytes: int,
    receipts: bool = True,
    whole_file: bool = False,
    syncer: Syncer | None = None,
    refusals: Refusals | None = None,
) -> DropFolder:
    """Build ``outbox/``, ``inbox/``, ``sent/`` and ``.status`` under one root."""
    paths = workspace.paths
    threads = WorkerThreads()
    table = InodeTable()
    cache = ChunkCache(paths.chunk_cache_dir, cache_bytes)
    chunks = ChunkSource(inbox, threads, cache, nursery, whole_file=whole_file)
    sender = ReceiptSender(
        inbox, threads, nursery, enabled=receipts, ttl_seconds=workspace.settings.ttl_seconds
    )
    inbox_view = InboxView(table, inbox, threads, chunks, sender, poll_seconds=poll_seconds)
    outbox = OutboxView(
        table, paths.spool_dir, paths.staging_dir, queue, default_recipient, refusals
    )
    sent = SentView(
        table,
        queue,
        inbox,
        threads,
        chunks,
        signer_identity=workspace.key_fingerprint(),
        ttl_seconds=workspace.settings.ttl_seconds,
    )
    report = StatusReport(
        mountpoint,
        workspace.identity,
        paths.state_dir,
        repository,
        inbox_view,
        syncer,
        chunks,
        cache,
        sender,
        datetime.now(UTC),
        refusals,
    )
    root = MountRoot(table, report, inbox_view)
    table.add(root, inode=ROOT_INODE)
    root.attach("outbox", outbox.root)
    root.attach("inbox", inbox_view.root)
    root.attach("sent", sent.root)
    root.attach(".status", GeneratedFile(".status", report.json_bytes, changing=True))
    operations = DropFolderOperations(table, paths.spool_dir)
    return DropFolder(table, operations, inbox_view, outbox, sent, chunks, sender, report)
