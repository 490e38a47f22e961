"""The receipts I sent, once per message and status, whoever sent them (``recv``, sync, a mount).

Caveats first:

* One store, in ``Paths.state_db`` (table ``answered``), consulted before any
  receipt goes out and written only after the registry took it: a message
  ``recv`` answered is not answered again when it is read through the mount, and
  a remount does not answer again either. A send that failed is not recorded.
* At most one receipt per message and status: ``accepted`` is final; a
  ``rejected`` one may be followed by ``accepted`` (read after all), and the
  latest receipt is what counts (:func:`supersedes`).
* Mounts before this store kept their answers in ``Paths.legacy_receipts_db``
  (``fsmount.db``); its rows are taken over the first time the store opens, and
  the old file is removed then.
* Thread-safe: one connection, one lock (the mount answers from worker threads).
  Reads go to the database each time, so a process sees what another one recorded.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (
    digest TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    receipt_digest TEXT NOT NULL,
    reason TEXT,
    sent_at TEXT NOT NULL
)
"""
_COLUMNS = "digest, status, receipt_digest, reason, sent_at"


@dataclass(frozen=True)
class Answer:
    """The receipt I sent for one message.

    Attributes:
        digest: the message's manifest digest.
        status: ``accepted`` or ``rejected``.
        receipt_digest: the receipt manifest's digest.
        reason: why, for ``rejected``.
        sent_at: when (RFC 3339, UTC).
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


class ReceiptStore:
    """The ``answered`` table: the latest receipt I sent per message."""

    def __init__(self, db_path: Path, *, legacy: Path | None = None) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(SCHEMA)
        if legacy is not None and legacy.exists():
            self._take_over(legacy)

    def _take_over(self, legacy: Path) -> None:
        """Keep what an older mount answered (its latest answer per message), then drop it."""
        try:
            old = sqlite3.connect(legacy, timeout=30)
            try:
                rows = old.execute(f"SELECT {_COLUMNS} FROM answered").fetchall()
            finally:
                old.close()
        except sqlite3.Error as exc:
            log.warning("cannot read the receipts in %s (%s); left in place", legacy, exc)
            return
        for row in rows:
            answer = Answer(*row)
            if supersedes(answer.status, self.get(answer.digest)):
                self.record(answer)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                legacy.with_name(legacy.name + suffix).unlink()
        log.info("took over %d receipts from %s", len(rows), legacy)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReceiptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, digest: str) -> Answer | None:
        """What I answered for ``digest``, if anything."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM answered WHERE digest = ?", (digest,)
            ).fetchone()
        return Answer(*row) if row else None

    def record(self, answer: Answer) -> None:
        """Remember an answer the registry took (it replaces an earlier one)."""
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO answered ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    answer.digest,
                    answer.status,
                    answer.receipt_digest,
                    answer.reason,
                    answer.sent_at,
                ),
            )

    def __len__(self) -> int:
        with self._lock:
            count: int = self._conn.execute("SELECT COUNT(*) FROM answered").fetchone()[0]
        return count
