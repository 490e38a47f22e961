"""The push queue's sealed-send state: pinned once, kept across reopen, migrated from v1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dockercomms.core.outbox import Delivery, Descriptor, RecipientPlan
from dockercomms.syncer.queue import PushQueue

V1_SCHEMA = """
CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, recipient TEXT NOT NULL,
    filename TEXT NOT NULL, size INTEGER NOT NULL, state TEXT NOT NULL,
    message_id TEXT NOT NULL, session_id TEXT NOT NULL, created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, next_attempt_at TEXT, digest TEXT,
    tag TEXT, enqueued_at TEXT NOT NULL, updated_at TEXT NOT NULL, sent_at TEXT, receipt TEXT,
    source_path TEXT, source_key TEXT, chunk_bytes INTEGER, compression TEXT, ttl_seconds INTEGER
);
CREATE TABLE chunks (
    item_id TEXT NOT NULL, idx INTEGER NOT NULL, media_type TEXT NOT NULL,
    digest TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (item_id, idx)
);
PRAGMA user_version = 1;
"""
PLAN = RecipientPlan(("bob", "carol"), ("age1a", "age1b"))
LAYER = Descriptor("application/vnd.dockercomms.chunk.v1.tar+zstd+age", "sha256:" + "a" * 64, 9)


def test_a_version_1_queue_is_migrated_and_keeps_its_items(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    stamp = "2026-11-30T10:00:00.000000+00:00"
    conn.execute(
        "INSERT INTO items (id, recipient, filename, size, state, message_id, session_id, "
        "created_at, enqueued_at, updated_at) VALUES ('x', 'bob', 'a.txt', 1, 'queued', "
        "'m', 's', ?, ?, ?)",
        (stamp, stamp, stamp),
    )
    conn.execute("INSERT INTO chunks VALUES ('x', 0, 'old', 'sha256:00', 1)")
    conn.commit()
    conn.close()
    with PushQueue(db, tmp_path / "data") as queue:
        [item] = queue.items()
        assert (item.id, item.recipient) == ("x", "bob")
        assert queue.recipient_plan("x") is None and queue.sealed_value("x") is None
        assert queue.known_sha256("x") == {}
        # A sealed plan cannot reuse chunks of an earlier (plaintext) try.
        assert queue.pin_recipient_plan("x", PLAN) == PLAN
        assert queue.known_chunks("x") == {}
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (2,)


def test_the_plan_sealed_value_chunks_and_deliveries_are_pinned(tmp_path: Path) -> None:
    db, data = tmp_path / "queue.db", tmp_path / "data"
    source = tmp_path / "f.txt"
    source.write_text("x")
    with PushQueue(db, data) as queue:
        item = queue.enqueue(source, "team")
        assert queue.pin_recipient_plan(item.id, PLAN) == PLAN
        other = RecipientPlan(("dave",), ("age1c",))
        assert queue.pin_recipient_plan(item.id, other) == PLAN
        queue.record_chunk(item.id, 0, LAYER, "b" * 64)
        assert queue.pin_sealed(item.id, "first") == "first"
        assert queue.pin_sealed(item.id, "second") == "first"
        queue.record_delivery(item.id, Delivery("bob", "sha256:" + "c" * 64, "inbox-bob-x", "d"))
    with PushQueue(db, data) as queue:
        assert queue.recipient_plan(item.id) == PLAN
        assert queue.sealed_value(item.id) == "first"
        assert queue.known_sha256(item.id) == {0: "b" * 64}
        assert queue.known_chunks(item.id)[0].digest == LAYER.digest
        assert list(queue.deliveries(item.id)) == ["bob"]
        queue.cancel(item.id)
        assert queue.deliveries(item.id) == {}
