"""The outbox syncer end to end: real files, the real embedded registry, real signatures.

alice runs the syncer; bob receives with the same loop ``recv`` uses. The crash
tests kill a real ``dockercomms sync`` process with SIGKILL and restart it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dockercomms.core._internal.limits import MIB
from dockercomms.core._internal.send import SendRequest, SentMessage
from dockercomms.core.errors import ConfigError
from dockercomms.core.status import to_json
from dockercomms.core.workspace import RegistryOptions, Workspace
from dockercomms.syncer.queue import ItemState, PushQueue, QueueItem, SendOptions
from dockercomms.syncer.syncer import Syncer, SyncSummary
from dockercomms.syncer.watcher import is_temporary_name
from tests.syncer_fixtures import (
    Identity,
    make_identity,
    make_pair,
    run_sync,
    sha256_file,
    sync_process,
    trust_signing_key_only,
    wait_until,
)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Identity, Identity]:
    return make_pair(tmp_path / "ids")


@pytest.fixture
def plain_pair(tmp_path: Path) -> tuple[Identity, Identity]:
    """alice and bob as before sealing: no cards, trusted by signing key, alice sends plaintext.

    For the tests that play the worker's crash windows by hand with a plaintext send
    (a sealed send's crash windows are in tests/e2e/test_sealed_crash.py).
    """
    root = tmp_path / "ids"
    alice, bob = (
        make_identity(root, name, root / "xdg-data", "--no-publish") for name in ("alice", "bob")
    )
    for truster, trusted in ((alice, bob), (bob, alice)):
        trust_signing_key_only(truster, trusted, root)
    assert alice.cli("config", "set", "send_plaintext", "true") == 0
    return alice, bob


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    folder = tmp_path / "outbox"
    (folder / "bob").mkdir(parents=True)
    return folder


@pytest.fixture
def alice_syncer(pair: tuple[Identity, Identity], outbox: Path) -> Iterator[Syncer]:
    alice, _ = pair
    # To a name whose age key it cannot know (dave, an untrusted folder), alice sends
    # plaintext rather than waiting for a key, as these tests expect.
    assert alice.cli("config", "set", "send_plaintext", "true") == 0
    syncer = Syncer(
        alice.workspace(),
        None,
        spool_dir=outbox,
        inbox_dir=None,
        default_recipient=None,
        poll_seconds=0.5,
        settle_seconds=0.2,
    )
    syncer.start()
    try:
        yield syncer
    finally:
        syncer.close()


def sent_count(queue: PushQueue) -> int:
    return queue.statistics().counts[ItemState.SENT]


def queue_db(identity: Identity) -> Path:
    return identity.paths.state_dir / "queue.db"


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the queue database the way another process would (it may not exist yet)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


TEMPORARY = [
    ".notes.txt.swp",
    ".notes.txt.swx",
    "notes.txt~",
    "movie.mkv.part",
    "setup.exe.crdownload",
    "scratch.tmp",
    ".hidden",
    ".#notes.txt",
    "#notes.txt#",
    "~$report.docx",
]


def test_temporary_names() -> None:
    assert all(is_temporary_name(name) for name in TEMPORARY)
    for name in ("notes.txt", "report.pdf", "a~b", "part.txt", "tmp"):
        assert not is_temporary_name(name)


def test_dropped_file_is_received_once_and_temp_files_stay(
    pair: tuple[Identity, Identity], outbox: Path, alice_syncer: Syncer, tmp_path: Path
) -> None:
    _, bob = pair
    for name in TEMPORARY:
        (outbox / "bob" / name).write_bytes(b"work in progress")
    payload = os.urandom(300_000)
    (outbox / "bob" / "hello.bin").write_bytes(payload)

    wait_until(lambda: sent_count(alice_syncer.queue) == 1, 20, "hello.bin to be sent")
    [item] = alice_syncer.queue.items()
    assert (item.filename, item.recipient, item.size) == ("hello.bin", "bob", len(payload))
    assert not item.data_path.exists()

    outcomes = bob.receive(tmp_path / "bob-inbox")
    [received] = [o for o in outcomes if o.status == "received"]
    assert received.message is not None and received.path is not None
    assert received.message.message_id == item.message_id
    assert received.message.digest == item.digest
    assert received.path.read_bytes() == payload
    assert bob.receive(tmp_path / "bob-inbox")[0].status == "already-received"

    assert sorted(p.name for p in (outbox / "bob").iterdir()) == sorted(TEMPORARY)
    assert len(alice_syncer.queue.items()) == 1
    # Alice's poller may record the receipt first: it polls as soon as the store changes.
    alice_syncer.refresh_receipts()
    wait_until(
        lambda: alice_syncer.queue.items()[0].receipt == "accepted", 20, "the receipt recorded"
    )
    status = to_json(alice_syncer.statistics())
    assert status["state"] == "idle" and status["registry_reachable"] is True
    assert status["queue"]["counts"]["sent"] == 1
    json.dumps(status)


def test_renamed_into_outbox(
    pair: tuple[Identity, Identity], outbox: Path, alice_syncer: Syncer, tmp_path: Path
) -> None:
    _, bob = pair
    staging = tmp_path / "staging"
    (staging / "album").mkdir(parents=True)
    expected = {
        "report.pdf": os.urandom(5000),
        "download.iso": os.urandom(7000),
        "one.jpg": b"1" * 100,
        "two.jpg": b"2" * 100,
    }
    (staging / "report.pdf").write_bytes(expected["report.pdf"])
    (staging / "album" / "one.jpg").write_bytes(expected["one.jpg"])
    (staging / "album" / "two.jpg").write_bytes(expected["two.jpg"])
    (staging / "report.pdf").rename(outbox / "bob" / "report.pdf")
    (staging / "album").rename(outbox / "bob" / "album")
    # A browser: write the .part name, then rename it to the final name.
    partial = outbox / "bob" / "download.iso.part"
    with partial.open("wb") as handle:
        handle.write(expected["download.iso"][:3000])
        handle.flush()
        handle.write(expected["download.iso"][3000:])
    partial.rename(outbox / "bob" / "download.iso")

    wait_until(lambda: sent_count(alice_syncer.queue) == 4, 20, "four files to be sent")
    outcomes = bob.receive(tmp_path / "bob-inbox")
    got = {o.path.name: o.path.read_bytes() for o in outcomes if o.path is not None}
    assert got == expected


@pytest.mark.slow
def test_two_hundred_files_at_once_each_sent_once(
    pair: tuple[Identity, Identity], outbox: Path, alice_syncer: Syncer, tmp_path: Path
) -> None:
    _, bob = pair
    for n in range(200):
        (outbox / "bob" / f"file-{n:03}.txt").write_text(f"file number {n}\n")

    wait_until(lambda: sent_count(alice_syncer.queue) == 200, 45, "200 files to be sent")
    items = alice_syncer.queue.items()
    assert len(items) == 200 and len({i.message_id for i in items}) == 200
    assert len(bob.inbox_tags()) == 200
    # (no receipts: 200 of them would double the test's time for nothing it checks)
    outcomes = bob.receive(tmp_path / "bob-inbox", receipts=False)
    received = [o for o in outcomes if o.status == "received"]
    assert len(received) == 200
    assert {o.message.message_id for o in received if o.message} == {i.message_id for i in items}
    for outcome in received:
        assert outcome.path is not None
        n = int(outcome.path.stem.split("-")[1])
        assert outcome.path.read_text() == f"file number {n}\n"
    assert not list((outbox / "bob").iterdir())


def test_no_default_recipient_keeps_the_file_and_says_why(
    pair: tuple[Identity, Identity],
    outbox: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = pair
    stray = outbox / "stray.txt"
    stray.write_text("to whom?")
    os.utime(stray, (1_000_000_000, 1_000_000_000))
    capsys.readouterr()

    assert alice.cli("sync", "--once", "--outbox", str(outbox), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert str(stray) in report["unroutable"]
    assert "--to" in report["errors"][0]
    assert stray.exists()

    assert alice.cli("sync", "--once", "--outbox", str(outbox), "--to", "bob", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [i["filename"] for i in report["sent"]] == ["stray.txt"]
    assert report["errors"] == [] and not stray.exists()
    [outcome] = bob.receive(tmp_path / "bob-inbox")
    assert outcome.path is not None and outcome.path.read_text() == "to whom?"


def test_inbox_poller_and_second_syncer_refused(
    pair: tuple[Identity, Identity], outbox: Path, alice_syncer: Syncer, tmp_path: Path
) -> None:
    _, bob = pair
    inbox = tmp_path / "bob-inbox"
    bob_syncer = Syncer(
        bob.workspace(),
        None,
        spool_dir=tmp_path / "bob-outbox",
        inbox_dir=inbox,
        default_recipient=None,
        poll_seconds=0.2,
    )
    with bob_syncer:
        (outbox / "bob" / "polled.txt").write_text("picked up by the poller")
        wait_until(
            lambda: to_json(bob_syncer.statistics())["inbox"]["received"] == 1,
            20,
            "bob's poller to receive",
        )
        assert (inbox / "polled.txt").read_text() == "picked up by the poller"
        second = Syncer(
            bob.workspace(),
            None,
            spool_dir=tmp_path / "bob-outbox",
            inbox_dir=None,
            default_recipient=None,
        )
        with pytest.raises(ConfigError, match="another dockercomms sync"):
            second.start()
        second.close()


def test_the_inbox_poller_receives_without_waiting_for_its_interval(
    pair: tuple[Identity, Identity], tmp_path: Path
) -> None:
    """On the embedded store the poller watches the layout's index (issue #15, item 4)."""
    alice, bob = pair
    inbox = tmp_path / "bob-inbox"
    bob_syncer = Syncer(
        bob.workspace(),
        None,
        spool_dir=tmp_path / "bob-outbox",
        inbox_dir=inbox,
        default_recipient=None,
        poll_seconds=3600,
    )
    with bob_syncer:
        wait_until(
            lambda: to_json(bob_syncer.statistics())["inbox"]["last_poll_at"] is not None,
            60,
            "bob's first poll",
        )
        note = tmp_path / "watched.txt"
        note.write_text("no poll needed")
        assert alice.cli("send", str(note), "-r", "bob") == 0
        wait_until(
            lambda: (inbox / "watched.txt").exists(), 60, "the message, the next poll an hour away"
        )
        assert to_json(bob_syncer.statistics())["inbox"]["watching"] is True


def test_kill_9_mid_upload_then_restart_sends_exactly_once(
    pair: tuple[Identity, Identity], tmp_path: Path
) -> None:
    alice, bob = pair
    alice.set_chunk_bytes(1 * MIB)
    outbox = tmp_path / "outbox"
    (outbox / "bob").mkdir(parents=True)
    staging = tmp_path / "big.bin"
    with staging.open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(MIB))
    expected = sha256_file(staging)
    staging.rename(outbox / "bob" / "big.bin")
    db = queue_db(alice)

    def chunks_recorded() -> bool:
        rows = db_rows(db, "SELECT COUNT(*) FROM chunks")
        return bool(rows) and int(str(rows[0][0])) >= 4

    args = ("--outbox", str(outbox), "--settle", "0.1")
    with sync_process(alice, tmp_path / "run1", *args) as run:
        run.wait_until(chunks_recorded, 30, "some chunks to be uploaded")
        os.kill(run.pid, signal.SIGKILL)
        run.process.wait()
    [(message_id, state, attempts)] = db_rows(db, "SELECT message_id, state, attempts FROM items")
    assert (state, attempts) == ("uploading", 1)

    assert run_sync(alice, tmp_path / "run2", "--once", *args) == 0
    [(again, state, attempts)] = db_rows(db, "SELECT message_id, state, attempts FROM items")
    assert (again, state, attempts) == (message_id, "sent", 2)
    assert len(bob.inbox_tags()) == 1
    outcomes = bob.receive(tmp_path / "bob-inbox")
    [outcome] = outcomes
    assert outcome.status == "received" and outcome.message is not None
    assert outcome.message.message_id == message_id
    assert outcome.path is not None and sha256_file(outcome.path) == expected


@pytest.mark.slow
def test_repeated_kill_9_at_random_moments_loses_and_duplicates_nothing(
    pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    """SIGKILL lands wherever it lands: intake, upload, tag push, bookkeeping."""
    alice, bob = pair
    expected = {f"note-{n:02}.txt": os.urandom(2000 + n) for n in range(60)}
    for name, data in expected.items():
        (outbox / "bob" / name).write_bytes(data)
    db = queue_db(alice)

    def progress() -> list[tuple[object, ...]]:
        return db_rows(db, "SELECT state, COUNT(*) FROM items GROUP BY state")

    def all_sent(rows: list[tuple[object, ...]]) -> bool:
        return dict(rows) == {"sent": len(expected)} and not list((outbox / "bob").iterdir())

    chance = random.Random(20261123)
    for round_ in range(5):
        before = progress()
        if all_sent(before):
            break  # a fast machine sent everything already: nothing is left to interrupt
        with sync_process(alice, tmp_path / f"chaos{round_}", "--outbox", str(outbox)) as run:

            def changed(since: list[tuple[object, ...]] = before) -> bool:
                return progress() != since

            # Once this run has done something, kill it a random moment later.
            run.wait_until(changed, 20, "the restarted syncer to work")
            time.sleep(chance.uniform(0.0, 0.3))
            os.kill(run.pid, signal.SIGKILL)
            run.process.wait()
    assert run_sync(alice, tmp_path / "final", "--once", "--outbox", str(outbox)) == 0

    assert len(bob.inbox_tags()) == len(expected)
    outcomes = bob.receive(tmp_path / "bob-inbox", receipts=False)
    got = {o.path.name: o.path.read_bytes() for o in outcomes if o.path is not None}
    assert got == expected
    assert not list((outbox / "bob").iterdir())


def test_a_file_swapped_for_a_link_between_check_and_intake_is_never_sent(
    pair: tuple[Identity, Identity],
    outbox: Path,
    alice_syncer: Syncer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#13.11: another local user who can write into a shared outbox swaps names.

    The swaps happen at a fixed point, after the watcher's checks and before the
    queue moves the file, so the race is won every time, on any machine: a file
    swapped for a symlink, and a recipient folder swapped for a link to a private
    folder holding a file of the same name.
    """
    _, bob = pair
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    private = secrets / "private.key"
    private.write_bytes(b"the owner's secret\n")
    (secrets / "report.txt").write_bytes(b"the owner's private report\n")
    swapped: list[str] = []
    original = PushQueue._enqueue

    def swap_then_enqueue(self: PushQueue, path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == "settled.txt" and "file" not in swapped:
            path.rename(path.with_name(".settled.txt.moved"))  # hidden: never sent
            path.symlink_to(private)
            swapped.append("file")
        if path.parent.name == "dave" and "folder" not in swapped:
            path.parent.rename(outbox / ".dave.moved")
            (outbox / "dave").symlink_to(secrets)
            swapped.append("folder")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(PushQueue, "_enqueue", swap_then_enqueue)
    bob_dir = outbox / "bob"
    (bob_dir / "settled.txt").write_text("meant to be sent\n")
    os.link(private, bob_dir / "hardlink.txt")  # another name of the private file
    (bob_dir / "foreign.txt").write_text("dropped by another user\n")
    os.chown(bob_dir / "foreign.txt", 65534, 65534)
    (bob_dir / "fine.txt").write_text("sent\n")
    (outbox / "dave").mkdir()
    (outbox / "dave" / "report.txt").write_text("the report meant for dave\n")
    # A path seen in an event before its folder became a link.
    (outbox / "carol").symlink_to(secrets)
    alice_syncer.watcher.note(outbox / "carol" / "private.key")

    expected = {"bob/settled.txt", "bob/hardlink.txt", "bob/foreign.txt", "carol/private.key"}

    def refused() -> set[str]:
        return {r["path"] for r in to_json(alice_syncer.watcher.statistics()).get("refused", [])}

    def decided() -> bool:
        counts = alice_syncer.queue.statistics().counts
        busy = counts[ItemState.QUEUED] + counts[ItemState.UPLOADING]
        return not busy and sent_count(alice_syncer.queue) + len(refused() & expected) >= 6

    wait_until(decided, 30, "every file in the outbox to be sent or refused")
    assert sorted(swapped) == ["file", "folder"], "the swap hook did not run"
    items = alice_syncer.queue.items()
    assert sorted((i.recipient, i.filename) for i in items) == [
        ("bob", "fine.txt"),
        ("dave", "report.txt"),
    ]
    assert expected <= refused()
    # The file dropped for dave was sent (moved out of its real folder), not the private one.
    assert not (outbox / ".dave.moved" / "report.txt").exists()
    assert (secrets / "report.txt").read_bytes() == b"the owner's private report\n"
    assert private.read_bytes() == b"the owner's secret\n"
    outcomes = bob.receive(tmp_path / "bob-inbox", receipts=False)
    assert [(o.path.name, o.path.read_bytes()) for o in outcomes if o.path] == [
        ("fine.txt", b"sent\n")
    ]


def test_stop_interrupts_a_long_upload_which_resumes_as_the_same_message(
    pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    alice, bob = pair
    alice.set_chunk_bytes(1 * MIB)
    payload = os.urandom(24 * MIB)
    (tmp_path / "long.bin").write_bytes(payload)
    syncer = Syncer(
        alice.workspace(), None, spool_dir=outbox, inbox_dir=None, default_recipient="bob"
    )
    try:
        syncer.start()
        (tmp_path / "long.bin").rename(outbox / "long.bin")
        wait_until(
            lambda: (to_json(syncer.statistics())["in_flight"] or {}).get("bytes_done", 0) > 0,
            20,
            "the upload to be under way",
        )
        syncer.stop(drain_timeout=0)
        [item] = syncer.queue.items()
        assert item.state == ItemState.QUEUED and item.last_error == "interrupted by shutdown"
        assert syncer.queue.known_chunks(item.id)
        summary = syncer.run_once()
    finally:
        syncer.close()
    [sent] = summary.sent
    assert (sent.id, sent.message_id, sent.attempts) == (item.id, item.message_id, 2)
    [outcome] = bob.receive(tmp_path / "bob-inbox")
    assert outcome.path is not None and outcome.path.read_bytes() == payload


def test_crash_after_tag_before_mark_sent_is_the_same_message(
    plain_pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    """The worst moment: the inbox tag is pushed but the queue never heard of it."""
    alice, bob = plain_pair
    workspace = alice.workspace()
    state = workspace.paths.state_dir
    (outbox / "bob" / "late.txt").write_text("sent twice, received once")
    with PushQueue(state / "queue.db", state / "queue") as queue:
        item = queue.enqueue(outbox / "bob" / "late.txt", "bob")
        first = _tag_then_crash(workspace, queue, item)
    # (the process "dies" here: the row is still 'uploading')
    [sent] = _one_sync_pass(workspace, outbox).sent
    assert (sent.message_id, sent.tag) == (first.message_id, first.tag)
    assert bob.inbox_tags() == [first.tag]
    [outcome] = bob.receive(tmp_path / "bob-inbox")
    assert outcome.path is not None and outcome.path.read_text() == "sent twice, received once"


def _tag_then_crash(
    workspace: Workspace, queue: PushQueue, item: QueueItem, ttl_seconds: int | None = None
) -> SentMessage:
    """Send ``item`` with its fixed ids as the worker would, but never tell the queue."""
    queue.mark_uploading(item.id)
    with workspace.client() as client:
        return workspace.sender(client).send(
            SendRequest(
                path=item.data_path,
                recipient=item.recipient,
                filename=item.filename,
                chunk_bytes=workspace.settings.chunk_bytes,
                ttl_seconds=ttl_seconds or workspace.settings.ttl_seconds,
                message_id=item.message_id,
                session_id=item.session_id,
                created_at=item.created_at,
            )
        )


def _one_sync_pass(workspace: Workspace, outbox: Path) -> SyncSummary:
    """``sync --once`` over ``outbox`` (no inbox, no default recipient)."""
    syncer = Syncer(workspace, None, spool_dir=outbox, inbox_dir=None, default_recipient=None)
    try:
        return syncer.run_once()
    finally:
        syncer.close()


def _stale_item(alice: Identity, outbox: Path, text: str) -> tuple[PushQueue, QueueItem]:
    """An item with a 60 s TTL enqueued 55 s ago (as after a long registry outage)."""
    workspace = alice.workspace()
    state = workspace.paths.state_dir
    (outbox / "bob" / "old.txt").write_text(text)
    queue = PushQueue(state / "queue.db", state / "queue")
    item = queue.enqueue(outbox / "bob" / "old.txt", "bob")
    queue.pin_send_options(item.id, SendOptions(workspace.settings.chunk_bytes, "zstd", 60))
    return queue, queue.restamp(item.id, datetime.now(UTC) - timedelta(seconds=55))


def test_an_item_that_waited_out_its_ttl_is_sent_with_a_new_date(
    pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    alice, bob = pair
    queue, item = _stale_item(alice, outbox, "late but alive")
    queue.close()
    [sent] = _one_sync_pass(alice.workspace(), outbox).sent
    assert sent.message_id == item.message_id
    assert sent.created_at > item.created_at + timedelta(seconds=50)
    assert bob.inbox_tags() == [sent.tag]
    [outcome] = bob.receive(tmp_path / "bob-inbox")
    assert outcome.status == "received", outcome
    assert outcome.path is not None and outcome.path.read_text() == "late but alive"


def test_a_stale_item_already_tagged_before_a_crash_keeps_its_date(
    plain_pair: tuple[Identity, Identity], outbox: Path
) -> None:
    """Its recipients may have seen it: a new date would make it a second message."""
    alice, bob = plain_pair
    queue, item = _stale_item(alice, outbox, "tagged, then the crash")
    workspace = alice.workspace()
    with queue:
        first = _tag_then_crash(workspace, queue, item, ttl_seconds=60)
    [sent] = _one_sync_pass(workspace, outbox).sent
    assert (sent.tag, sent.digest) == (first.tag, first.digest)
    assert bob.inbox_tags() == [first.tag]


def test_intake_interrupted_at_each_step_recovers_to_one_item(
    pair: tuple[Identity, Identity], outbox: Path
) -> None:
    """The enqueue protocol's crash windows, reproduced on disk (see queue.py)."""
    alice, _ = pair
    state = alice.paths.state_dir
    spool_file = outbox / "bob" / "a.txt"
    spool_file.write_text("a")
    with PushQueue(state / "queue.db", state / "queue") as queue:
        item = queue.enqueue(spool_file, "bob")
    db = sqlite3.connect(state / "queue.db", isolation_level=None)
    try:
        # Crash after the rename, before the row said 'queued': roll forward.
        db.execute(
            "UPDATE items SET state = 'intake', source_path = ? WHERE id = ?",
            (str(spool_file), item.id),
        )
        # Crash after the INSERT, before the rename: the file is still in the spool.
        (outbox / "bob" / "b.txt").write_text("b")
        db.execute(
            "INSERT INTO items (id, recipient, filename, size, state, message_id, session_id, "
            "created_at, enqueued_at, updated_at, source_path, source_key) VALUES "
            "('deadbeef', 'bob', 'b.txt', 1, 'intake', 'm', 's', 'x', 'x', 'x', ?, 'k')",
            (str(outbox / "bob" / "b.txt"),),
        )
    finally:
        db.close()
    # An orphan copy from a crash between mark_sent and unlink.
    (state / "queue" / "0123.data").write_text("orphan")

    with PushQueue(state / "queue.db", state / "queue") as queue:
        assert queue.items() == []  # unfinished intakes are invisible
        queue.recover()
        [a] = queue.items()
        assert a.id == item.id and a.state == ItemState.QUEUED and a.data_path.read_text() == "a"
        assert not spool_file.exists()
        assert (outbox / "bob" / "b.txt").read_text() == "b"
        assert sorted(p.name for p in (state / "queue").iterdir()) == [f"{item.id}.data"]


def test_a_crash_right_after_a_swapped_rename_never_queues_the_link(
    pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    """The intake's one crash window with a swap: renamed, not yet confirmed (#13.11)."""
    alice, _ = pair
    state = alice.paths.state_dir
    private = tmp_path / "private.key"
    private.write_bytes(b"secret")
    with PushQueue(state / "queue.db", state / "queue") as queue:
        pass  # creates the database
    source = outbox / "bob" / "a.txt"
    (state / "queue" / "feed.data").symlink_to(private)  # what the rename took
    db = sqlite3.connect(state / "queue.db", isolation_level=None)
    try:
        db.execute(
            "INSERT INTO items (id, recipient, filename, size, state, message_id, session_id, "
            "created_at, enqueued_at, updated_at, source_path, source_key) VALUES "
            "('feed', 'bob', 'a.txt', 1, 'intake', 'm', 's', ?, ?, ?, ?, '1:2:1:0')",
            (*[datetime.now(UTC).isoformat()] * 3, str(source)),
        )
    finally:
        db.close()

    with PushQueue(state / "queue.db", state / "queue") as queue:
        queue.recover()
        assert queue.items() == []
    assert source.is_symlink()  # given back to the spool, where it is refused
    assert not (state / "queue" / "feed.data").exists() and private.read_bytes() == b"secret"


def test_enqueue_across_filesystems_copies_then_removes_the_source(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    spool = Path(tempfile.mkdtemp(dir=shm))
    try:
        (spool / "far.bin").write_bytes(b"x" * 3_000_000)
        with PushQueue(tmp_path / "queue.db", tmp_path / "queue") as queue:
            item = queue.enqueue(spool / "far.bin", "bob")
            assert item.data_path.read_bytes() == b"x" * 3_000_000
            assert not (spool / "far.bin").exists()
            assert [p.name for p in (tmp_path / "queue").iterdir()] == [item.data_path.name]
    finally:
        shutil.rmtree(spool)


def test_registry_down_waits_with_backoff_then_delivers(
    pair: tuple[Identity, Identity], outbox: Path, tmp_path: Path
) -> None:
    alice, bob = pair
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status_file = tmp_path / "status.json"
    db = queue_db(alice)
    payload = os.urandom(50_000)
    (outbox / "bob" / "patience.bin").write_bytes(payload)

    def attempts() -> int:
        rows = db_rows(db, "SELECT attempts FROM items")
        return int(str(rows[0][0])) if rows else 0

    def status() -> dict[str, object]:
        try:
            loaded: dict[str, object] = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    argv = ("--outbox", str(outbox), "--settle", "0.1", "--status-file", str(status_file))
    with sync_process(alice, tmp_path / "down", *argv, "--repo", f"127.0.0.1:{port}/x/y") as run:
        run.wait_until(lambda: attempts() >= 2, 30, "a second attempt")
        run.wait_until(lambda: status().get("registry_reachable") is False, 10, "status to say so")
        now = status()
        assert now["state"] == "waiting for registry"
        assert "registry unreachable" in str(now["summary"])
        assert [r[0] for r in db_rows(db, "SELECT state FROM items")] in (["queued"], ["uploading"])
        os.kill(run.pid, signal.SIGTERM)
        assert run.process.wait(30) == 0
    [(state, tries)] = db_rows(db, "SELECT state, attempts FROM items")
    assert state == "queued" and int(str(tries)) >= 2

    assert run_sync(alice, tmp_path / "up", "--once", "--outbox", str(outbox)) == 0
    [outcome] = bob.receive(tmp_path / "bob-inbox")
    assert outcome.path is not None and outcome.path.read_bytes() == payload


def test_registry_options_reach_the_status(pair: tuple[Identity, Identity], outbox: Path) -> None:
    alice, _ = pair
    syncer = Syncer(
        alice.workspace(),
        RegistryOptions(repository="127.0.0.1:1/x/y"),
        spool_dir=outbox,
        inbox_dir=None,
        default_recipient="bob",
    )
    try:
        status = to_json(syncer.statistics())
    finally:
        syncer.close()
    assert status["repository"] == "127.0.0.1:1/x/y" and status["state"] == "stopped"
