"""Delivery without a poll (issue #15, item 4): a mount on the embedded store watches
the layout's index, so a new message appears although the next poll is an hour away.

The 0.5 s target is the bench's (``python -m bench --suite inbox``); this test only
proves the message arrives without a poll, and that ``.status`` says how.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fsmount_fixtures import make_identities, mounted, scratch_root, trust, wait_for

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="delivery-", dir=scratch_root()))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_new_message_appears_without_waiting_for_a_poll(scratch: Path) -> None:
    people = make_identities(scratch, [ALICE, BOB], data_home=scratch / "xdg-data")
    alice, bob = people[ALICE], people[BOB]
    trust(bob, alice)
    note = scratch / "note.txt"
    note.write_text("no poll needed\n")
    with mounted(bob, scratch / "mnt-bob", "--poll", "3600", "--no-receipts") as mount:
        assert list((mount / "inbox").iterdir()) != []  # waits for the first poll
        polls = mount.status()["inbox"]["last_poll"]["polls"]

        alice.send(note, BOB)
        arrived = mount / f"inbox/{ALICE}/note.txt"
        wait_for("the message, with the next poll an hour away", arrived.exists)
        assert arrived.read_text() == "no poll needed\n"

        inbox = mount.status()["inbox"]
        assert inbox["watching"] is True and inbox["poll_seconds"] == 3600
        assert inbox["last_poll"]["polls"] > polls
        status = json.loads((mount / ".status").read_text())
        assert status["inbox"]["watching"] is True
