"""The one store of receipts I sent: once per message and status, whoever sent them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dockercomms.core._internal.receipt_store import Answer, ReceiptStore, supersedes


def test_the_receipt_store_lets_accepted_follow_rejected_and_nothing_follow_accepted(
    tmp_path: Path,
) -> None:
    book = ReceiptStore(tmp_path / "state.db")
    try:
        assert supersedes("rejected", book.get("sha256:m"))
        book.record(
            Answer("sha256:m", "rejected", "sha256:r1", "bad chunk", "2026-01-01T00:00:00Z")
        )
        assert not supersedes("rejected", book.get("sha256:m"))
        assert supersedes("accepted", book.get("sha256:m"))
        book.record(Answer("sha256:m", "accepted", "sha256:r2", None, "2026-01-02T00:00:00Z"))
    finally:
        book.close()

    reopened = ReceiptStore(tmp_path / "state.db")
    try:
        answer = reopened.get("sha256:m")
        assert answer is not None and answer.receipt_digest == "sha256:r2"
        assert not supersedes("accepted", answer) and not supersedes("rejected", answer)
        assert len(reopened) == 1
    finally:
        reopened.close()


def test_the_store_takes_over_what_an_older_mount_answered(tmp_path: Path) -> None:
    legacy = tmp_path / "fsmount.db"
    old = sqlite3.connect(legacy)
    old.execute(
        "CREATE TABLE answered (digest TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "receipt_digest TEXT NOT NULL, reason TEXT, sent_at TEXT NOT NULL)"
    )
    old.execute(
        "INSERT INTO answered VALUES ('sha256:m', 'accepted', 'sha256:r', NULL, "
        "'2026-01-02T00:00:00Z')"
    )
    old.commit()
    old.close()

    with ReceiptStore(tmp_path / "state.db", legacy=legacy) as store:
        answer = store.get("sha256:m")
        assert answer is not None and answer.receipt_digest == "sha256:r"
        assert not supersedes("accepted", answer)
    assert not legacy.exists()
