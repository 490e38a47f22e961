"""Receipts the mount signs: ``accepted`` on first read, ``rejected`` for bad content.

Caveats first:

* Only a message whose signature verified, by a signer trusted as exactly its
  claimed sender, is ever answered: the callers must hand over that
  :class:`VerifiedSigner`, and a signer under another name is refused here.
  Unsigned, untrusted, mismatched and expired messages get no receipt at all, so
  nobody can make the mount sign (or put words into) a receipt by pushing
  messages in a trusted sender's name.
* ``rejected`` answers a verified message whose own content then failed (a
  corrupt or ill-shaped chunk, a creation date in the future); the reason is
  escaped text (``errno_map.reason``).
* At most one receipt per message and status. ``accepted`` is final; a
  ``rejected`` one may be followed by ``accepted`` (a later mount read it after
  all), and the latest receipt is what counts. Answers are recorded in
  ``state_dir/fsmount.db`` only after the registry took them, and checked
  before sending, so a remount does not answer again. A send that failed
  (registry down, keyless token missing) is not recorded and is tried again the
  next time the message is read or listed, at most once per mount per message.
* ``--no-receipts`` turns off both kinds: a user who said "no receipts" does not
  want the mount to write to the registry on their behalf at all.
* Sending happens in the background (a task in the mount's nursery), so a
  ``read()`` never waits for a receipt.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from dockercomms.core.errors import DockerCommsError
from dockercomms.core.manifest import Message
from dockercomms.core.receipts import send_receipt
from dockercomms.core.registry.client import RegistryClient
from dockercomms.core.signing.verify import VerifiedSigner
from dockercomms.core.untrusted import shown
from dockercomms.fsmount.engine import Engine

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (
    digest TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    receipt_digest TEXT NOT NULL,
    reason TEXT,
    sent_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Answer:
    """The receipt we sent for one message.

    Attributes:
        status: ``accepted`` or ``rejected``.
        receipt_digest: the receipt manifest's digest.
        reason: why, for ``rejected``.
    """

    digest: str
    status: str
    receipt_digest: str
    reason: str | None
    sent_at: str

    def describe(self) -> str:
        """The value of ``user.dockercomms.receipt`` on an inbox file."""
        return f"{self.status} {self.receipt_digest} {self.sent_at}"


def supersedes(status: str, earlier: Answer | None) -> bool:
    """A receipt of ``status`` is due after ``earlier``: none yet, or rejected -> accepted."""
    return earlier is None or (earlier.status == "rejected" and status == "accepted")


class ReceiptBook:
    """The ``answered`` table (the latest receipt per message), in memory and on disk."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        rows = self._conn.execute(
            "SELECT digest, status, receipt_digest, reason, sent_at FROM answered"
        ).fetchall()
        self._answers = {row[0]: Answer(*row) for row in rows}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def get(self, digest: str) -> Answer | None:
        """What we answered for ``digest``, if anything."""
        with self._lock:
            return self._answers.get(digest)

    def record(self, answer: Answer) -> None:
        """Remember an answer the registry accepted (it replaces an earlier one)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answered VALUES (?, ?, ?, ?, ?)",
                (
                    answer.digest,
                    answer.status,
                    answer.receipt_digest,
                    answer.reason,
                    answer.sent_at,
                ),
            )
            self._answers[answer.digest] = answer

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


class ReceiptSender:
    """Answers messages once each, in the background.

    Attributes:
        enabled: False with ``--no-receipts``.
        failures: receipts that could not be sent (kept for ``.status``).
    """

    def __init__(
        self,
        engine: Engine,
        book: ReceiptBook,
        nursery: trio.Nursery,
        *,
        enabled: bool,
        ttl_seconds: int,
    ) -> None:
        self.engine = engine
        self.book = book
        self.enabled = enabled
        self.failures = 0
        self._nursery = nursery
        self._ttl_seconds = ttl_seconds
        self._tried: set[str] = set()

    def accepted(self, message: Message, signer: VerifiedSigner) -> None:
        """The first successful read of ``message``, which ``signer`` signed, happened."""
        self._schedule(message, "accepted", None, signer)

    def rejected(self, message: Message, reason: str, signer: VerifiedSigner) -> None:
        """``message``, whose signature by ``signer`` verified, failed on its own content."""
        self._schedule(message, "rejected", reason, signer)

    def _schedule(
        self, message: Message, status: str, reason: str | None, signer: VerifiedSigner
    ) -> None:
        if not self.enabled:
            return
        if signer.name != message.sender:
            # Never reached by the callers; the rule is kept where receipts are made.
            log.warning("no receipt for %s: not signed by its sender", message.digest[:19])
            return
        key = f"{status} {message.digest}"
        if key in self._tried or not supersedes(status, self.book.get(message.digest)):
            return
        self._tried.add(key)
        self._nursery.start_soon(self._send, message, status, reason)

    async def _send(self, message: Message, status: str, reason: str | None) -> None:
        def work(client: RegistryClient) -> Answer | None:
            if not supersedes(status, self.book.get(message.digest)):
                return None
            sent = send_receipt(
                client,
                self.engine.signer(),
                me=self.engine.me,
                message=message,
                status=status,
                verified=status == "accepted",
                reason=reason,
                ttl_seconds=self._ttl_seconds,
            )
            answer = Answer(
                message.digest,
                status,
                sent.digest,
                reason,
                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.book.record(answer)
            return answer

        try:
            answer = await self.engine.call(work)
        except (DockerCommsError, OSError) as exc:
            self.failures += 1
            text = exc.diagnostics() if isinstance(exc, DockerCommsError) else str(exc)
            log.warning("%s receipt for %s not sent: %s", status, message.digest[:19], shown(text))
            return
        except Exception:
            # A background job must never take the mount down with it.
            self.failures += 1
            log.exception("%s receipt for %s failed unexpectedly", status, message.digest[:19])
            return
        if answer is not None:
            log.info("sent %s receipt for %s", status, message.digest[:19])
