"""The syncer: watcher + durable queue + push worker, and an optional inbox poller.

Caveats first:

* One syncer per identity at a time: ``start()`` and ``run_once()`` take a
  file lock next to the queue, because a second process recovering the queue
  would requeue uploads the first is still doing.
* ``start()`` recovers the queue before the watcher scans, so an intake a crash
  interrupted is finished or undone before the spool is looked at again.
* The syncer's registry clients (``core``'s ``Inbox`` and ``Outbox`` over one
  pool, one client per thread) give up on a request within seconds
  (:data:`SYNC_RETRY_POLICY`): the durable queue does the long waiting, with
  backoff, and ``statistics()`` says meanwhile that the registry is unreachable.
* ``stop()`` does not close the queue, so ``statistics()`` keeps answering; call
  ``close()`` when done (or use the syncer as a context manager).
* The poller writes received files into a plain folder with ``Inbox.receive_new``
  (the loop ``recv`` uses) and records verified receipts for sent items: the
  latest receipt that verifies as the recipient's counts, and an item is looked
  at again whenever a new receipt tag for it appears.
* One hostile message or receipt never stops a poll: an unexpected exception
  while handling it is logged once with its traceback and that one is skipped
  (the receive loop makes a message a ``rejected`` outcome for that run); a poll
  that fails as a whole is logged once and the next one runs on time. Conditions
  that repeat at every poll are logged once until they change, and what the
  registry or a message says is escaped before it is logged or shown in
  ``statistics()``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dockercomms.core import protocol
from dockercomms.core.errors import ConfigError, DockerCommsError
from dockercomms.core.inbox import Outcome, StoreWatch
from dockercomms.core.log_once import LogOnce
from dockercomms.core.status import PollerStatistics, SyncerStatistics, Upload
from dockercomms.core.untrusted import shown
from dockercomms.core.workspace import RegistryOptions, RetryPolicy, Workspace
from dockercomms.syncer.queue import ItemState, PushQueue, QueueItem, SendOptions
from dockercomms.syncer.queue_lock import QueueLock
from dockercomms.syncer.watcher import OutboxWatcher
from dockercomms.syncer.worker import PushWorker, describe, is_temporary

log = logging.getLogger(__name__)

#: Per-request retries for the syncer's client: short, because the queue retries.
SYNC_RETRY_POLICY = RetryPolicy(attempts=3, base_delay=0.5, max_delay=4.0, total_budget=10.0)
#: Sent items younger than this are checked for receipts.
RECEIPT_WINDOW = timedelta(days=7)
#: A poll looks up receipts for at most this many sent items.
RECEIPTS_PER_POLL = 20


@dataclass
class SyncSummary:
    """What one ``run_once`` did (the ``sync --once`` report).

    Attributes:
        queued: items taken from the spool in this run.
        sent: items sent in this run.
        failed: items that failed for good in this run.
        waiting: items still queued afterwards (registry down, or in backoff).
        received: inbox outcomes (received, already-received, rejected).
        unroutable: files left in the outbox for want of a recipient, and why.
        errors: every error, in order; the first decides the exit code.
    """

    queued: list[QueueItem] = field(default_factory=list)
    sent: list[QueueItem] = field(default_factory=list)
    failed: list[QueueItem] = field(default_factory=list)
    waiting: list[QueueItem] = field(default_factory=list)
    received: list[Outcome] = field(default_factory=list)
    unroutable: dict[str, str] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "queued": [i.to_json() for i in self.queued],
            "sent": [i.to_json() for i in self.sent],
            "failed": [i.to_json() for i in self.failed],
            "waiting": [i.to_json() for i in self.waiting],
            "received": [o.to_json() for o in self.received],
            "unroutable": dict(self.unroutable),
            "errors": [describe(e) for e in self.errors],
        }


class Syncer:
    """Keeps a spool folder sent and (optionally) an inbox folder filled.

    Attributes:
        queue: the durable push queue (``Paths.queue_db`` + ``Paths.queue_dir``).
        watcher: turns complete spool files into queue items.
        worker: pushes queue items.
    """

    queue: PushQueue

    def __init__(
        self,
        workspace: Workspace,
        registry_options: RegistryOptions | None,
        *,
        spool_dir: Path,
        inbox_dir: Path | None,
        default_recipient: str | None,
        poll_seconds: float = 5.0,
        settle_seconds: float = 0.5,
        rescan_seconds: float = 30.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        write_receipts: bool = True,
    ) -> None:
        self.workspace = workspace
        self.registry_options = registry_options or RegistryOptions()
        self.spool_dir = spool_dir
        self.inbox_dir = inbox_dir
        self.poll_seconds = poll_seconds
        self.write_receipts = write_receipts
        # Short retries (the queue waits), one client per thread for push and poll.
        self._pool = workspace.clients(replace(self.registry_options, retry=SYNC_RETRY_POLICY))
        self.inbox = workspace.inbox(pool=self._pool)
        self.outbox = workspace.outbox(pool=self._pool, card_interval_seconds=poll_seconds)
        paths = workspace.paths
        self.queue = PushQueue(paths.queue_db, paths.queue_dir)
        self.watcher = OutboxWatcher(
            spool_dir,
            self.queue,
            default_recipient=default_recipient,
            settle_seconds=settle_seconds,
            rescan_seconds=rescan_seconds,
        )
        settings = workspace.settings
        self.worker = PushWorker(
            self.queue,
            self.outbox,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            options=SendOptions(settings.chunk_bytes, settings.compression, settings.ttl_seconds),
        )
        self._owner = QueueLock(paths.queue_lock)
        self._stop = threading.Event()
        #: Set by ``stop()`` and by a change in the store: the poller looks at once.
        self._poke = threading.Event()
        self._watching = False
        self._threads: list[threading.Thread] = []
        self._running = False
        # start/stop may come from different threads (a mount drains from a worker
        # thread while its exit stack stops again); the second waits for the first.
        self._lifetime = threading.Lock()
        self._lock = threading.Lock()
        self._last_poll_at: datetime | None = None
        self._poll_error: str | None = None
        self._poll_reachable = True
        self._received = 0
        self._rejected: list[str] = []
        self._fatal: str | None = None
        #: Receipt tags already looked at, per sent item id (see refresh_receipts).
        self._receipt_tags: dict[str, frozenset[str]] = {}
        self._crashes = LogOnce(log)
        self._ignored_receipts = LogOnce(log)
        self._unexpected = LogOnce(log)
        self._closed = False

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        """Lock the queue, recover it, then start watching, pushing and polling."""
        with self._lifetime:
            if self._running:
                raise RuntimeError("syncer already started")
            self._check_configuration()
            self._take_ownership()
            try:
                self.queue.recover()
                self.watcher.start()
            except BaseException:
                self._owner.release()
                raise
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._push_loop, name="push-worker", daemon=True),
                threading.Thread(target=self._poll_loop, name="inbox-poller", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
            self._running = True

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop watching and polling; let the upload in flight finish within the timeout.

        An upload still going after ``drain_timeout`` is interrupted after its
        current chunk; it stays queued and resumes as the same message next time.
        """
        with self._lifetime:
            if self._running:
                self._stop_running(drain_timeout)

    def _stop_running(self, drain_timeout: float) -> None:
        deadline = time.monotonic() + drain_timeout
        self._stop.set()
        self._poke.set()
        self.worker.stop()
        pusher, poller = self._threads
        pusher.join(max(deadline - time.monotonic(), 0.0))
        if pusher.is_alive():
            log.warning("upload still running after %.0fs; interrupting it", drain_timeout)
            self.worker.abort()
            pusher.join()
        # Only now: stopping watchdog takes up to half a second, which must not eat
        # into the drain time (a file queued meanwhile is simply sent next time).
        self.watcher.stop()
        poller.join(max(deadline - time.monotonic(), 1.0))
        if poller.is_alive():
            log.warning("inbox poll still running after %.0fs", drain_timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._running = False
        self._owner.release()

    def close(self) -> None:
        """Stop (if running) and close the queue.

        A poll that outlived ``stop()`` keeps the queue open: closing it under
        that thread would turn a slow download into a crash.
        """
        self.stop()
        if not self._threads and not self._closed:
            self._closed = True
            self.queue.close()
            self.inbox.close()
            self._pool.close()

    def __enter__(self) -> Syncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_configuration(self) -> None:
        """A bad ``--repo`` or a missing key is a start-up error, not N failed items."""
        self.workspace.repository(self.registry_options)
        self.workspace.signer()

    def _take_ownership(self) -> None:
        self._owner.acquire()

    def _push_loop(self) -> None:
        try:
            self.worker.run(self._stop)
        except Exception as exc:
            log.exception("push worker stopped")
            self._fatal = f"push worker stopped: {describe(exc)}"

    def _poll_loop(self) -> None:
        watch = self._watch()
        try:
            self._poll_until_stopped()
        finally:
            if watch is not None:
                watch.stop()

    def _watch(self) -> StoreWatch | None:
        """Wake the poller when the store changes (embedded store only; None elsewhere)."""
        try:
            watch = self.inbox.watch(self._poke.set)
        except OSError as exc:  # no inotify instance left (fs.inotify.max_user_instances)
            log.warning("cannot watch the store (%s); polling only", describe(exc))
            return None
        self._watching = watch is not None
        return watch

    def _poll_until_stopped(self) -> None:
        """Poll, then wait for the interval, a change in the store, or ``stop()``."""
        while not self._stop.is_set():
            self._poke.clear()
            try:
                outcomes = self.poll()
            except Exception as exc:
                # A bug met at every poll: logged once with its traceback, and the
                # next poll still runs (one bad input must not end the poller).
                self._crashes.log(
                    logging.ERROR,
                    "poll",
                    "inbox poll failed unexpectedly (%s); polling goes on",
                    type(exc).__name__,
                    exc_info=True,
                )
                with self._lock:
                    self._last_poll_at = datetime.now(UTC)
                    self._poll_error = f"inbox poll failed unexpectedly: {describe(exc)}"
            else:
                self._crashes.clear("poll")
                _log_rejections(outcomes)
            self._poke.wait(self.poll_seconds)

    # --- one round ------------------------------------------------------------------

    def run_once(self) -> SyncSummary:
        """Scan, push everything queued (ignoring backoff), receive once; for ``--once``."""
        summary = SyncSummary()
        self._check_configuration()
        self._take_ownership()
        try:
            self.queue.recover()
            summary.queued += self.watcher.scan()
            if self.watcher.statistics().pending:
                # Files written just now: give them their settle time, then look again.
                time.sleep(self.watcher.settle_seconds)
                summary.queued += self.watcher.scan()
            self._push_all(summary)
            summary.unroutable = self.watcher.statistics().unroutable
            for why in summary.unroutable.values():
                summary.errors.append(ConfigError(why))
            summary.received, error = self._poll_once()
            summary.errors += [o.error for o in summary.received if o.error is not None]
            if error is not None:
                summary.errors.append(error)
        finally:
            self.worker.close()
            self._owner.release()
        summary.waiting = self.queue.items([ItemState.QUEUED])
        return summary

    def _push_all(self, summary: SyncSummary) -> None:
        later = datetime.now(UTC) + timedelta(days=365 * 100)
        tried: set[str] = set()
        while (item := self.queue.next_due(later)) is not None and item.id not in tried:
            tried.add(item.id)
            result = self.worker.push(item)
            if result.error is None:
                summary.sent.append(result.item)
                continue
            summary.errors.append(result.error)
            if result.temporary:
                break  # the registry is down: the rest would fail the same way
            summary.failed.append(result.item)

    def poll(self) -> list[Outcome]:
        """Receive new messages into the inbox folder and look for receipts, once."""
        outcomes, _ = self._poll_once()
        return outcomes

    def _poll_once(self) -> tuple[list[Outcome], BaseException | None]:
        outcomes: list[Outcome] = []
        try:
            if self.inbox_dir is not None:
                outcomes = self._receive(self.inbox_dir)
            self.refresh_receipts()
        except (DockerCommsError, OSError) as exc:
            self._pool.renew()  # the next poll starts on fresh connections
            with self._lock:
                repeated = self._poll_error == describe(exc)
                self._last_poll_at = datetime.now(UTC)
                self._poll_error = describe(exc)
                self._poll_reachable = not is_temporary(exc)
            if not repeated:  # once per outage, not once per poll
                log.warning("inbox poll: %s", shown(describe(exc)))
            return outcomes, exc
        with self._lock:
            self._last_poll_at = datetime.now(UTC)
            self._poll_error = None
            self._poll_reachable = True
        return outcomes, None

    def _receive(self, inbox_dir: Path) -> list[Outcome]:
        inbox_dir.mkdir(parents=True, exist_ok=True)
        outcomes = self.inbox.receive_new(inbox_dir, receipts=self.write_receipts)
        with self._lock:
            for outcome in outcomes:
                if outcome.status == "received":
                    self._received += 1
                elif outcome.status == "rejected" and outcome.error is not None:
                    why = shown(outcome.error.diagnostics())
                    self._rejected = [*self._rejected[-9:], why]
        return outcomes

    def refresh_receipts(self) -> list[QueueItem]:
        """Record the latest *verified* receipt of recently sent items; the items it changed.

        Each recipient's manifest is answered by that recipient alone (a send to
        a group has one per member): a receipt counts only if its signature
        verifies and its signer is the recipient of that manifest; anything else
        is ignored (and logged once). The latest receipt that counts (by its
        ``created_at``) wins, so a recipient who answers ``accepted`` after
        ``rejected`` is heard. A delivery is looked at again only when the set of
        receipt tags for its manifest has changed.
        """
        since = datetime.now(UTC) - RECEIPT_WINDOW
        recent = [
            item
            for item in self.queue.items([ItemState.SENT])
            if item.digest and item.sent_at and item.sent_at > since
        ]
        if not recent:
            return []
        present: dict[str, set[str]] = {}
        for tag in self.outbox.receipt_tags():
            present.setdefault(_hex12_of_tag(tag), set()).add(tag)
        due: list[tuple[QueueItem, str, str, frozenset[str]]] = []
        seen: dict[str, frozenset[str]] = {}
        for item in recent:
            for recipient, digest in self._manifests(item):
                key = f"{item.id}/{recipient}"
                tags = frozenset(present.get(_hex12(digest), ()))
                if key in self._receipt_tags:
                    seen[key] = self._receipt_tags[key]
                if tags and self._receipt_tags.get(key) != tags:
                    due.append((item, recipient, digest, tags))
        self._receipt_tags = seen
        updated: dict[str, QueueItem] = {}
        for item, recipient, digest, tags in due[-RECEIPTS_PER_POLL:]:
            try:
                status = self._latest_receipt(digest, recipient)
            except DockerCommsError:
                raise  # the registry failed us: the whole poll says so, and tries again
            except Exception as exc:
                self._unexpected.log(
                    logging.ERROR,
                    f"receipts {item.id}",
                    "receipts for %s failed unexpectedly (%s); skipped until new ones appear",
                    digest[:19],
                    type(exc).__name__,
                    exc_info=True,
                )
                status = None
            self._receipt_tags[f"{item.id}/{recipient}"] = tags
            if status is not None and status != self.queue.receipts(item.id).get(recipient):
                updated[item.id] = self.queue.set_receipt(item.id, recipient, status)
        return list(updated.values())

    def _manifests(self, item: QueueItem) -> list[tuple[str, str]]:
        """(recipient, manifest digest) of each manifest ``item`` was sent as."""
        deliveries = self.queue.deliveries(item.id)
        if deliveries:
            return sorted((name, d.digest) for name, d in deliveries.items())
        assert item.digest is not None
        return [(item.recipient, item.digest)]

    def _latest_receipt(self, digest: str, recipient: str) -> str | None:
        """The status of the newest receipt for my manifest ``digest`` signed by ``recipient``."""
        subject = digest[:19]

        def ignored(receipt: str, why: str) -> None:
            self._ignored_receipts.log(
                logging.INFO, receipt, "ignoring receipt %s for %s: %s", receipt[:19], subject, why
            )

        def unreadable(reference: str, why: str) -> None:
            self._unexpected.log(
                logging.ERROR,
                f"receipt {reference}",
                "receipt %s for %s failed unexpectedly: %s; skipped",
                reference,
                subject,
                why,
                exc_info=True,
            )

        return self.outbox.latest_receipt(
            digest, recipient=recipient, on_ignored=ignored, on_unreadable=unreadable
        )

    # --- status ---------------------------------------------------------------------

    def statistics(self) -> SyncerStatistics:
        """Everything a user asks "is it working?" about (``core.status``)."""
        queue = self.queue.statistics()
        worker = self.worker.statistics()
        watcher = self.watcher.statistics()
        with self._lock:
            poll = PollerStatistics(
                str(self.inbox_dir) if self.inbox_dir else None,
                self._last_poll_at,
                shown(self._poll_error) if self._poll_error else None,
                self._received,
                list(self._rejected),
                watching=self._watching,
            )
            poll_reachable = self._poll_reachable
        reachable = worker.registry_reachable and poll_reachable
        candidates = [self._fatal, worker.last_error if not reachable else None, self._poll_error]
        candidates += list(watcher.unroutable.values())
        # Registry and queue errors quote what a server said: escaped before shown.
        errors = list(dict.fromkeys(shown(e) for e in candidates if e))
        # Unreachable wins over uploading: an attempt in flight then is a retry.
        if not reachable:
            state = "waiting for registry"
        elif worker.in_flight:
            state = "uploading"
        elif queue.counts[ItemState.QUEUED]:
            state = "queued"
        else:
            state = "idle"
        if not self._running:
            state = "stopped"
        in_flight = None
        if worker.in_flight:
            percent = 100 * worker.bytes_done / worker.bytes_total if worker.bytes_total else 100.0
            in_flight = Upload(
                worker.in_flight,
                worker.in_flight_filename or "",
                worker.bytes_done,
                worker.bytes_total,
                round(percent, 1),
            )
        try:
            repository = str(self.workspace.repository(self.registry_options))
        except ConfigError:
            repository = self.registry_options.repository
        return SyncerStatistics(
            identity=self.workspace.identity,
            repository=repository,
            spool=str(self.spool_dir.absolute()),
            state=state,
            summary=_summary_line(state, queue.counts, worker.paused_until, errors),
            registry_reachable=reachable,
            in_flight=in_flight,
            queue=queue,
            worker=worker,
            watcher=watcher,
            inbox=poll,
            errors=errors,
        )


def _hex12(digest: str | None) -> str:
    return (digest or ":").split(":", 1)[1][:12]


def _hex12_of_tag(tag: str) -> str:
    """``receipt-<hex12>-<unix>-<rand6>`` -> ``<hex12>`` (whatever a registry lists)."""
    parts = tag.split("-")
    return parts[1] if len(parts) > 1 else ""


def _log_rejections(outcomes: list[Outcome]) -> None:
    """The daemon's report of this poll's rejections (``--once`` prints its outcomes instead).

    The ledger remembers a rejection, so each is news, and logged, once.
    """
    for outcome in outcomes:
        if outcome.status == "rejected" and outcome.error is not None:
            log.warning("rejected %s: %s", shown(outcome.tag), shown(outcome.error.diagnostics()))


def _summary_line(
    state: str,
    counts: dict[str, int],
    paused_until: datetime | None,
    errors: list[str],
) -> str:
    waiting = counts[ItemState.QUEUED] + counts[ItemState.UPLOADING]
    text = f"{state}: {waiting} to send, {counts[ItemState.SENT]} sent"
    if counts[ItemState.FAILED]:
        text += f", {counts[ItemState.FAILED]} failed"
    if state == "waiting for registry":
        text += "; registry unreachable"
        if paused_until is not None:
            text += f", next try at {protocol.format_timestamp(paused_until)}"
    if errors:
        text += f"; last error: {errors[0]}"
    return text
