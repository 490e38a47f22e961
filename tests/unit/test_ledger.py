"""The state ledger: what was received (by digest, or by verified sender and message id)
and what was rejected (by digest, and by trust policy when trust decided it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dockercomms.core._internal.ledger import ReceivedLedger, VerifiedRecord

OLD_SCHEMA = """
CREATE TABLE received (
    digest TEXT PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    filename TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at TEXT NOT NULL,
    receipt_digest TEXT
);
"""
MID = "6f0b7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
A, B, C = ("sha256:" + ch * 64 for ch in "abc")


def test_an_old_ledger_is_migrated_and_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO received VALUES (?, ?, ?, ?, ?, ?, ?)",
            (A, MID, "alice", "a.txt", "/in/a.txt", "2026-01-01T00:00:00+00:00", "sha256:r"),
        )
    conn.close()

    with ReceivedLedger(db) as ledger:
        old = ledger.get(A)
        assert old is not None and old.receipt_digest == "sha256:r"
        assert ledger.get(B, sender="alice", message_id=MID) == old
        # Another sender's message with the same id is another message.
        assert ledger.get(B, sender="carol", message_id=MID) is None
        ledger.record(B, MID, "carol", "c.txt", "/in/c.txt")
        assert ledger.get(B) is not None and ledger.get(A) is not None
    with ReceivedLedger(db) as again:  # opening a migrated ledger changes nothing
        assert again.get(C, sender="carol", message_id=MID) is not None


def test_rejections_by_digest_and_by_trust_policy(tmp_path: Path) -> None:
    with ReceivedLedger(tmp_path / "state.db") as ledger:
        ledger.remember_rejection(A, "", "FilenameError", "unsafe")
        ledger.remember_rejection(B, "policy-1", "UntrustedSignerError", "who?")
        assert ledger.rejection(A, "policy-2") is not None  # the manifest itself is bad
        assert ledger.rejection(B, "policy-1") is not None
        assert ledger.rejection(B, "policy-2") is None  # trust changed: try again
        assert ledger.rejection(C, "policy-1") is None


def _verified(digest: str, policy: str, manifest: bytes = b"{}") -> VerifiedRecord:
    return VerifiedRecord(digest, policy, manifest, "alice", "key", "ab12", "", "2026-01-01")


def test_verification_results_by_digest_and_policy_and_forgotten_when_unlisted(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    with ReceivedLedger(db) as ledger:
        ledger.remember_verified([_verified(A, "p1"), _verified(B, "p1"), _verified(A, "p2")])
    with ReceivedLedger(db) as ledger:  # kept across runs
        assert set(ledger.verified("p1")) == {A, B}
        assert set(ledger.verified("p1", [B, C])) == {B}
        assert set(ledger.verified("p2")) == {A}
        assert ledger.verified("p3") == {}  # another trust policy: nothing holds
        # A complete listing under p1 names only B: A's rows (and p2's) go.
        assert ledger.keep_verified([B], "p1") == 2
        assert set(ledger.verified("p1")) == {B}
        assert ledger.verified("p2") == {}
