"""The push worker: takes due items off the queue and sends them, one at a time.

Caveats first:

* Which failures are worth waiting out is the error's own disposition
  (``core.errors.Disposition``): a temporary one (the registry unreachable, a
  local network ``OSError``) puts the item back with capped exponential backoff
  and full jitter; anything else fails the item for good (it keeps its bytes
  until requeued).
* One exception: a recipient whose age key is not known yet
  (``NoAgeRecipientError``, SPEC 9) keeps the item queued and looks again every
  :data:`KEY_WAIT_SECONDS` (a card may be published, or ``trust add --card``
  run), without holding up the other items; nothing of it was pushed.
* The backoff is per registry, not per item: after a temporary failure the
  worker pauses all sending, because the next item would only fail the same way.
* One item at a time. The sender already uploads two chunks in parallel, and a
  strict order keeps the inbox in the order files were dropped.
* ``stop()`` lets the upload in flight finish; ``abort()`` interrupts it after
  the next chunk. Either way the item stays in the queue with its ids, so the next
  start resumes it as the same message.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dockercomms.core import protocol
from dockercomms.core.errors import (
    Disposition,
    DockerCommsError,
    NoAgeRecipientError,
    disposition_of,
)
from dockercomms.core.outbox import (
    Delivery,
    Descriptor,
    Outbox,
    SendJournal,
    SendRequest,
    SentMessage,
)
from dockercomms.core.status import WorkerStatistics
from dockercomms.core.workspace import RetryPolicy
from dockercomms.syncer.queue import PushQueue, QueueItem, SendOptions

log = logging.getLogger(__name__)

#: Longest sleep between looks at the queue when nothing wakes the worker
#: (another process may have enqueued).
IDLE_POLL_SECONDS = 1.0
#: An item with less than this share of its TTL left when its turn comes is sent
#: with a new date (if the registry does not have it yet): after a long outage it
#: would otherwise arrive expired, or nearly, and be refused.
RESTAMP_BELOW = 0.25
#: How often an item waiting for a recipient's age key tries again.
KEY_WAIT_SECONDS = 30.0


class _Aborted(Exception):
    """Raised from the chunk callback to break off an upload in flight."""


@dataclass(frozen=True)
class PushResult:
    """One attempt: the item as it is now, and the error if the attempt failed."""

    item: QueueItem
    error: BaseException | None = None

    @property
    def temporary(self) -> bool:
        """The item is queued again (it waits for the registry)."""
        return self.error is not None and is_temporary(self.error)


def is_temporary(error: BaseException) -> bool:
    """Whether waiting and trying again may help (the error's disposition says)."""
    return disposition_of(error) is Disposition.TEMPORARY


def describe(error: BaseException) -> str:
    """Error text for the queue row and ``status``."""
    if isinstance(error, DockerCommsError):
        return error.diagnostics()
    return f"{type(error).__name__}: {error}"


class PushWorker:
    """Pushes due queue items through an ``Outbox``; a ``run()`` loop and a ``stop()``."""

    def __init__(
        self,
        queue: PushQueue,
        outbox: Outbox,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        options: SendOptions | None = None,
    ) -> None:
        self.queue = queue
        # The registry's backoff between sends: the same policy object every retry uses;
        # the queue keeps trying for as long as it takes, so only its delays count.
        self.backoff = RetryPolicy(base_delay=backoff_base, max_delay=backoff_max)
        self.options = options or SendOptions()
        self.outbox = outbox
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._in_flight: QueueItem | None = None
        self._bytes_done = 0
        self._last_success_at: datetime | None = None
        self._last_failure_at: datetime | None = None
        self._reachable = True
        self._failures = 0
        self._paused_until: datetime | None = None
        self._last_error: str | None = None

    # --- loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Send due items until ``stop`` is set or ``stop()`` is called."""
        # A fresh run: an earlier stop()/abort() is over (``stop`` is the caller's).
        self._stopping.clear()
        self._aborting.clear()
        try:
            while not (stop.is_set() or self._stopping.is_set()):
                wait = self._pause_left()
                if wait <= 0:
                    try:
                        if self.run_once() is not None:
                            continue
                        wait = self._idle_wait()
                    except Exception as exc:
                        # A queue row that vanished (cancelled) or a disk error: say
                        # so and keep going, a dead worker would stall every item.
                        log.exception("push worker: %s", exc)
                        with self._lock:
                            self._last_error = describe(exc)
                        wait = IDLE_POLL_SECONDS
                self.queue.wait_for_change(min(wait, IDLE_POLL_SECONDS))
        finally:
            self.close()

    def stop(self) -> None:
        """Finish the upload in flight (if any), then leave ``run``."""
        self._stopping.set()
        self.queue.notify()

    def abort(self) -> None:
        """Also break off the upload in flight once its current chunk is recorded."""
        self._aborting.set()
        self.stop()

    def close(self) -> None:
        """Drop this thread's registry connections (the next push opens fresh ones)."""
        self.outbox.renew()

    def run_once(self) -> QueueItem | None:
        """Push the next due item, if any; return it as it is afterwards."""
        item = self.queue.next_due(datetime.now(UTC))
        if item is None:
            return None
        return self.push(item).item

    def push(self, item: QueueItem) -> PushResult:
        """One attempt at ``item``: mark, send with its fixed ids, record the outcome."""
        item = self.queue.mark_uploading(item.id)
        with self._lock:
            self._in_flight = item
            self._bytes_done = 0
        try:
            sent = self._send(item)
        except _Aborted:
            log.info("upload of %s interrupted; it stays queued", item.filename)
            return PushResult(self.queue.mark_retry(item.id, "interrupted by shutdown", 0.0))
        except Exception as exc:
            return self._failed(item, exc)
        finally:
            # abort() is for the upload in flight; the next push starts clean.
            self._aborting.clear()
            with self._lock:
                self._in_flight = None
        with self._lock:
            self._failures = 0
            self._reachable = True
            self._paused_until = None
            self._last_success_at = datetime.now(UTC)
        return PushResult(self.queue.mark_sent(item.id, sent.digest, sent.tag))

    def _send(self, item: QueueItem) -> SentMessage:
        options = self.queue.pin_send_options(item.id, self.options)
        # Whom it reaches and whether sealed, fixed at the first try that gets this
        # far: chunks and the ``sealed`` value are only reusable under that plan.
        # A recipient without an age key fails here, before anything is pushed.
        plan = self.queue.recipient_plan(item.id)
        if plan is None:
            plan = self.queue.pin_recipient_plan(item.id, self.outbox.plan((item.recipient,)))
        item = self._restamped_if_stale(item, options.ttl_seconds, plan.names)
        request = SendRequest(
            path=item.data_path,
            recipient=item.recipient,
            filename=item.filename,
            chunk_bytes=options.chunk_bytes,
            compression=options.compression,
            ttl_seconds=options.ttl_seconds,
            session_id=item.session_id,
            message_id=item.message_id,
            created_at=item.created_at,
            known_chunks=self.queue.known_chunks(item.id),
            plan=plan,
            sealed=self.queue.sealed_value(item.id),
            known_sha256=self.queue.known_sha256(item.id),
            delivered=self.queue.deliveries(item.id),
        )

        def progress(n: int) -> None:
            with self._lock:
                self._bytes_done += n

        def chunk_done(index: int, descriptor: Descriptor, plain_sha256: str) -> None:
            self.queue.record_chunk(item.id, index, descriptor, plain_sha256)
            # Checked only once the chunk is recorded, so an abort wastes no upload.
            if self._aborting.is_set():
                raise _Aborted

        def sealed(value: str) -> None:
            self.queue.pin_sealed(item.id, value)

        def delivered(delivery: Delivery) -> None:
            self.queue.record_delivery(item.id, delivery)

        journal = SendJournal(chunk=chunk_done, sealed=sealed, delivered=delivered)
        return self.outbox.send(request, on_progress=progress, journal=journal)

    def _restamped_if_stale(
        self, item: QueueItem, ttl_seconds: int, names: tuple[str, ...]
    ) -> QueueItem:
        """``item`` with a new ``created_at`` if it waited out most of its TTL unseen."""
        now = datetime.now(UTC)
        left = item.created_at + timedelta(seconds=ttl_seconds) - now
        if left >= timedelta(seconds=ttl_seconds * RESTAMP_BELOW):
            return item
        tags = [
            protocol.message_tag(name, item.created_at, item.session_id, item.message_id)
            for name in names
        ]
        if not any(self.outbox.is_tagged(tag) for tag in tags):
            log.warning(
                "%s waited in the queue since %s; sending it with today's date so it "
                "does not arrive expired",
                item.filename,
                _rfc3339(item.created_at),
            )
            return self.queue.restamp(item.id, now)
        # Tagged before a crash: recipients may have it. Finish it as that message.
        return item

    def _failed(self, item: QueueItem, error: Exception) -> PushResult:
        text = describe(error)
        now = datetime.now(UTC)
        with self._lock:
            self._last_failure_at = now
            self._last_error = text
        if isinstance(error, NoAgeRecipientError):
            log.warning("%s waits for an age key: %s", item.filename, text)
            return PushResult(self.queue.mark_retry(item.id, text, KEY_WAIT_SECONDS), error)
        if not is_temporary(error):
            if not isinstance(error, DockerCommsError | OSError):
                log.exception("unexpected error sending %s", item.filename)
            log.error("sending %s to %s failed: %s", item.filename, item.recipient, text)
            return PushResult(self.queue.mark_failed(item.id, text), error)
        # A fresh client next time: the old connection pool may hold dead sockets.
        self.close()
        with self._lock:
            self._failures += 1
            self._reachable = False
            delay = self.backoff.delay(self._failures)
            self._paused_until = now + timedelta(seconds=delay)
        log.warning("registry unavailable (%s); retrying %s in %.1fs", text, item.filename, delay)
        return PushResult(self.queue.mark_retry(item.id, text, delay), error)

    def _pause_left(self) -> float:
        with self._lock:
            paused = self._paused_until
        if paused is None:
            return 0.0
        return (paused - datetime.now(UTC)).total_seconds()

    def _idle_wait(self) -> float:
        due = self.queue.next_attempt_at()
        if due is None:
            return IDLE_POLL_SECONDS
        return max((due - datetime.now(UTC)).total_seconds(), 0.01)

    # --- status ---------------------------------------------------------------------

    def statistics(self) -> WorkerStatistics:
        """The item in flight with its progress, and how the registry has been doing."""
        with self._lock:
            item = self._in_flight
            return WorkerStatistics(
                item.id if item else None,
                item.filename if item else None,
                self._bytes_done if item else 0,
                item.size if item else 0,
                self._last_success_at,
                self._last_failure_at,
                self._reachable,
                self._failures,
                self._paused_until,
                self._last_error,
            )


def _rfc3339(moment: datetime | None) -> str | None:
    return protocol.format_timestamp(moment) if moment is not None else None
