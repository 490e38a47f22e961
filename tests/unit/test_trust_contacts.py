"""The trust store's sealing facts and groups: newest card wins, groups of trusted names."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pyrage import x25519

from dockercomms.core._internal.signing.keypair import public_pem
from dockercomms.core.errors import ConfigError
from dockercomms.core.trust import TrustPolicy

WHEN = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)


def recipient() -> str:
    return str(x25519.Identity.generate().to_public())


def policy_with(*names: str) -> TrustPolicy:
    policy = TrustPolicy()
    for name in names:
        policy.add_key(name, public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    return policy


def test_a_newer_card_replaces_the_accepted_one_and_an_older_one_is_refused() -> None:
    policy = policy_with("bob")
    first, second = recipient(), recipient()
    assert policy.accept_card("bob", first, WHEN, "card")
    policy.set_require_sealed("bob", True)
    assert policy.accept_card("bob", second, WHEN + timedelta(days=1), "repository")
    contact = policy.contact("bob")
    assert (contact.age_recipient, contact.source) == (second, "repository")
    assert contact.card_created_at == "2026-05-02T10:00:00Z"
    assert contact.require_sealed  # kept across cards
    with pytest.raises(ConfigError, match="rollback"):
        policy.accept_card("bob", first, WHEN, "repository")
    assert not policy.accept_card("bob", second, WHEN + timedelta(days=1), "repository")
    with pytest.raises(ConfigError, match="date of the one accepted"):
        policy.accept_card("bob", recipient(), WHEN + timedelta(days=1), "repository")
    assert policy.contact("bob").age_recipient == second


def test_contacts_and_groups_survive_a_save(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    policy = policy_with("bob", "carol")
    policy.accept_card("bob", recipient(), WHEN, "card")
    policy.set_group("team", ["bob", "carol", "bob"])
    policy.save(path)
    loaded = TrustPolicy.load(path)
    assert loaded.contacts == policy.contacts
    assert loaded.groups == {"team": ("bob", "carol")}


def test_groups_hold_trusted_names_only_and_never_shadow_one() -> None:
    policy = policy_with("bob", "carol")
    with pytest.raises(ConfigError, match="not a trusted name"):
        policy.set_group("team", ["bob", "dave"])
    with pytest.raises(ConfigError, match="is a trusted name"):
        policy.set_group("bob", ["carol"])
    policy.set_group("team", ["bob"])
    with pytest.raises(ConfigError, match="is a group"):
        policy.set_group("crew", ["team"])
    with pytest.raises(ConfigError, match="is a group"):
        policy.add_key("team", public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert policy.forget("bob") == ["team"]
    assert policy.groups == {}


def test_editing_under_the_lock_loses_no_change(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    names = [f"peer{i}" for i in range(8)]
    policy_with(*names).save(path)

    def add(name: str) -> None:
        with TrustPolicy.editing(path) as policy:
            policy.accept_card(name, recipient(), WHEN, "repository")

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(TrustPolicy.load(path).contacts) == names


def test_editing_saves_nothing_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    policy_with("bob").save(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError), TrustPolicy.editing(path) as policy:
        policy.accept_card("bob", recipient(), WHEN, "card")
        raise ConfigError("changed my mind")
    assert path.read_bytes() == before
