"""What this identity already received or rejected, so ``recv`` never does either twice.

SQLite in the state dir, WAL mode so the CLI and a running daemon can share it.

Caveats first:

* Receipts sent are the receipt store's (``core._internal.receipt_store``, same database);
  ``received.receipt_digest`` is no longer written and stays for older rows.
* ``received`` is keyed by manifest digest, and by (sender, message id): a message
  id is only unique per sender, and only a verified sender may be recorded. A
  ledger from before that rule (message id unique on its own) is rebuilt on
  open, keeping every row, in one transaction.
* ``rejected`` remembers a manifest digest that failed, so the next run spends
  one manifest fetch on it and nothing more. A digest never changes meaning, but
  a verdict that trust decided (no trusted signature, wrong signer) can change
  when the trust policy does: such rows carry the policy's fingerprint and only
  count under that policy. Rows under ``policy == ""`` were decided by the
  message alone (malformed, expired, bad chunks) and count for ever.
* Rows for digests no longer in the inbox are dropped by :meth:`keep_rejections`,
  so junk pushed and deleted does not grow the ledger without bound.
* ``verified`` is a cache of listing results: a message manifest (its exact
  bytes) whose signature verified, by whom, under which trust-policy
  fingerprint. Only a signature by a trusted signer puts a row there, so junk
  cannot grow it; :meth:`keep_verified` drops rows for digests no longer listed
  and for other policies. A row never stands for the checks of ``open()`` or
  ``recv`` (they verify again), and expiry is the reader's to check by the
  clock: the row says who signed, not that the message is still valid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RECEIVED = """
CREATE TABLE IF NOT EXISTS received (
    digest TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    filename TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at TEXT NOT NULL,
    receipt_digest TEXT,
    UNIQUE (sender, message_id)
)
"""
REJECTED = """
CREATE TABLE IF NOT EXISTS rejected (
    digest TEXT NOT NULL,
    policy TEXT NOT NULL,
    error_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL,
    PRIMARY KEY (digest, policy)
)
"""
VERIFIED = """
CREATE TABLE IF NOT EXISTS verified (
    digest TEXT NOT NULL,
    policy TEXT NOT NULL,
    manifest BLOB NOT NULL,
    signer_name TEXT NOT NULL,
    signer_kind TEXT NOT NULL,
    signer_identity TEXT NOT NULL,
    signer_issuer TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    PRIMARY KEY (digest, policy)
)
"""
_RECEIVED_COLUMNS = "digest, message_id, sender, filename, path, received_at, receipt_digest"
_REJECTED_COLUMNS = "digest, policy, error_type, reason, rejected_at"
_VERIFIED_COLUMNS = (
    "digest, policy, manifest, signer_name, signer_kind, signer_identity, signer_issuer, "
    "verified_at"
)
#: Digests per ``IN (...)`` query (SQLite's default cap on parameters is 999 or more).
_IN_BATCH = 500
#: Longest reason kept for a rejection (it is shown again, never parsed).
MAX_REASON_CHARS = 1000


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


@dataclass(frozen=True)
class RejectedRecord:
    """One remembered rejection.

    Attributes:
        policy: the trust-policy fingerprint it holds under, or ``""`` for always.
        error_type: the error class name, e.g. ``UntrustedSignerError``.
        reason: the error's diagnostics when it was rejected.
        rejected_at: when (ISO 8601, UTC).
    """

    digest: str
    policy: str
    error_type: str
    reason: str
    rejected_at: str


@dataclass(frozen=True)
class VerifiedRecord:
    """One cached listing result: this manifest's signature verified as ``signer_*``.

    Attributes:
        manifest: the manifest's exact bytes (their sha256 is ``digest``), parsed
            again by whoever uses the row, so a row is never trusted for more than
            the signature.
        signer_kind: ``key`` or ``keyless``.
    """

    digest: str
    policy: str
    manifest: bytes
    signer_name: str
    signer_kind: str
    signer_identity: str
    signer_issuer: str
    verified_at: str


class ReceivedLedger:
    """The ``received``, ``rejected`` and ``verified`` tables."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._conn = connect(db_path)
        self._migrate()

    def _migrate(self) -> None:
        """Create the tables; rebuild a ``received`` whose message id is unique on its own."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._message_id_alone_is_unique():
                self._conn.execute("ALTER TABLE received RENAME TO received_before_sender_key")
                self._conn.execute(RECEIVED)
                self._conn.execute(
                    f"INSERT OR IGNORE INTO received ({_RECEIVED_COLUMNS}) "
                    f"SELECT {_RECEIVED_COLUMNS} FROM received_before_sender_key"
                )
                self._conn.execute("DROP TABLE received_before_sender_key")
            self._conn.execute(RECEIVED)
            self._conn.execute(REJECTED)
            self._conn.execute(VERIFIED)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _message_id_alone_is_unique(self) -> bool:
        for _, index, unique, *_ in self._conn.execute("PRAGMA index_list(received)"):
            if not unique:
                continue
            columns = [row[2] for row in self._conn.execute(f"PRAGMA index_info('{index}')")]
            if columns == ["message_id"]:
                return True
        return False

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def __enter__(self) -> ReceivedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- received -----------------------------------------------------------------------

    def get(
        self, digest: str, *, sender: str | None = None, message_id: str | None = None
    ) -> ReceivedRecord | None:
        """The record for this manifest digest, or for this sender's message id.

        ``sender`` must be the *verified* sender: before verification, ask by
        digest alone.
        """
        row = self._conn.execute(
            f"SELECT {_RECEIVED_COLUMNS} FROM received "
            "WHERE digest = ? OR (sender = ? AND message_id = ?)",
            (digest, sender, message_id),
        ).fetchone()
        return ReceivedRecord(*row) if row else None

    def record(self, digest: str, message_id: str, sender: str, filename: str, path: str) -> None:
        """Remember a materialised message (``sender`` verified)."""
        self._conn.execute(
            f"INSERT OR IGNORE INTO received ({_RECEIVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (digest, message_id, sender, filename, path, _now()),
        )

    # --- rejected -----------------------------------------------------------------------

    def rejection(self, digest: str, policy: str) -> RejectedRecord | None:
        """The remembered rejection of ``digest`` that holds under trust policy ``policy``."""
        row = self._conn.execute(
            f"SELECT {_REJECTED_COLUMNS} FROM rejected WHERE digest = ? AND policy IN ('', ?) "
            "ORDER BY policy LIMIT 1",
            (digest, policy),
        ).fetchone()
        return RejectedRecord(*row) if row else None

    def remember_rejection(self, digest: str, policy: str, error_type: str, reason: str) -> None:
        """Remember that ``digest`` was rejected (``policy`` ``""``: whatever the trust)."""
        self._conn.execute(
            f"INSERT OR REPLACE INTO rejected ({_REJECTED_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (digest, policy, error_type, reason[:MAX_REASON_CHARS], _now()),
        )

    def keep_rejections(self, digests: Iterable[str], policy: str) -> int:
        """Forget rejections of every other digest, and those under other trust policies.

        Called with every digest a complete inbox listing named; returns how many
        rows went.
        """
        keep = set(digests)
        rows = self._conn.execute("SELECT digest, policy FROM rejected").fetchall()
        gone = [(d, pol) for d, pol in rows if d not in keep or pol not in ("", policy)]
        if gone:
            self._transaction("DELETE FROM rejected WHERE digest = ? AND policy = ?", gone)
        return len(gone)

    # --- verified -----------------------------------------------------------------------

    def verified(
        self, policy: str, digests: Iterable[str] | None = None
    ) -> dict[str, VerifiedRecord]:
        """Cached verifications under trust policy ``policy`` (of ``digests``, else all)."""
        query = f"SELECT {_VERIFIED_COLUMNS} FROM verified WHERE policy = ?"
        if digests is None:
            return _records(self._conn.execute(query, (policy,)))
        wanted = sorted(set(digests))
        found: dict[str, VerifiedRecord] = {}
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start : start + _IN_BATCH]
            marks = ", ".join("?" * len(batch))
            found |= _records(
                self._conn.execute(f"{query} AND digest IN ({marks})", (policy, *batch))
            )
        return found

    def remember_verified(self, records: Iterable[VerifiedRecord]) -> None:
        """Cache these verifications (one transaction: a first listing writes thousands)."""
        rows = [
            (
                r.digest,
                r.policy,
                r.manifest,
                r.signer_name,
                r.signer_kind,
                r.signer_identity,
                r.signer_issuer,
                r.verified_at,
            )
            for r in records
        ]
        if not rows:
            return
        self._transaction(
            f"INSERT OR REPLACE INTO verified ({_VERIFIED_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def keep_verified(self, digests: Iterable[str], policy: str) -> int:
        """Forget cached verifications of every other digest, and under other policies.

        Called with every digest a complete inbox listing named (so a deleted tag's
        row goes, and a hostile registry cannot grow the cache by churning); returns
        how many rows went.
        """
        keep = set(digests)
        rows = self._conn.execute("SELECT digest, policy FROM verified").fetchall()
        gone = [(d, pol) for d, pol in rows if d not in keep or pol != policy]
        if gone:
            self._transaction("DELETE FROM verified WHERE digest = ? AND policy = ?", gone)
        return len(gone)

    def _transaction(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(statement, rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise


def _records(rows: Iterable[tuple[object, ...]]) -> dict[str, VerifiedRecord]:
    """Rows of ``verified`` by digest; a row of the wrong shape (a damaged or edited
    database: SQLite stores any type in any column) is left out, never trusted."""
    found: dict[str, VerifiedRecord] = {}
    for row in rows:
        if isinstance(row[2], bytes) and all(
            isinstance(v, str) for i, v in enumerate(row) if i != 2
        ):
            found[str(row[0])] = VerifiedRecord(*row)  # type: ignore[arg-type]
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat()
