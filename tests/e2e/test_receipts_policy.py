"""Receipts on the sender's side, and the syncer facing manifests that break parsers.

No mount here: the syncer is driven directly (``run_once``, ``poll``,
``refresh_receipts``) and the recipient answers with ``dockercomms ack``, on
both backends.
"""

from __future__ import annotations

from pathlib import Path

from dockercomms.core import protocol as p
from dockercomms.syncer.syncer import Syncer
from tests.conftest import Party
from tests.hostile_manifests import deep_manifest, inbox_tag, plant


def syncer_of(party: Party, root: Path, *, inbox: bool, to: str | None = None) -> Syncer:
    """A syncer for ``party`` with its spool (and inbox folder) under ``root``."""
    (root / "spool").mkdir(parents=True, exist_ok=True)
    return Syncer(
        party.workspace(),
        None,
        spool_dir=root / "spool",
        inbox_dir=root / "inbox" if inbox else None,
        default_recipient=to,
    )


def test_the_latest_receipt_counts_and_ack_says_what_it_replaces(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    syncer = syncer_of(alice, tmp_path, inbox=False, to=bob.name)
    try:
        (syncer.spool_dir / "draft.txt").write_bytes(b"first draft\n")
        [item] = syncer.run_once().sent
        assert item.digest is not None
        with alice.workspace().client() as client:
            plant(client, deep_manifest(p.RECEIPT_ARTIFACT_TYPE), p.receipt_tag(item.digest))

        first = bob.ok("ack", "--for", item.digest, "--status", "rejected", "--reason", "typo")
        assert "replaces" not in first
        assert [i.receipt for i in syncer.refresh_receipts()] == ["rejected"]

        second = bob.ok("ack", "--for", item.digest, "--status", "accepted")
        assert "replaces your rejected receipt" in second
        assert [i.receipt for i in syncer.refresh_receipts()] == ["accepted"]
        assert syncer.refresh_receipts() == []  # nothing new since: nothing changes
    finally:
        syncer.close()


def test_the_syncer_skips_a_manifest_that_breaks_parsers(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    with alice.workspace().client() as client:
        deep = inbox_tag(bob.name)
        plant(client, deep_manifest(), deep)
    (tmp_path / "fine.txt").write_bytes(b"fine\n")
    alice.ok("send", str(tmp_path / "fine.txt"), "--recipient", bob.name)

    syncer = syncer_of(bob, tmp_path / "bob", inbox=True)
    try:
        outcomes = syncer.poll()
    finally:
        syncer.close()

    assert (tmp_path / "bob" / "inbox" / "fine.txt").read_bytes() == b"fine\n"
    assert {o.tag: o.status for o in outcomes}[deep] == "rejected"
