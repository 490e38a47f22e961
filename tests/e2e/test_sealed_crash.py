"""Crash safety of a sealed send to a group of three (SPEC 9 and the durable queue).

Sealing is random: a retry that sealed again would upload other chunks and push
another ``sealed`` value, so other manifest digests under the same tags. The
queue pins the recipient plan, the chunks with their plaintext sha256, the
``sealed`` value and each recipient's tag; these tests kill or break a send at
its worst moments and check that each recipient ends with exactly one message,
all three over the very same layers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal.limits import MIB
from dockercomms.core.errors import NoAgeRecipientError
from dockercomms.core.outbox import Delivery, SendJournal, SendRequest
from dockercomms.core.trust import Contact, TrustPolicy
from dockercomms.syncer.queue import ItemState, PushQueue
from dockercomms.syncer.syncer import Syncer
from tests import age_cli
from tests.syncer_fixtures import (
    Identity,
    age_key,
    make_identity,
    make_team,
    run_sync,
    sync_process,
    trust_signing_key_only,
)

MEMBERS = ("bob", "carol", "dave")


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Identity]:
    """alice, who knows the age keys of bob, carol and dave, grouped as ``team``."""
    people = make_team(tmp_path / "ids", "team", MEMBERS)
    people["alice"].set_chunk_bytes(1 * MIB)
    return people


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def manifests(people: dict[str, Identity]) -> dict[str, dict[str, object]]:
    """Each member's inbox manifests (one each, or the test fails), by member."""
    found = {}
    with people["alice"].workspace().client() as client:
        for name in MEMBERS:
            tags = client.list_tags(p.inbox_prefix(name))
            assert len(tags) == 1, f"{name} has {tags}"
            raw, _ = client.fetch_manifest(tags[0])
            found[name] = json.loads(raw)
    return found


def chunk_digests(path: Path, chunk: int) -> list[str]:
    data = path.read_bytes()
    return [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]


def check_one_sealed_message(
    people: dict[str, Identity], source_digests: list[str]
) -> dict[str, dict[str, object]]:
    """Exactly one message per member, all over the same layers and ``sealed`` value."""
    found = manifests(people)
    layers = {json.dumps(m["layers"]) for m in found.values()}
    assert len(layers) == 1, "the members' manifests reference different blobs"
    notes = [m["annotations"] for m in found.values()]
    assert len({n["dockercomms.sealed"] for n in notes if isinstance(n, dict)}) == 1
    sealed = base64.b64decode(str(notes[0]["dockercomms.sealed"]))  # type: ignore[index]
    for name in MEMBERS:
        facts = json.loads(age_cli.decrypt(sealed, people[name].paths.age_identity_file))
        assert facts["chunk_sha256"] == source_digests
    return found


def test_kill_9_mid_upload_of_a_sealed_send_to_three_then_restart(
    team: dict[str, Identity], tmp_path: Path
) -> None:
    alice = team["alice"]
    outbox = tmp_path / "outbox"
    (outbox / "team").mkdir(parents=True)
    staging = tmp_path / "big.bin"
    staging.write_bytes(os.urandom(24 * MIB))
    expected = chunk_digests(staging, MIB)
    staging.rename(outbox / "team" / "big.bin")
    db = alice.paths.state_dir / "queue.db"

    def chunks_recorded() -> bool:
        found = rows(db, "SELECT COUNT(*) FROM chunks")
        return bool(found) and int(str(found[0][0])) >= 4

    args = ("--outbox", str(outbox), "--settle", "0.1")
    with sync_process(alice, tmp_path / "run1", *args) as run:
        run.wait_until(chunks_recorded, 60, "some sealed chunks to be uploaded")
        os.kill(run.pid, signal.SIGKILL)
        run.process.wait()
    [(state, attempts, recipients, sealed)] = rows(
        db, "SELECT state, attempts, recipients, seal_to IS NOT NULL FROM items"
    )
    assert (state, attempts, json.loads(str(recipients)), sealed) == (
        "uploading",
        1,
        list(MEMBERS),
        1,
    )
    before = {str(d) for (d,) in rows(db, "SELECT digest FROM chunks")}
    with alice.workspace().client() as client:
        assert client.list_tags("inbox-") == []

    assert run_sync(alice, tmp_path / "run2", "--once", *args) == 0
    [(state, attempts)] = rows(db, "SELECT state, attempts FROM items")
    assert (state, attempts) == ("sent", 2)
    found = check_one_sealed_message(team, expected)
    layers = found["bob"]["layers"]
    assert isinstance(layers, list)
    assert before <= {layer["digest"] for layer in layers}, "uploaded chunks were not reused"
    assert len(layers) == 24
    assert len(rows(db, "SELECT * FROM deliveries")) == 3


def test_crash_between_two_recipients_tags_finishes_the_same_message(
    team: dict[str, Identity], tmp_path: Path
) -> None:
    """The sealed value and one tag are out; the process dies; the retry pushes the rest."""
    alice = team["alice"]
    spool = tmp_path / "spool"
    spool.mkdir()
    source = spool / "report.txt"
    source.write_bytes(os.urandom(3 * MIB + 5))
    expected = chunk_digests(source, MIB)
    state_dir = alice.paths.state_dir
    workspace = alice.workspace()

    class Died(Exception):
        pass

    with PushQueue(state_dir / "queue.db", state_dir / "queue") as queue:
        item = queue.enqueue(source, "team")
        queue.mark_uploading(item.id)
        with workspace.outbox() as outbox:
            plan = queue.pin_recipient_plan(item.id, outbox.plan(("team",)))
            assert plan.sealed and plan.names == MEMBERS

            def delivered(delivery: Delivery) -> None:
                queue.record_delivery(item.id, delivery)
                raise Died

            request = SendRequest(
                path=item.data_path,
                recipient="team",
                filename=item.filename,
                chunk_bytes=MIB,
                session_id=item.session_id,
                message_id=item.message_id,
                created_at=item.created_at,
                plan=plan,
            )

            def sealed(value: str) -> None:
                queue.pin_sealed(item.id, value)

            journal = SendJournal(
                chunk=lambda i, d, sha: queue.record_chunk(item.id, i, d, sha),
                sealed=sealed,
                delivered=delivered,
            )
            with pytest.raises(Died):
                outbox.send(request, journal=journal)
        assert list(queue.deliveries(item.id)) == ["bob"]
        assert queue.sealed_value(item.id)
    # (the process "dies" here: the row is still 'uploading')

    assert run_sync(alice, tmp_path / "run", "--once", "--outbox", str(tmp_path / "outbox")) == 0
    with PushQueue(state_dir / "queue.db", state_dir / "queue") as queue:
        [done] = queue.items()
        assert done.state == ItemState.SENT
        assert sorted(queue.deliveries(done.id)) == sorted(MEMBERS)
    check_one_sealed_message(team, expected)


def test_a_file_for_a_recipient_without_an_age_key_waits_then_goes_sealed(
    team: dict[str, Identity], tmp_path: Path
) -> None:
    alice, erin = (
        team["alice"],
        # erin publishes no card: nothing tells alice her age key.
        make_identity(tmp_path / "ids", "erin", tmp_path / "ids" / "xdg-data", "--no-publish"),
    )
    trust_signing_key_only(alice, erin, tmp_path)  # no age key known to alice
    outbox = tmp_path / "outbox"
    (outbox / "erin").mkdir(parents=True)
    (outbox / "erin" / "notes.txt").write_text("for erin's eyes")
    syncer = Syncer(
        alice.workspace(), None, spool_dir=outbox, inbox_dir=None, default_recipient=None
    )
    try:
        summary = syncer.run_once()
        [waiting] = summary.waiting
        assert waiting.state == ItemState.QUEUED and waiting.next_attempt_at is not None
        assert "trust add erin --card FILE" in str(waiting.last_error)
        assert [str(e) for e in summary.errors if isinstance(e, NoAgeRecipientError)]
        with alice.workspace().client() as client:
            assert client.list_tags("inbox-") == []
        policy = TrustPolicy.load(alice.paths.trust_file)
        policy.set_contact(Contact("erin", age_recipient=age_key(erin), source="manual"))
        policy.save(alice.paths.trust_file)
        sent = syncer.worker.push(waiting)  # no need to wait out KEY_WAIT_SECONDS
    finally:
        syncer.close()
    assert sent.error is None and sent.item.state == ItemState.SENT
    raw = manifest_of_tag(alice, str(sent.item.tag))
    sealed = base64.b64decode(raw["annotations"]["dockercomms.sealed"])
    facts = json.loads(age_cli.decrypt(sealed, erin.paths.age_identity_file))
    assert facts["filename"] == "notes.txt"


def manifest_of_tag(identity: Identity, tag: str) -> dict[str, Any]:
    with identity.workspace().client() as client:
        raw, _ = client.fetch_manifest(tag)
    doc: dict[str, Any] = json.loads(raw)
    return doc


def test_the_syncer_seals_with_the_key_of_a_card_it_finds_in_the_repository(
    tmp_path: Path,
) -> None:
    """#17 item 3: alice trusts gwen's signing key only; gwen's published card does the rest."""
    root = tmp_path / "ids"
    alice = make_identity(root, "alice", root / "xdg-data", "--no-publish")
    gwen = make_identity(root, "gwen", root / "xdg-data")  # publishes her card at init
    trust_signing_key_only(alice, gwen, tmp_path)  # no age key known to alice
    assert TrustPolicy.load(alice.paths.trust_file).contact("gwen").age_recipient == ""
    outbox = tmp_path / "outbox"
    (outbox / "gwen").mkdir(parents=True)
    (outbox / "gwen" / "plan.txt").write_text("for gwen only")
    syncer = Syncer(
        alice.workspace(), None, spool_dir=outbox, inbox_dir=None, default_recipient=None
    )
    try:
        [sent] = syncer.run_once().sent
    finally:
        syncer.close()
    contact = TrustPolicy.load(alice.paths.trust_file).contact("gwen")
    assert contact.source == "repository" and contact.age_recipient.startswith("age1")
    raw = manifest_of_tag(alice, str(sent.tag))
    sealed = base64.b64decode(raw["annotations"]["dockercomms.sealed"])
    facts = json.loads(age_cli.decrypt(sealed, gwen.paths.age_identity_file))
    assert facts["filename"] == "plan.txt"
