"""Receipts of a send to a group: each member answers its own manifest (#11 item 3).

A group send has one manifest per member, each signed for and tagged to that
member. Before, the syncer looked up receipts for the first manifest only and
wanted them signed by the group's name, so no member's answer ever counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dockercomms.fsmount.desktop import queue_events
from dockercomms.syncer.queue import ItemState, PushQueue
from tests.syncer_fixtures import Identity, make_team, run_sync

MEMBERS = ("bob", "carol")


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Identity]:
    """alice, who trusts bob and carol (and they her), grouped as ``team``."""
    return make_team(tmp_path / "ids", "team", MEMBERS)


def test_each_member_answers_for_itself(team: dict[str, Identity], tmp_path: Path) -> None:
    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    outbox = tmp_path / "outbox"
    (outbox / "team").mkdir(parents=True)
    (outbox / "team" / "plan.txt").write_bytes(os.urandom(5000))
    assert run_sync(alice, tmp_path / "run1", "--once", "--outbox", str(outbox)) == 0
    state = alice.paths.state_dir
    with PushQueue(state / "queue.db", state / "queue") as queue:
        [item] = queue.items([ItemState.SENT])
        assert item.recipient == "team" and sorted(queue.deliveries(item.id)) == list(MEMBERS)

    [got] = [o for o in bob.receive(tmp_path / "bob") if o.status == "received"]
    assert got.message is not None
    digest = got.message.digest
    assert carol.cli("ls") == 0
    carol_digest = queue_digest(alice, "carol")
    assert carol.cli("ack", "--for", carol_digest, "--status", "rejected", "--reason", "no") == 0

    assert run_sync(alice, tmp_path / "run2", "--once", "--outbox", str(outbox)) == 0
    with PushQueue(state / "queue.db", state / "queue") as queue:
        [item] = queue.items([ItemState.SENT])
        assert queue.receipts(item.id) == {"bob": "accepted", "carol": "rejected"}
        assert item.receipt == "bob: accepted; carol: rejected"
        assert [(i.id, name) for i, name in queue.rejections()] == [(item.id, "carol")]
        [event] = [e for e in queue_events(queue) if e.kind == "rejected"]
        assert event.text == "plan.txt: carol rejected it"
    assert digest != carol_digest


def queue_digest(alice: Identity, recipient: str) -> str:
    state = alice.paths.state_dir
    with PushQueue(state / "queue.db", state / "queue") as queue:
        [item] = queue.items([ItemState.SENT])
        return queue.deliveries(item.id)[recipient].digest


def test_one_answer_of_two_is_shown_with_who_has_not_answered() -> None:
    from dockercomms.syncer.queue import receipt_summary

    assert receipt_summary(["bob"], {}) is None
    assert receipt_summary(["bob"], {"bob": "rejected"}) == "rejected"
    assert receipt_summary(["bob", "carol"], {"carol": "accepted", "bob": "accepted"}) == "accepted"
    assert receipt_summary(["bob", "carol"], {"carol": "accepted"}) == (
        "bob: no answer; carol: accepted"
    )
