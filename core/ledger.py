"""What this identity already received, so ``recv`` never downloads or acks twice.

SQLite in the state dir, WAL mode so the CLI and a running daemon can share it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    digest TEXT PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    filename TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at TEXT NOT NULL,
    receipt_digest TEXT
);
"""


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the state database with the settings every user of it needs."""
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@dataclass(frozen=True)
class ReceivedRecord:
    """One received message."""

    digest: str
    message_id: str
    sender: str
    filename: str
    path: str
    received_at: str
    receipt_digest: str | None


class ReceivedLedger:
    """The ``received`` table."""

    def __init__(self, db_path: Path) -> None:
        self._conn = connect(db_path)
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def __enter__(self) -> ReceivedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, digest: str, message_id: str) -> ReceivedRecord | None:
        """The record for this message (matched by digest or by message id)."""
        row = self._conn.execute(
            "SELECT digest, message_id, sender, filename, path, received_at, receipt_digest "
            "FROM received WHERE digest = ? OR message_id = ?",
            (digest, message_id),
        ).fetchone()
        return ReceivedRecord(*row) if row else None

    def record(self, digest: str, message_id: str, sender: str, filename: str, path: str) -> None:
        """Remember a materialised message."""
        self._conn.execute(
            "INSERT OR IGNORE INTO received VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (digest, message_id, sender, filename, path, datetime.now(UTC).isoformat()),
        )

    def set_receipt(self, digest: str, receipt_digest: str) -> None:
        """Remember that a receipt went out, so it never goes out twice."""
        self._conn.execute(
            "UPDATE received SET receipt_digest = ? WHERE digest = ?", (receipt_digest, digest)
        )
