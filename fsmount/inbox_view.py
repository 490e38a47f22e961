"""``inbox/``: messages to me, listed from the registry, verified before they are exposed.

Caveats first:

* Only messages whose manifest parsed and whose signature, signer and sender
  verified are listed under ``inbox/<sender>/``. Everything else is listed in
  ``inbox/.rejected/<tag>`` with the reason as the file's content.
* Listing verifies each *new* tag once; later polls only list tags. ``open()``
  verifies again (manifest by digest, signature, signer, sender, expiry) because
  the registry or ``trust.json`` may have changed since, and then fetches and
  checks the first chunk (``--whole-file``: every chunk, held until close), so a
  message whose first chunk is corrupt fails at ``open()`` with ``EIO``. A later
  corrupt chunk fails the ``read()`` that needs it.
* A policy failure at ``open()`` is ``EACCES``; corrupt data is ``EIO``. Either way
  the reason is logged, kept as ``user.dockercomms.error`` on the file (which
  stays listed so the reason can be read) and the message is added to
  ``.rejected/``. Corruption is sticky for the life of the mount; a policy
  failure is re-checked at the next open.
* Receipts (``receipt_sender``) answer only what verified: ``accepted`` after the
  first read, ``rejected`` for a message whose signature verified as its claimed
  sender and whose own content then failed (a bad chunk, a date in the future).
  Unsigned, untrusted, mismatched and expired messages get none.
* A sealed message (SPEC 9) is listed under its real name once its signature
  verified and its ``sealed`` annotation opened (``Inbox.check_tags``);
  ``user.dockercomms.sealed`` says ``true`` or ``false``. One sealed to none of my
  age keys, or a plaintext one from a sender who must seal, is in ``.rejected/``.
* Whatever a message or the registry claims is escaped before it is shown
  (``.rejected/`` contents and attributes, logs, ``.status``); tags that break
  the OCI tag grammar are not listed at all.
* One bad tag never stops a poll: an unexpected exception while checking it is
  logged once with its traceback and the tag is listed in ``.rejected/``; a
  poll that fails as a whole is logged once and the next one runs on time.
  Conditions that repeat at every poll are logged once until they change.
* When ``trust.json`` changes, rejected tags are verified again at the next
  poll, so trusting a sender makes their waiting messages appear.
* Those rules (new, gone, expired, aliased, rejected, retried) are
  ``core.inbox_state``'s pure functions; this view only applies the changes they
  return to its inodes. Tags are checked through ``core``'s ``Inbox.check_tags``,
  the same way ``ls`` checks them.
* Names are given once and kept: the first message listed under a name keeps it;
  a later one with the same name in the same sender folder gets
  ``stem (YYYYMMDD-<digest8>).ext``.
* ``ls inbox/...`` waits for the first poll. A signature verified once is kept
  (``core.inbox``: the state database, by manifest digest and trust policy), so
  only the first listing ever of a big inbox verifies every message (about 1.5 ms
  each on the embedded registry); after a restart, 10,000 messages list in about
  a second (parsed again, expiry by the clock), and ``open()`` still verifies.
* On the embedded store :class:`InboxPoller` also polls when the layout's index
  changes (inotify, ``Inbox.watch``), so a new message shows within about half a
  second whatever ``--poll`` says; over HTTP only the interval polls. After the
  first poll the store is read ahead (``Inbox.read_ahead``), so the first new
  message is not kept waiting for the referrers table.
* A poll that finds nothing new costs about 12 ms of CPU with 10,000 listed
  (measured in process; 16 ms of the whole daemon per poll in
  ``python -m bench --suite inbox``, was ~130 ms): each item keeps its ``Listed``
  view, and the embedded store answers the tag list from the index it already
  parsed. A poll after the index changed costs more (~0.3 s at 10,000: the index
  is parsed again), which is most of the delay from a send to its listing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from dockercomms.core import protocol
from dockercomms.core.errors import (
    ChunkError,
    DigestMismatchError,
    DockerCommsError,
    ExpiredError,
    LimitExceededError,
    SealedDataError,
)
from dockercomms.core.inbox import CheckedTag, Inbox, Message, StoreWatch, VerifiedSigner
from dockercomms.core.inbox_state import InboxState, Listed, reconcile, tags_to_check
from dockercomms.core.log_once import LogOnce
from dockercomms.core.status import InboxStatistics, PollStatistics
from dockercomms.core.untrusted import shown
from dockercomms.fsmount import xattrs
from dockercomms.fsmount.errno_map import errno_for, is_rejection, reason
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
from dockercomms.fsmount.receipt_sender import ReceiptSender
from dockercomms.fsmount.transfers import ChunkSource, HeldChunks
from dockercomms.fsmount.virtual import GeneratedFile, fixed, wants_write
from dockercomms.fsmount.worker_threads import WorkerThreads

log = logging.getLogger(__name__)

REJECTED = ".rejected"
REFRESH = ".refresh"
#: Longest a refresh trigger (``touch inbox/.refresh``) waits for its poll.
REFRESH_WAIT_SECONDS = 120.0
#: Longest ``ls inbox/`` waits for the first poll after mounting.
FIRST_POLL_WAIT_SECONDS = 300.0
#: New tags are checked in batches (core.listing), this many at once over HTTP.
SCAN_WORKERS = 3


# --- what a poll finds ----------------------------------------------------------------


@dataclass
class PollStatus:
    """The last poll, for ``.status``."""

    polls: int = 0
    started_at: datetime | None = None
    seconds: float | None = None
    added: int = 0
    removed: int = 0
    rejected: int = 0
    error: str | None = None
    transient: list[str] = field(default_factory=list)

    def statistics(self) -> PollStatistics:
        """The last poll (``core.status``)."""
        return PollStatistics(
            self.polls,
            self.started_at,
            self.seconds,
            self.added,
            self.removed,
            self.rejected,
            self.error,
            self.transient[-10:],
        )


@dataclass
class InboxItem:
    """A verified message shown in ``inbox/<sender>/``.

    Attributes:
        verified_at: when listing or the latest ``open()`` verified it.
        error: the rejection found by the latest ``open()``/``read()``; cleared
            by a later successful verification unless ``corrupt``.
        failure: why the latest ``open()``/``read()`` failed, rejection or not
            (``user.dockercomms.error``); cleared by the next success.
        corrupt: a chunk failed its digest or shape check; every later ``open()``
            fails with ``EIO``.
        read_ok: a read succeeded (the ``accepted`` receipt is due).
    """

    tag: str
    message: Message
    signer: VerifiedSigner
    verified_at: datetime
    node: InboxFile | None = None
    folder: str = ""
    error: DockerCommsError | None = None
    failure: str | None = None
    corrupt: bool = False
    read_ok: bool = False
    _listed: Listed | None = None

    def listed(self) -> Listed:
        """This item as ``core.inbox_state`` sees it; made again only when it changed.

        Every poll asks this of every item: with 10,000 listed, making them anew
        each time was most of an idle poll's CPU.
        """
        failing = self.error is not None
        known = self._listed
        if known is None or known.failing != failing or known.corrupt != self.corrupt:
            message = self.message
            known = Listed(
                message.digest,
                message.sender,
                message.message_id,
                message.expires_at,
                failing=failing,
                corrupt=self.corrupt,
            )
            self._listed = known
        return known


# --- nodes ----------------------------------------------------------------------------


class InboxDir(SyncedDirectory):
    """``inbox/`` and ``inbox/<sender>/``: read-only; listing waits for the first poll."""

    refuse = errno.EROFS

    def __init__(self, name: str, table: InodeTable, view: InboxView) -> None:
        super().__init__(name, table, 0o555)
        self.view = view

    async def catch_up(self) -> None:
        await self.view.first_poll()


class InboxFile(Node):
    """A verified message: ``open()`` verifies again, ``read()`` serves verified chunks."""

    refuse = errno.EROFS

    def __init__(self, view: InboxView, item: InboxItem) -> None:
        super().__init__(item.message.filename)
        self.view = view
        self.item = item

    async def attributes(self) -> Attributes:
        created = int(self.item.message.created_at.timestamp() * 1_000_000_000)
        return Attributes(
            stat.S_IFREG | 0o444,
            size=self.item.message.total_bytes,
            mtime_ns=created,
            timeout=DYNAMIC_TIMEOUT,
        )

    async def open(self, flags: int) -> Handle:
        if wants_write(flags):
            raise fuse_error(errno.EROFS)
        message, held = await self.view.open_message(self.item)
        return InboxHandle(self.view, self.item, message, held)

    async def xattrs(self) -> dict[str, bytes]:
        return await self.view.xattrs_of(self.item)


class InboxHandle(Handle):
    """An open inbox file.

    ``keep_cache`` is on: a message's bytes never change (they are addressed by the
    signed digest), and only verified bytes ever reach the kernel's page cache, so
    a second read may be served from it. ``open`` still re-checks the signature and
    trust policy every time, so a sender no longer trusted gets EACCES even while
    pages are cached.
    """

    keep_cache = True

    def __init__(
        self, view: InboxView, item: InboxItem, message: Message, held: HeldChunks
    ) -> None:
        self.view = view
        self.item = item
        self.message = message
        self.held = held  # --whole-file: every chunk, verified, pinned until release

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self.view.read(self.item, self.message, offset, size)

    async def release(self) -> None:
        self.held.release()


class RefreshFile(Node):
    """``inbox/.refresh``: ``touch`` it (or write to it) to poll the registry now."""

    refuse = errno.EROFS

    def __init__(self, view: InboxView) -> None:
        super().__init__(REFRESH)
        self.view = view

    async def attributes(self) -> Attributes:
        started = self.view.status.started_at
        mtime = int(started.timestamp() * 1e9) if started else None
        return Attributes(stat.S_IFREG | 0o644, size=0, mtime_ns=mtime or time.time_ns())

    async def open(self, flags: int) -> Handle:
        if wants_write(flags):
            await self.view.refresh()
        return _DiscardHandle()

    async def setattr(
        self,
        *,
        size: int | None,
        mode: int | None,
        owner: tuple[int | None, int | None] | None,
        times: tuple[int | None, int | None] | None,
        handle: Handle | None,
    ) -> Attributes:
        if mode is not None or owner is not None:
            raise fuse_error(errno.EPERM)
        await self.view.refresh()
        return await self.attributes()


class _DiscardHandle(Handle):
    """Writes to ``.refresh`` are accepted and dropped (the open already triggered)."""

    direct_io = True

    async def read(self, offset: int, size: int) -> bytes:
        return b""

    async def write(self, offset: int, data: bytes) -> int:
        return len(data)


# --- the view -------------------------------------------------------------------------


class InboxView:
    """The state behind ``inbox/``: items by tag, rejected tags, polling, reading.

    Attributes:
        root: the ``inbox/`` directory node.
        items: verified messages by tag.
        rejected: reason text by tag, for ``.rejected/``.
        aliases: tags that name a message already listed under another tag.
        status: the last poll.
    """

    def __init__(
        self,
        table: InodeTable,
        inbox: Inbox,
        threads: WorkerThreads,
        chunks: ChunkSource,
        receipts: ReceiptSender,
        *,
        poll_seconds: float,
    ) -> None:
        self.table = table
        self.inbox = inbox
        self.threads = threads
        self.chunks = chunks
        self.receipts = receipts
        self.poll_seconds = poll_seconds
        self.root = InboxDir("inbox", table, self)
        table.add(self.root)
        self.rejected_dir = InboxDir(REJECTED, table, self)
        self.root.attach(REJECTED, self.rejected_dir)
        self.root.attach(REFRESH, RefreshFile(self))
        self.items: dict[str, InboxItem] = {}
        self.rejected: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        #: Tags of messages past their TTL: no longer listed, and not checked again.
        self.expired: set[str] = set()
        self.status = PollStatus()
        self.poller: InboxPoller | None = None
        #: New messages are seen by watching the store (the embedded layout's index),
        #: not only by polling every ``poll_seconds``.
        self.watching = False
        self._folders: dict[str, InboxDir] = {}
        self._ready = trio.Event()
        self._trust_stamp: tuple[int, int] | None = None
        # Per-tag conditions met at every poll, each logged once until it changes.
        self._rejections = LogOnce(log)
        self._transient = LogOnce(log)
        self._unexpected = LogOnce(log)
        self._poll_failure = LogOnce(log)

    # --- polling --------------------------------------------------------------------

    async def first_poll(self) -> None:
        """Wait (bounded) until the first poll has listed the inbox."""
        if not self._ready.is_set():
            with trio.move_on_after(FIRST_POLL_WAIT_SECONDS):
                await self._ready.wait()

    async def refresh(self) -> None:
        """Poll now and wait (bounded) until that poll is done."""
        if self.poller is not None:
            await self.poller.refresh(REFRESH_WAIT_SECONDS)

    async def poll_once(self) -> None:
        """List the registry, verify new tags, and update the tree (``core.inbox_state``)."""
        started = datetime.now(UTC)
        clock = time.monotonic()
        stamp = self.inbox.trust_version()
        try:
            tags = await self.threads.run(self.inbox.tags)
            wanted = tags_to_check(self._state(), tags, trust_changed=stamp != self._trust_stamp)
            fresh = (
                await self.threads.run(self.inbox.check_tags, wanted, workers=SCAN_WORKERS)
                if wanted
                else []
            )
        except DockerCommsError as exc:
            self.status.error = reason(exc)
            self._poll_failure.log(logging.WARNING, "poll", "inbox poll failed: %s", reason(exc))
            return
        finally:
            self.status.polls += 1
            self.status.started_at = started
            self.status.seconds = round(time.monotonic() - clock, 3)
            self._ready.set()
        self._trust_stamp = stamp
        self.status.error = None
        if self._poll_failure.clear("poll"):
            log.info("inbox poll works again")
        self._apply(frozenset(tags), fresh)
        if self.status.removed:
            # Kept verification results of messages no longer listed go (core.inbox).
            listed = [item.message.digest for item in self.items.values()]
            await self.threads.run(self.inbox.keep_verified, listed)

    def _state(self) -> InboxState:
        """What is listed now, as ``core.inbox_state`` sees it."""
        listed = {tag: item.listed() for tag, item in self.items.items()}
        return InboxState(
            listed, frozenset(self.rejected), dict(self.aliases), frozenset(self.expired)
        )

    def _apply(self, tags: frozenset[str], fresh: list[CheckedTag]) -> None:
        """Trio thread: apply what ``reconcile`` says the poll changed to the tree."""
        for notes in (self._rejections, self._transient, self._unexpected):
            notes.keep_only(tags)
        changes = reconcile(self._state(), tags, fresh, datetime.now(UTC))
        for tag in changes.gone + changes.expired_now:
            self._remove_item(tag)
        for tag in changes.unrejected:
            self._remove_rejected(tag)
        self.aliases = changes.aliases
        self.expired = set(changes.expired)
        for entry in changes.recovered:
            # A retried tag verified this time (trust.json changed).
            item = self.items[entry.tag]
            assert entry.signer is not None
            item.error, item.failure, item.signer = None, None, entry.signer
        added = sum(1 for entry in changes.added if self._guarded(entry.tag, self._add_item, entry))
        for entry in fresh:
            if entry.error is None or is_rejection(entry.error):
                self._transient.clear(entry.tag)  # checked now: a later trouble is news
        for entry in changes.rejected:
            assert entry.error is not None
            self._guarded(
                entry.tag,
                self._add_rejected,
                entry.tag,
                entry.message,
                entry.error,
                entry.answerable,
            )
        for entry in changes.transient:
            # Registry trouble for this one tag: not known, so the next poll retries it.
            assert entry.error is not None
            text = reason(entry.error)
            self.status.transient = [*self.status.transient[-9:], text]
            self._transient.log(
                logging.INFO, entry.tag, "inbox tag %s not checked this time: %s", entry.tag, text
            )
        removed = len(changes.gone) + len(changes.expired_now)
        self.status.added, self.status.removed = added, removed
        self.status.rejected = len(changes.rejected)
        if added or removed:
            log.info("inbox: %d new, %d gone, %d listed", added, removed, len(self.items))

    def _guarded(self, tag: str, step: Callable[..., bool | None], *args: Any) -> bool:
        """``step(*args)`` for one tag; an unexpected failure is logged once and skipped."""
        try:
            return bool(step(*args))
        except Exception as exc:
            self._unexpected.log(
                logging.ERROR,
                tag,
                "inbox tag %s failed unexpectedly (%s); skipped",
                tag,
                type(exc).__name__,
                exc_info=True,
            )
            return False

    def _add_item(self, entry: CheckedTag) -> bool:
        """List a new verified message under its sender's folder, by a name it keeps."""
        assert entry.message is not None and entry.signer is not None
        message = entry.message
        item = InboxItem(entry.tag, message, entry.signer, datetime.now(UTC))
        folder = self._folder(message.sender)
        suffix = f"{message.created_at:%Y%m%d}-{message.digest.split(':')[1][:8]}"
        name = free_name(message.filename, suffix, folder.children)
        item.node = InboxFile(self, item)
        item.folder = folder.name
        folder.attach(name, item.node)
        self.items[entry.tag] = item
        return True

    def _folder(self, sender: str) -> InboxDir:
        name = folder_name(sender)
        folder = self._folders.get(name)
        if folder is None:
            folder = InboxDir(name, self.table, self)
            self.root.attach(name, folder)
            self._folders[name] = folder
        return folder

    def _remove_item(self, tag: str) -> None:
        item = self.items.pop(tag)
        folder = self._folders.get(item.folder)
        if folder is None or item.node is None:
            return
        for name, node in list(folder.children.items()):
            if node is item.node:
                folder.detach(name)
        if not folder.children:
            self.root.detach(folder.name)
            del self._folders[folder.name]

    def _add_rejected(
        self,
        tag: str,
        message: Message | None,
        error: DockerCommsError,
        answerable: VerifiedSigner | None,
    ) -> None:
        """List ``tag`` in ``.rejected/``; answer it only if ``answerable`` signed it.

        ``answerable`` is the verified signer, trusted as the claimed sender, of a
        message that failed on its own content; everything else (unsigned,
        untrusted, mismatched) gets no receipt, and neither does expiry.
        """
        text = reason(error)
        self._rejections.log(logging.WARNING, tag, "inbox: rejected %s: %s", tag, text)
        if self.rejected.get(tag) != text:
            self.rejected[tag] = text
            self.rejected_dir.detach(tag)
            content = _rejection_text(tag, message, text).encode()
            self.rejected_dir.attach(
                tag,
                GeneratedFile(
                    tag,
                    fixed(content),
                    changing=False,
                    extended=_rejection_xattrs(message, text),
                ),
            )
        if message is not None and answerable is not None and not isinstance(error, ExpiredError):
            self.receipts.rejected(message, text, answerable)

    def _remove_rejected(self, tag: str) -> None:
        if self.rejected.pop(tag, None) is not None:
            self.rejected_dir.detach(tag)

    # --- reading --------------------------------------------------------------------

    async def open_message(self, item: InboxItem) -> tuple[Message, HeldChunks]:
        """SPEC 5 again at ``open()``, then the first chunk (``--whole-file``: all of them)."""
        if item.corrupt and item.error is not None:
            raise fuse_error(errno_for(item.error))
        try:
            verified = await self.threads.run(self.inbox.verify, item.message.digest)
        except DockerCommsError as exc:
            self._failed(item, exc, None)  # its signature or sender did not verify now
            raise
        message = verified.message
        try:
            held = await self.chunks.open_chunks(message)
        except DockerCommsError as exc:
            self._failed(item, exc, verified.signer)
            raise
        item.signer = verified.signer
        item.verified_at = datetime.now(UTC)
        if item.error is not None:
            self._remove_rejected(item.tag)  # a policy failure that no longer holds
        item.error = None
        item.failure = None
        return message, held

    async def read(
        self, item: InboxItem, message: Message, offset: int, size: int
    ) -> bytes | memoryview:
        """Verified bytes; the first success schedules the ``accepted`` receipt."""
        try:
            data = await self.chunks.read(message, offset, size)
        except DockerCommsError as exc:
            self._failed(item, exc, item.signer)  # verified by the open that gave ``message``
            raise
        if not item.read_ok:
            item.read_ok = True
            self.receipts.accepted(message, item.signer)
        return data

    def _failed(
        self, item: InboxItem, error: DockerCommsError, answerable: VerifiedSigner | None
    ) -> None:
        """Remember why, say it in the log; a rejection is listed (and answered if verified)."""
        item.failure = reason(error)
        log.warning("inbox %s/%s: %s", item.folder, item.message.filename, item.failure)
        if not is_rejection(error):
            return
        item.error = error
        if isinstance(
            error, DigestMismatchError | ChunkError | LimitExceededError | SealedDataError
        ):
            item.corrupt = True
        self._add_rejected(item.tag, item.message, error, answerable)

    # --- attributes -----------------------------------------------------------------

    async def xattrs_of(self, item: InboxItem) -> dict[str, bytes]:
        """``user.dockercomms.*`` of an inbox file."""
        message = item.message
        answer = await self.threads.run(self.inbox.answered, message.digest)
        if item.error is not None:
            state = "rejected"
        elif item.read_ok or answer is not None:
            state = "read"
        else:
            state = "verified"
        return xattrs.encode(
            {
                "sender": message.sender,
                "recipient": message.recipient,
                "digest": message.digest,
                "verified": "false" if item.error is not None else "true",
                "signer_identity": item.signer.identity,
                "issuer": item.signer.issuer,
                "created_at": xattrs.timestamp(message.created_at),
                "expires_at": xattrs.timestamp(message.expires_at),
                "receipt": answer.describe() if answer else None,
                "sealed": "true" if message.encrypted else "false",
                "state": state,
                "error": item.failure,
            }
        )

    def statistics(self) -> InboxStatistics:
        """The inbox part of ``.status``."""
        return InboxStatistics(
            len(self.items),
            len(self.rejected),
            self.poll_seconds,
            self.status.statistics(),
            {
                f"{item.folder}/{item.message.filename}": item.failure
                for item in self.items.values()
                if item.failure is not None
            },
            watching=self.watching,
        )


def _rejection_text(tag: str, message: Message | None, why: str) -> str:
    """The content of ``.rejected/<tag>``: every claim escaped, one per line."""
    lines = [f"tag: {tag}", f"reason: {why}"]
    if message is not None:
        lines += [
            f"digest: {message.digest}",
            f"claimed sender: {shown(message.sender)}",
            f"claimed filename: {shown(message.filename)}",
            f"created_at: {protocol.format_timestamp(message.created_at)}",
        ]
    return "\n".join(lines) + "\n"


def _rejection_xattrs(message: Message | None, why: str) -> dict[str, bytes]:
    """``user.dockercomms.*`` of ``.rejected/<tag>``: what it claims, escaped, and why not."""
    values: dict[str, str | None] = {"verified": "false", "state": "rejected", "error": why}
    if message is not None:
        values |= {
            "digest": message.digest,
            "claimed_sender": shown(message.sender),
            "claimed_filename": shown(message.filename),
            "created_at": xattrs.timestamp(message.created_at),
        }
    return xattrs.encode(values)


class InboxPoller:
    """Background job: poll every ``interval`` seconds, or at once when asked.

    ``refresh()`` waits for a poll that *started after* the request, so a caller
    that just pushed a message is sure to see it.
    """

    def __init__(self, view: InboxView, interval: float) -> None:
        self.view = view
        self.interval = interval
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self._started = 0
        self._finished = 0
        self._scope: trio.CancelScope | None = None
        self._crashes = LogOnce(log)
        view.poller = self

    async def run(self) -> None:
        """Poll until stopped; on the embedded store, also whenever its index changes."""
        with trio.CancelScope() as self._scope:
            watch = await self._watch()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._loop, nursery if watch is not None else None)
            finally:
                if watch is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(watch.stop)

    async def _watch(self) -> StoreWatch | None:
        """Start watching the store (None: it cannot be watched, or the watch failed).

        The watcher thread only wakes the poller through the trio token; the poll
        itself runs as every other poll does, so what a change shows is decided by
        the same rules, and a burst of changes costs one or two polls.
        """
        token = trio.lowlevel.current_trio_token()

        def changed() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wakeup_now)

        try:
            watch = await self.view.threads.run(self.view.inbox.watch, changed)
        except OSError as exc:  # no inotify instance left (fs.inotify.max_user_instances)
            log.warning("inbox: cannot watch the store (%s); polling only", shown(str(exc)))
            return None
        self.view.watching = watch is not None
        return watch

    def _wakeup_now(self) -> None:
        self._wakeup.set()

    async def _read_ahead(self) -> None:
        """Once, after the first poll: what the next new message's check will need."""
        try:
            await self.view.threads.run(self.view.inbox.read_ahead)
        except Exception as exc:  # only a head start: a failure costs the next poll time
            log.info("inbox: reading the store ahead failed (%s)", type(exc).__name__)

    async def _loop(self, helpers: trio.Nursery | None) -> None:
        """Poll, then wait for the interval, a refresh or a change in the store.

        ``helpers`` (when the store is watched) runs the read-ahead after the first
        poll, beside the polls.
        """
        while True:
            self._started += 1
            try:
                await self.view.poll_once()
            except Exception as exc:
                # A bug met at every poll is logged once, with its traceback.
                self._crashes.log(
                    logging.ERROR,
                    "poll",
                    "inbox poll failed unexpectedly (%s); polling goes on",
                    type(exc).__name__,
                    exc_info=True,
                )
            else:
                self._crashes.clear("poll")
            finally:
                self._finished = self._started
                self._progress.set()
                self._progress = trio.Event()
            if helpers is not None:
                helpers.start_soon(self._read_ahead)
                helpers = None
            with trio.move_on_after(self.interval):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    def stop(self) -> None:
        """Stop polling (the poll in progress is abandoned)."""
        if self._scope is not None:
            self._scope.cancel()

    async def refresh(self, timeout: float) -> None:
        """Ask for a poll now; return when it finished or ``timeout`` passed."""
        target = self._started + 1
        self._wakeup.set()
        with trio.move_on_after(timeout):
            while self._finished < target:
                await self._progress.wait()
