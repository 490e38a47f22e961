"""The inbox, as the rest of dockercomms sees it: messages to me, verified before anything leaves.

``recv``, ``ls``, ``verify``, ``ack``, the syncer's poller and the mount's
``inbox/`` and ``sent/`` all come through :class:`Inbox`; the registry client, the
receiver, the spool buffers and the ledger stay behind it.

Caveats first:

* Thread-safe: each call runs on the calling thread's registry client (one per
  thread, :class:`~dockercomms.core.clients.ClientPool`) with a receiver made for
  that call, so an edit of ``trust.json`` applies from the next call on.
* Nothing unverified leaves: :meth:`Inbox.check_tags` reports a bad message as a
  result, :meth:`Inbox.verify` and :meth:`Inbox.fetch_chunk` raise, and a chunk's
  bytes reach ``out`` only once their digest matched.
* Sealed messages (SPEC 9) come out of :meth:`Inbox.verify`, :meth:`Inbox.check_tags`
  and :meth:`Inbox.verify_artifact` opened (real file name, ``Message.sealed``)
  once their signature, signer and date verified; :meth:`Inbox.fetch_chunk` opens
  a chunk only of a message that came out so, and writes its plaintext to ``out``
  before comparing its sha256 (``out`` must be private and dropped on failure, as
  the chunk cache's writer and the CLI's temp file are).
* Receipts go out once per message and status, whoever sends them (``recv``, a
  poller, a mount, ``ack``): :meth:`Inbox.answer` asks the one receipt store first
  and records what the registry took. Only a message whose signature verified as
  its claimed, trusted sender is ever answered.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from dockercomms.core import protocol
from dockercomms.core._internal.chunking import ByteSink
from dockercomms.core._internal.intake import Outcome, ProgressFactory, receive_new, summary
from dockercomms.core._internal.ledger import ReceivedLedger
from dockercomms.core._internal.listing import (
    CheckedTag,
    VerifiedCache,
    check_tags,
    first_of_each_message,
    inbox_digests,
    listing_workers,
)
from dockercomms.core._internal.manifest import Message, Receipt, parse_json, parse_receipt
from dockercomms.core._internal.receipt_store import Answer, ReceiptStore, supersedes
from dockercomms.core._internal.receipts import SentReceipt, latest_verified_receipt, send_receipt
from dockercomms.core._internal.receive import BufferPool, Receiver, VerifiedMessage
from dockercomms.core._internal.send import DigestSigner
from dockercomms.core._internal.signatures import DiscoveryMode
from dockercomms.core._internal.signing.verify import VerifiedSigner
from dockercomms.core.clients import ClientPool
from dockercomms.core.errors import (
    Disposition,
    DockerCommsError,
    ManifestError,
    SenderMismatchError,
)
from dockercomms.core.log_once import LogOnce
from dockercomms.core.untrusted import shown

if TYPE_CHECKING:
    from dockercomms.core.workspace import Workspace

__all__ = [
    "Acknowledgement",
    "Answer",
    "CheckedTag",
    "Inbox",
    "Message",
    "Outcome",
    "StoreWatch",
    "Verified",
    "VerifiedMessage",
    "VerifiedSigner",
    "summary",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: An earlier receipt dated at most this far ahead is waited out, so the new one is later.
ACK_WAIT_SECONDS = 2.0


class StoreWatch(Protocol):
    """A running watch on the store (:meth:`Inbox.watch`)."""

    def stop(self) -> None:
        """Stop watching (waits for the watcher thread)."""


@dataclass(frozen=True)
class Verified:
    """What ``verify`` found a digest to be: a message or a receipt, and who signed it.

    Attributes:
        chunks_verified: every chunk of the message was fetched and checked too.
    """

    kind: Literal["message", "receipt"]
    signer: VerifiedSigner
    message: Message | None = None
    receipt: Receipt | None = None
    chunks_verified: bool = False


@dataclass(frozen=True)
class Acknowledgement:
    """A receipt ``ack`` sent, and the earlier one of mine it replaces, if any.

    Attributes:
        earlier_in_future: the earlier receipt is dated ahead of this machine's
            clock by more than :data:`ACK_WAIT_SECONDS`, so it still counts until then.
    """

    receipt: SentReceipt
    earlier: Receipt | None
    earlier_in_future: bool = False


class Inbox:
    """Messages to me in one repository: listed, checked, verified, read, received, answered.

    Attributes:
        me: my identity (the recipient of everything listed here).
    """

    def __init__(
        self,
        workspace: Workspace,
        pool: ClientPool,
        *,
        bundle_mode: DiscoveryMode = "auto",
        owns_pool: bool = False,
    ) -> None:
        self.workspace = workspace
        self.me = workspace.identity
        self._pool = pool
        self._owns_pool = owns_pool
        self._bundle_mode = bundle_mode
        self._buffers = BufferPool()
        self._unexpected = LogOnce(log)
        self._lock = threading.Lock()
        self._signer: DigestSigner | None = None
        self._answers: ReceiptStore | None = None

    def _receiver(self) -> Receiver:
        """A receiver on this thread's client, over the trust policy as it is now."""
        return self.workspace.receiver(self._pool.client(), bundle_mode=self._bundle_mode)

    def _signer_once(self) -> DigestSigner:
        with self._lock:
            if self._signer is None:
                self._signer = self.workspace.signer()
            return self._signer

    def _store(self) -> ReceiptStore:
        with self._lock:
            if self._answers is None:
                paths = self.workspace.paths
                self._answers = ReceiptStore(paths.state_db, legacy=paths.legacy_receipts_db)
            return self._answers

    # --- listing --------------------------------------------------------------------

    def trust_version(self) -> tuple[int, int] | None:
        """Changes whenever ``trust.json`` does (its mtime and size); None without one."""
        try:
            st = os.stat(self.workspace.paths.trust_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def tags(self) -> list[str]:
        """Every message tag addressed to me (names that break the tag grammar left out).

        On the embedded store, from one read of the layout's index (no request).
        """
        indexed = inbox_digests(self._pool.client(), self.me)
        if indexed is not None:
            return sorted(indexed)
        return self._receiver().inbox_tags()

    def check_tags(self, tags: list[str], *, workers: int | None = None) -> list[CheckedTag]:
        """Fetch and verify each tag's manifest and signature (no chunk), in order.

        ``workers`` caps the threads (default: what the backend profits from,
        ``core._internal.listing``). A tag that fails is a result; only a listing that fails
        as a whole (a trust policy that cannot be read) raises. A manifest whose
        signature verified before, under the same trust policy, is not verified
        again (the ledger's ``verified`` table; ``core._internal.listing``).
        """
        ref = self._pool.repository
        limit = listing_workers(ref) if workers is None else listing_workers(ref, workers)
        digests = inbox_digests(self._pool.client(), self.me)
        policy = self.workspace.verifier().policy_fingerprint
        wanted = None if digests is None else [digests[tag] for tag in tags if tag in digests]
        cache = self._with_ledger(lambda ledger: VerifiedCache.load(ledger, policy, wanted))
        checked = check_tags(
            tags,
            pool=self._pool,
            receiver_for=lambda client: self.workspace.receiver(
                client, bundle_mode=self._bundle_mode
            ),
            workers=limit,
            unexpected=self._unexpected,
            cache=cache,
            digests=digests,
        )
        if cache is not None:
            self._with_ledger(cache.save)
        return checked

    def listing(self) -> list[CheckedTag]:
        """Every tag checked, each verified message once (``ls``)."""
        checked = self.check_tags(self.tags())
        complete = all(
            e.error is None or e.error.disposition is Disposition.REJECTED for e in checked
        )
        if complete:  # a tag not checked this time (registry trouble) keeps its result
            self.keep_verified(e.message.digest for e in checked if e.message is not None)
        return first_of_each_message(checked)

    def keep_verified(self, digests: Iterable[str]) -> None:
        """Forget kept verification results of every digest but these (a complete listing's).

        Results under another trust policy go too; nothing else is touched.
        """
        policy = self.workspace.verifier().policy_fingerprint
        keep = list(digests)
        self._with_ledger(lambda ledger: ledger.keep_verified(keep, policy))

    def watch(self, on_change: Callable[[], None]) -> StoreWatch | None:
        """Call ``on_change`` (on another thread) when the store's tags change; None over HTTP.

        Only the embedded store can be watched (inotify on its index); elsewhere the
        caller polls. Stop the watch with its ``stop()``.
        """
        store = self._pool.client().embedded_store()
        return None if store is None else store.watch(on_change)

    def read_ahead(self) -> None:
        """Prepare what checking the next new message needs, so it is seen sooner.

        On the embedded store that is its referrers table (every stored manifest
        read once: seconds for a big inbox); elsewhere nothing. A watcher calls it
        once, after its first listing.
        """
        store = self._pool.client().embedded_store()
        if store is not None:
            store.read_ahead()

    def _with_ledger(self, use: Callable[[ReceivedLedger], _T]) -> _T | None:
        """``use(ledger)``, or None (logged once) when the state database cannot be used.

        The kept verification results only save work: a listing goes on without them.
        """
        try:
            with self.workspace.ledger() as ledger:
                result = use(ledger)
        except (sqlite3.Error, OSError) as exc:
            self._unexpected.log(
                logging.WARNING, "ledger", "verification results not kept: %s", shown(exc)
            )
            return None
        self._unexpected.clear("ledger")
        return result

    # --- one message ----------------------------------------------------------------

    def verify(self, digest: str, *, to_me: bool = True) -> VerifiedMessage:
        """SPEC 5 steps 2-7 for a message by digest (``to_me``: addressed to me)."""
        receiver = self._receiver()
        return receiver.verify_message(receiver.fetch_message(digest, check_recipient=to_me))

    def fetch_chunk(
        self,
        message: Message,
        index: int,
        out: ByteSink,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Write chunk ``index``'s verified bytes to ``out`` (nothing on failure).

        The compressed blob is spooled in buffers this inbox reuses across
        fetches; :meth:`release_buffers` lets them go when reading has paused.
        """
        self._receiver().fetch_chunk(
            message, index, out, on_progress=on_progress, buffers=self._buffers
        )

    def release_buffers(self) -> None:
        """Free the spool buffers kept for the next chunk (an owner that has gone idle)."""
        self._buffers.clear()

    def verify_artifact(self, digest: str, *, chunks: bool = False) -> Verified:
        """A message (to anyone) or a receipt by digest: manifest, signature, signer.

        With ``chunks`` every chunk of a message is fetched and checked as well
        (and thrown away). Raises what does not verify.
        """
        digest = protocol.check_digest(digest)
        receiver = self._receiver()
        raw, _ = receiver.client.fetch_manifest(digest)
        kind = parse_json(raw, "manifest").get("artifactType")
        if kind == protocol.RECEIPT_ARTIFACT_TYPE:
            receipt = parse_receipt(raw, digest)
            signer = receiver.verify_signature(digest)
            if signer.name != receipt.sender:
                raise SenderMismatchError(
                    f"receipt claims {receipt.sender!r}, signed by {signer.name!r}"
                )
            return Verified("receipt", signer, receipt=receipt)
        if kind == protocol.MESSAGE_ARTIFACT_TYPE:
            verified = receiver.verify_message(
                receiver.fetch_message(digest, check_recipient=False)
            )
            message = verified.message  # opened if sealed: its chunks are checked opened
            if chunks:
                sink = _NullSink()
                for index in range(message.chunk_count):
                    receiver.fetch_chunk(message, index, sink, buffers=self._buffers)
            return Verified("message", verified.signer, message=message, chunks_verified=chunks)
        raise ManifestError(f"{digest} is neither a message nor a receipt ({kind!r})")

    # --- receiving into a folder ----------------------------------------------------

    def receive_new(
        self,
        out_dir: Path,
        *,
        receipts: bool = True,
        since: datetime | None = None,
        limit: int | None = None,
        progress: ProgressFactory | None = None,
    ) -> list[Outcome]:
        """Verify and write every new message to me into ``out_dir`` (``core._internal.intake``)."""
        with self.workspace.ledger() as ledger:
            return receive_new(
                self._receiver(),
                ledger,
                out_dir,
                receipt_signer=self._signer_once() if receipts else None,
                answers=self._store() if receipts else None,
                since=since,
                limit=limit,
                progress=progress,
                unexpected=self._unexpected,
            )

    # --- receipts -------------------------------------------------------------------

    def answered(self, digest: str) -> Answer | None:
        """The receipt I sent for ``digest``, if any (from any of my tools)."""
        return self._store().get(digest)

    def answer_count(self) -> int:
        """How many messages I have answered."""
        return len(self._store())

    def answer(
        self,
        message: Message,
        status: str,
        signer: VerifiedSigner,
        *,
        reason: str | None = None,
        ttl_seconds: int | None = None,
    ) -> Answer | None:
        """Send ``status`` for ``message`` unless it was answered so already; the answer.

        ``signer`` is the verified signer of ``message``: one trusted under another
        name than the message's sender is refused (never answered).
        """
        if signer.name != message.sender:
            log.warning("no receipt for %s: not signed by its sender", message.digest[:19])
            return None
        store = self._store()
        if not supersedes(status, store.get(message.digest)):
            return None
        sent = send_receipt(
            self._pool.client(),
            self._signer_once(),
            me=self.me,
            message=message,
            status=status,
            verified=status == "accepted",
            reason=reason,
            ttl_seconds=ttl_seconds or self.workspace.settings.ttl_seconds,
        )
        answer = Answer(message.digest, status, sent.digest, reason, _now())
        store.record(answer)
        return answer

    def acknowledge(
        self, digest: str, status: str, *, reason: str | None = None
    ) -> Acknowledgement:
        """``ack``: answer a message to me, replacing my earlier receipt for it.

        ``accepted`` needs the message to verify; ``rejected`` may answer one that
        does not. The new receipt is dated after my earlier one (waiting up to
        :data:`ACK_WAIT_SECONDS`), so the order is never a tie.
        """
        receiver = self._receiver()
        message = receiver.fetch_message(protocol.check_digest(digest))
        try:
            receiver.verify_message(message)
            verified = True
        except DockerCommsError as exc:
            if status == "accepted":
                raise
            log.info("acknowledging an unverified message as rejected: %s", shown(exc))
            verified = False
        earlier = latest_verified_receipt(
            receiver.client, receiver, message.digest, sender=self.me, recipient=message.sender
        )
        in_future = False
        if earlier is not None:
            wait = (earlier.created_at - datetime.now(UTC)).total_seconds() + 1.0
            if 0 < wait <= ACK_WAIT_SECONDS:
                time.sleep(wait)
            in_future = wait > ACK_WAIT_SECONDS
        receipt = send_receipt(
            receiver.client,
            self._signer_once(),
            me=self.me,
            message=message,
            status=status,
            verified=verified,
            reason=reason,
            ttl_seconds=self.workspace.settings.ttl_seconds,
        )
        self._store().record(Answer(message.digest, status, receipt.digest, reason, _now()))
        return Acknowledgement(receipt, earlier, in_future)

    # --- life -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the receipt store, and the client pool if this inbox made it."""
        with self._lock:
            store, self._answers = self._answers, None
        if store is not None:
            store.close()
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NullSink:
    """Counts and discards verified chunk bytes (``verify --chunks``)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | memoryview) -> int:
        self.written += len(data)
        return len(data)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
