"""Listing a big inbox: what verified stays verified (across restarts, per trust policy).

The rules (issue #15, item 3): a listing verifies each message's signature once and
keeps the result in the state database, keyed by manifest digest and trust-policy
fingerprint; a new process (a restarted mount, the next ``ls``) does not verify it
again; a changed trust policy checks again; a deleted tag disappears and its result
is forgotten; expiry is still judged by the clock at every listing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from dockercomms.core._internal.ledger import ReceivedLedger
from dockercomms.core._internal.listing import VerifiedCache, check_tag
from dockercomms.core._internal.receive import CLOCK_SKEW, Receiver
from dockercomms.core._internal.signing.verify import BundleVerifier
from dockercomms.core.errors import ExpiredError, UntrustedSignerError
from dockercomms.core.inbox import CheckedTag
from dockercomms.core.log_once import LogOnce
from tests.conftest import Party
from tests.fsmount_fixtures import Identity, make_identities, seed_inbox, trust

DAVE, ERIN, FRED = "dave@example.com", "erin@example.com", "fred@example.com"
MESSAGES = 50


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every signature verification in this process, by manifest digest (a spy)."""
    seen: list[str] = []
    real = BundleVerifier.verify

    def counted(self: BundleVerifier, bundle_json: bytes, manifest_digest: str) -> object:
        seen.append(manifest_digest)
        return real(self, bundle_json, manifest_digest)

    monkeypatch.setattr(BundleVerifier, "verify", counted)
    yield seen


@pytest.fixture
def people(tmp_path: Path) -> dict[str, Identity]:
    """Dave has sent erin 50 messages on the embedded store; erin trusts dave."""
    made = make_identities(tmp_path, [DAVE, ERIN, FRED], data_home=tmp_path / "data")
    trust(made[ERIN], made[DAVE])
    seed_inbox(made[DAVE], ERIN, MESSAGES)
    return made


def listing(identity: Identity) -> list[CheckedTag]:
    """``ls`` as a new process would do it: a fresh workspace and inbox."""
    with identity.workspace().inbox() as inbox:
        return inbox.listing()


def test_a_listing_verifies_each_message_once_across_restarts(
    people: dict[str, Identity], signatures: list[str]
) -> None:
    first = listing(people[ERIN])
    assert len(first) == MESSAGES and all(e.signer is not None for e in first)
    assert len(signatures) == MESSAGES

    again = listing(people[ERIN])  # a restart: nothing in memory, the state db kept
    assert [(e.tag, e.signer) for e in again] == [(e.tag, e.signer) for e in first]
    assert len(signatures) == MESSAGES  # not one signature checked again

    # open() and verify still check the signature every time (SEMANTICS).
    with people[ERIN].workspace().inbox() as inbox:
        assert first[0].message is not None
        inbox.verify(first[0].message.digest)
    assert len(signatures) == MESSAGES + 1


def test_a_changed_trust_policy_checks_every_message_again(
    people: dict[str, Identity], signatures: list[str]
) -> None:
    listing(people[ERIN])
    trust(people[ERIN], people[FRED])  # a new entry: another policy fingerprint
    again = listing(people[ERIN])
    assert all(e.signer is not None for e in again)
    assert len(signatures) == 2 * MESSAGES

    # Trust in dave withdrawn: a kept result must not list his messages as verified.
    people[ERIN].cli("trust", "remove", DAVE)
    withdrawn = listing(people[ERIN])
    assert len(withdrawn) == MESSAGES
    assert all(isinstance(e.error, UntrustedSignerError) for e in withdrawn)


def test_a_deleted_tag_disappears_and_its_result_is_forgotten(
    people: dict[str, Identity],
) -> None:
    first = listing(people[ERIN])
    gone = first[7]
    assert gone.message is not None
    with people[DAVE].workspace().client() as client:
        client.delete_manifest(gone.message.digest)
    after = listing(people[ERIN])
    assert len(after) == MESSAGES - 1 and gone.tag not in {e.tag for e in after}
    with ReceivedLedger(people[ERIN].workspace().paths.state_db) as ledger:
        kept = {digest for (digest,) in ledger._conn.execute("SELECT digest FROM verified")}
    assert gone.message.digest not in kept and len(kept) == MESSAGES - 1


def test_a_kept_result_is_still_checked_for_expiry_by_the_clock(
    people: dict[str, Identity],
) -> None:
    workspace = people[ERIN].workspace()
    with workspace.client() as client:
        receiver = workspace.receiver(client)
        tag = receiver.inbox_tags()[0]
        message = receiver.fetch_message(tag)
        cache = VerifiedCache(receiver.verifier.policy_fingerprint, {})
        fresh = check_tag(receiver, tag, LogOnce(logging.getLogger(__name__)), cache=cache)
        assert fresh.signer is not None and len(cache._known) == 1

        after_expiry = message.expires_at + CLOCK_SKEW + timedelta(seconds=1)
        later = Receiver(client, workspace.verifier(), ERIN, clock=lambda: after_expiry)
        quiet = LogOnce(logging.getLogger(__name__))
        expired = check_tag(later, tag, quiet, cache=cache, digest=message.digest)
    assert expired.signer is None and isinstance(expired.error, ExpiredError)


def test_a_kept_result_whose_bytes_do_not_hash_to_its_digest_is_not_used(
    people: dict[str, Identity], signatures: list[str]
) -> None:
    listing(people[ERIN])
    db = people[ERIN].workspace().paths.state_db
    with sqlite3.connect(db) as conn:  # the state database damaged, or edited
        conn.execute("UPDATE verified SET manifest = manifest || x'20'")
    conn.close()
    again = listing(people[ERIN])
    assert all(e.signer is not None for e in again)
    assert len(signatures) == 2 * MESSAGES  # checked in full again


def test_over_http_a_listing_verifies_each_message_once(
    request: pytest.FixtureRequest, tmp_path: Path, signatures: list[str]
) -> None:
    from tests.conftest import introduce, make_party

    server = request.getfixturevalue("registry_server")
    repo = f"{server.host}/tests/listing-{tmp_path.name[-8:]}"
    alice = make_party(tmp_path, "alice@example.com", repo)
    bob: Party = make_party(tmp_path, "bob", repo)
    introduce(alice, bob)
    note = tmp_path / "note.txt"
    for n in range(3):
        note.write_text(f"note {n}\n")
        alice.ok("send", str(note), "-r", "bob")
    assert "note.txt" in bob.ok("ls")
    checked = len(signatures)
    assert checked >= 3
    bob.ok("ls")
    assert len(signatures) == checked


def test_a_kept_sealed_message_is_listed_by_its_real_name_and_nothing_opened_is_kept(
    people: dict[str, Identity], signatures: list[str], tmp_path: Path
) -> None:
    dave, erin = people[DAVE], people[ERIN]
    trust(dave, erin)  # erin's card: dave's send is sealed
    secret = tmp_path / "quarterly-secret-plan.txt"
    secret.write_text("sealed\n")
    assert "sealed: yes" in dave.cli("send", str(secret), "-r", ERIN)

    def sealed_rows() -> list[CheckedTag]:
        return [e for e in listing(erin) if e.message is not None and e.message.encrypted]

    [first] = sealed_rows()
    checked = len(signatures)
    [again] = sealed_rows()  # a restart: from the kept result, opened again
    assert len(signatures) == checked  # no signature checked again
    assert first.message is not None and again.message is not None
    assert again.message.filename == first.message.filename == secret.name
    assert again.signer == first.signer
    state_db = erin.workspace().paths.state_db
    assert secret.name.encode() not in state_db.read_bytes()
