"""Keys, contact cards, trust and groups on the command line (#11 item 1 and the groups of item 3).

Every command runs in-process (``Party.cli``) on the embedded store; what is
asserted is the exit code, the files it leaves (the age key's mode, trust.json)
and what a person reads.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from dockercomms.core.age_keys import load_identity_file
from dockercomms.core.contact_card import parse_card
from tests.conftest import Party, make_party


@pytest.fixture
def alice(tmp_path: Path) -> Party:
    return make_party(tmp_path, "alice@example.com", f"oci-layout:{tmp_path / 'layout'}")


@pytest.fixture
def bob(tmp_path: Path, alice: Party) -> Party:
    return make_party(tmp_path, "bob", alice.repo)


def card_of(party: Party, tmp_path: Path) -> Path:
    path = tmp_path / f"{party.name}.card"
    path.write_text(party.ok("key", "export"))
    return path


def contacts(party: Party) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((party.home / "trust.json").read_text())
    return document


# --- keys ---------------------------------------------------------------------------


def test_init_makes_a_private_age_key_and_a_rerun_adds_a_missing_one(alice: Party) -> None:
    age_key = alice.home / "keys" / "age.key"
    assert stat.S_IMODE(age_key.stat().st_mode) == 0o600
    first = load_identity_file(age_key).recipient
    assert "already set up" in alice.ok("init", "--identity", alice.name)
    assert load_identity_file(age_key).recipient == first  # a re-run keeps it
    age_key.unlink()  # an identity from before sealed messages
    result = alice.cli("init", "--identity", alice.name)
    assert result.code == 0, result.err
    assert "made an age key" in result.err and "card: card-" in result.out
    assert load_identity_file(age_key).recipient != first


def test_key_export_writes_a_card_that_trust_add_takes_as_card_or_key(
    alice: Party, bob: Party, tmp_path: Path
) -> None:
    card_file = card_of(bob, tmp_path)
    card = parse_card(card_file.read_bytes())
    assert card.name == "bob" and card.age_recipient.startswith("age1")
    alice.ok("trust", "add", "bob", "--card", str(card_file))
    facts = contacts(alice)["contacts"]["bob"]
    assert facts["age_recipient"] == card.age_recipient
    assert facts["source"] == "card"
    alice.ok("trust", "remove", "bob")
    assert "bob" not in contacts(alice).get("contacts", {})
    alice.ok("trust", "add", "bob", "--key", str(card_file))  # what scripts already do
    assert contacts(alice)["contacts"]["bob"]["age_recipient"] == card.age_recipient
    listing = alice.ok("trust", "list")
    assert f"sealed to {card.age_recipient} (card, " in listing
    assert "alice@example.com\tkey\t" in listing and "(mine)" in listing


def test_a_card_is_trusted_only_under_its_own_name(
    alice: Party, bob: Party, tmp_path: Path
) -> None:
    result = alice.cli("trust", "add", "robert", "--card", str(card_of(bob, tmp_path)))
    assert result.code == 1
    assert "the card is for 'bob'" in result.err
    assert "robert" not in (alice.home / "trust.json").read_text()


def test_trust_add_key_with_age_and_require_sealed_on_and_off(
    alice: Party, bob: Party, tmp_path: Path
) -> None:
    pem = tmp_path / "bob.pem"
    pem.write_text(bob.ok("key", "export", "--pem"))
    recipient = parse_card(bob.ok("key", "export")).age_recipient
    alice.ok("trust", "add", "bob", "--key", str(pem), "--age", recipient, "--require-sealed")
    facts = contacts(alice)["contacts"]["bob"]
    assert facts["age_recipient"] == recipient and facts["source"] == "manual"
    assert facts["require_sealed"] is True
    assert "requires sealed messages" in alice.ok("trust", "list")
    alice.ok("trust", "add", "bob", "--no-require-sealed")
    assert contacts(alice)["contacts"]["bob"]["require_sealed"] is False
    result = alice.cli("trust", "add", "bob", "--age", "age1notarecipient")
    assert result.code == 1 and "--age" in result.err
    result = alice.cli("trust", "add", "carol", "--require-sealed")
    assert result.code == 1 and "not trusted yet" in result.err


def test_a_name_without_an_age_key_says_it_cannot_receive_sealed(
    alice: Party, bob: Party, tmp_path: Path
) -> None:
    pem = tmp_path / "bob.pem"
    pem.write_text(bob.ok("key", "export", "--pem"))
    alice.ok("trust", "add", "bob", "--key", str(pem))
    assert "cannot receive sealed messages" in alice.ok("trust", "list")


def test_key_rotate_age_keeps_the_old_keys_and_publishes_a_newer_card(
    alice: Party, tmp_path: Path
) -> None:
    age_key = alice.home / "keys" / "age.key"
    before = load_identity_file(age_key)
    old_card = parse_card(alice.ok("key", "export"))
    out = alice.ok("key", "rotate", "--age")
    after = load_identity_file(age_key)
    assert [k.recipient for k in after.keys[1:]] == [before.recipient]
    assert after.recipient in out and "card: card-" in out
    new_card = parse_card(alice.ok("key", "export"))
    assert new_card.age_recipient == after.recipient
    assert new_card.created_at > old_card.created_at
    assert stat.S_IMODE(age_key.stat().st_mode) == 0o600
    assert alice.cli("key", "rotate").code == 1  # only the age key rotates here


# --- groups -------------------------------------------------------------------------


def test_groups_of_trusted_names(alice: Party, bob: Party, tmp_path: Path) -> None:
    carol = make_party(tmp_path, "carol", alice.repo)
    alice.ok("trust", "add", "bob", "--card", str(card_of(bob, tmp_path)))
    alice.ok("trust", "add", "carol", "--card", str(card_of(carol, tmp_path)))
    assert alice.ok("group", "add", "team", "bob", "carol").strip() == "team: bob carol"
    assert json.loads(alice.ok("group", "list", "--json")) == {"team": ["bob", "carol"]}
    assert contacts(alice)["groups"] == {"team": ["bob", "carol"]}

    result = alice.cli("group", "add", "team", "dave")
    assert result.code == 1 and "'dave' is not a trusted name" in result.err
    result = alice.cli("group", "add", "bob", "carol")
    assert result.code == 1 and "'bob' is a trusted name" in result.err
    result = alice.cli("group", "add", "crew", "team")
    assert result.code == 1 and "'team' is a group" in result.err
    dave = make_party(tmp_path, "dave", alice.repo)
    pem = tmp_path / "dave.pem"
    pem.write_text(dave.ok("key", "export", "--pem"))
    result = alice.cli("trust", "add", "team", "--key", str(pem))
    assert result.code == 1 and "'team' is a group" in result.err
    result = alice.cli("group", "add", "team/x", "bob")
    assert result.code == 1 and "alice@example.com" in result.err

    alice.ok("group", "remove", "team", "bob")
    assert json.loads(alice.ok("group", "list", "--json")) == {"team": ["carol"]}
    alice.ok("trust", "remove", "carol")  # its last entry: out of every group
    assert json.loads(alice.ok("group", "list", "--json")) == {}
    alice.ok("group", "add", "team", "bob")
    alice.ok("group", "remove", "team")
    assert "no groups" in alice.ok("group", "list")
    assert alice.cli("group", "remove", "team").code == 1
