"""Signed cards in the repository (#17, SPEC 9.1), on the embedded store and distribution.

Alice trusts bob's signing key only (no age key exchanged); bob's card in the
repository gives her bob's age key once it verifies as bob. Every card that must
not count (signed by a stranger, signed by another trusted name, an older card
replayed, 10,000 junk tags) leaves alice's trust store byte for byte unchanged
and says why. The sealed-send tests need the sealing half (#11 item 2) and are
expected to fail until it is merged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.cards import (
    MAX_CARD_CANDIDATES,
    CardDirectory,
    build_card_manifest,
    publish_card,
)
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.signatures import attach_bundle
from dockercomms.core._internal.signing.keypair import KeyPairSigner, generate_key
from dockercomms.core._internal.signing.verify import BundleVerifier
from dockercomms.core.cards import card_directory
from dockercomms.core.contact_card import CardClaim, card_tag_prefix
from tests.conftest import Party, make_party
from tests.e2e.test_keyless_e2e import ALICE_EMAIL, key_party, keyless_party
from tests.servers.sigstore_stack import LocalSigstore

STRANGER = str(x25519.Identity.generate().to_public())


@pytest.fixture
def pair(tmp_path: Path, backend: str) -> tuple[Party, Party]:
    """alice and bob on ``backend``: each trusts the other's *signing key* only."""
    alice = make_party(tmp_path, "alice", backend)
    bob = make_party(tmp_path, "bob", backend)
    for truster, other in ((alice, bob), (bob, alice)):
        pem = other.home / "signing.pem"
        pem.write_text(other.ok("key", "export", "--pem"))
        truster.ok("trust", "add", other.name, "--key", str(pem))
    return alice, bob


def age_recipient(party: Party) -> str:
    """The party's current age recipient, as its card file says."""
    card = party.ok("key", "export")
    (line,) = [x for x in card.splitlines() if x.startswith("age-recipient: ")]
    return line.removeprefix("age-recipient: ")


def directory(party: Party) -> Callable[[str], tuple[list[str], int]]:
    """``refresh(name)`` on a fresh CardDirectory of ``party``: (reasons, manifests fetched)."""

    def refresh(name: str) -> tuple[list[str], int]:
        workspace = party.workspace()
        with workspace.clients() as pool:
            counted = Counting(pool.client)
            cards = card_directory(workspace, pool, interval_seconds=3600)
            cards._client = counted.client  # count what one refresh reads
            cards.refresh(name)
            return cards.reasons(name), counted.manifests

    return refresh


class Counting:
    """Counts the manifests a client fetches (what bounds a look at the cards)."""

    def __init__(self, make: Callable[[], RegistryClient]) -> None:
        self._make = make
        self.manifests = 0

    def client(self) -> RegistryClient:
        client = self._make()
        fetch = client.fetch_manifest

        def counted(reference: str) -> tuple[bytes, str]:
            self.manifests += 1
            return fetch(reference)

        client.fetch_manifest = counted  # type: ignore[method-assign]
        return client


def contact(party: Party, name: str) -> dict[str, Any]:
    trust = json.loads((party.home / "trust.json").read_text())
    facts: dict[str, Any] = trust.get("contacts", {}).get(name, {})
    return facts


def signer_of(tmp_path: Path, who: str) -> KeyPairSigner:
    return KeyPairSigner(generate_key(tmp_path / f"{who}.key"))


# --- accepted -----------------------------------------------------------------------


def test_a_trusted_peers_card_gives_its_age_key_and_rotation_moves_it(
    pair: tuple[Party, Party],
) -> None:
    alice, bob = pair
    assert contact(alice, "bob").get("age_recipient", "") == ""
    reasons, _ = directory(alice)("bob")
    facts = contact(alice, "bob")
    assert facts["age_recipient"] == age_recipient(bob), reasons
    assert facts["source"] == "repository"
    first = facts["card_created_at"]
    assert f"sealed to {age_recipient(bob)} (repository, {first})" in alice.ok("trust", "list")

    bob.ok("key", "rotate", "--age")
    directory(alice)("bob")
    facts = contact(alice, "bob")
    assert facts["age_recipient"] == age_recipient(bob)
    assert facts["card_created_at"] > first


def test_refresh_is_rate_limited_per_name(pair: tuple[Party, Party]) -> None:
    alice, _bob = pair
    workspace = alice.workspace()
    with workspace.clients() as pool:
        counted = Counting(pool.client)
        cards = card_directory(workspace, pool, interval_seconds=3600)
        cards._client = counted.client
        cards.refresh("bob")
        looked = counted.manifests
        assert looked >= 1
        cards.refresh("bob")
        assert counted.manifests == looked  # once per interval per name
    clock = [0.0]
    with workspace.clients() as pool:
        counted = Counting(pool.client)
        cards = CardDirectory(
            counted.client,
            workspace.paths.trust_file,
            lambda policy: BundleVerifier(policy),
            interval_seconds=30,
            monotonic=lambda: clock[0],
        )
        cards.refresh("bob")
        looked = counted.manifests
        clock[0] = 29.0
        cards.refresh("bob")
        assert counted.manifests == looked
        clock[0] = 30.0  # the next poll interval: a new look
        cards.refresh("bob")
        assert counted.manifests > looked


def test_status_says_whether_my_card_is_current(pair: tuple[Party, Party]) -> None:
    _alice, bob = pair
    text = bob.ok("status")
    assert "card: current" in text and "\nsealing: " in text
    identity_file = bob.home / "keys" / "age.key"
    from dockercomms.core.age_keys import rotate_identity_file

    later = datetime.now(UTC) + timedelta(seconds=2)  # not in the first card's second
    rotate_identity_file(identity_file, now=later)  # rotated without publishing
    status = json.loads(bob.ok("status", "--json"))
    assert status["card"]["state"] == "outdated"
    assert "card publish" in status["card"]["detail"]
    bob.ok("card", "publish")
    assert json.loads(bob.ok("status", "--json"))["card"]["state"] == "current"


def test_status_says_when_no_card_is_published(tmp_path: Path, backend: str) -> None:
    carol = Party("carol", tmp_path / "home-carol", backend, tmp_path / "xdg-data")
    carol.ok("init", "--identity", "carol", "--repo", backend, "--no-publish")
    status = json.loads(carol.ok("status", "--json"))
    assert status["card"]["state"] == "missing"
    assert "card publish" in carol.ok("status")


# --- refused: the trust store stays as it was ---------------------------------------


def unchanged(alice: Party, act: Callable[[], tuple[list[str], int]]) -> str:
    """Run ``act``; the trust file must not change; return its reasons as one text."""
    before = (alice.home / "trust.json").read_bytes()
    reasons, _ = act()
    assert (alice.home / "trust.json").read_bytes() == before
    assert reasons, "a refusal must say why"
    return "\n".join(reasons)


def only_cards_of(party: Party, name: str) -> list[str]:
    with party.workspace().client() as client:
        return client.list_tags(card_tag_prefix(name))


def drop_cards(party: Party, name: str) -> None:
    """Delete every card of ``name`` (what a registry replaying an old card does first)."""
    with party.workspace().client() as client:
        for tag in client.list_tags(card_tag_prefix(name)):
            _raw, digest = client.fetch_manifest(tag)
            try:
                client.delete_manifest(digest)
            except Exception:  # already gone with another tag of the same card
                continue


def test_a_card_signed_by_a_stranger_is_refused(pair: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = pair
    drop_cards(bob, "bob")
    mallory = signer_of(tmp_path, "mallory")
    with bob.workspace().client() as client:
        publish_card(client, mallory, CardClaim("bob", STRANGER, datetime.now(UTC)))
    why = unchanged(alice, lambda: directory(alice)("bob"))
    assert "refused" in why and "not in the trust policy" in why, why
    assert STRANGER not in (alice.home / "trust.json").read_text()


def test_a_card_signed_by_another_trusted_name_is_refused(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = pair
    drop_cards(bob, "bob")
    carol = make_party(tmp_path, "carol", alice.repo)
    pem = carol.home / "signing.pem"
    pem.write_text(carol.ok("key", "export", "--pem"))
    alice.ok("trust", "add", "carol", "--key", str(pem))
    with carol.workspace().client() as client:
        publish_card(
            client,
            carol.workspace().signer(),
            CardClaim("bob", STRANGER, datetime.now(UTC).replace(microsecond=0)),
        )
    why = unchanged(alice, lambda: directory(alice)("bob"))
    assert "trusted as 'carol'" in why, why


def test_an_older_card_replayed_after_a_newer_one_is_refused(pair: tuple[Party, Party]) -> None:
    alice, bob = pair
    with bob.workspace().client() as client:
        (old_tag,) = only_cards_of(bob, "bob")
        old_raw, _ = client.fetch_manifest(old_tag)
    bob.ok("key", "rotate", "--age")
    directory(alice)("bob")
    assert contact(alice, "bob")["age_recipient"] == age_recipient(bob)
    # The registry hides the new card and serves the old one, under its old tag
    # and under a new tag that claims to be newer.
    drop_cards(bob, "bob")
    with bob.workspace().client() as client:
        client.push_manifest(old_raw, old_tag)
        replay = f"{card_tag_prefix('bob')}{int(datetime.now(UTC).timestamp()) + 60}-abcdef"
        client.push_manifest(old_raw, replay)
    why = unchanged(alice, lambda: directory(alice)("bob"))
    assert "rollback" in why, why
    assert contact(alice, "bob")["age_recipient"] == age_recipient(bob)


def test_ten_thousand_junk_card_tags_are_a_bounded_look(
    pair: tuple[Party, Party], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    alice, bob = pair
    drop_cards(bob, "bob")
    # One unsigned "card" for bob, under 10,000 tags newer than anything honest.
    raw = build_card_manifest(CardClaim("bob", STRANGER, datetime.now(UTC).replace(microsecond=0)))
    with bob.workspace().client() as client:
        client.push_blob_bytes(p.EMPTY_CONFIG_BYTES, p.OCI_EMPTY)
        digest = client.push_manifest(raw, f"{card_tag_prefix('bob')}1-000000").digest
    unix = int(datetime.now(UTC).timestamp())
    tags = [f"{card_tag_prefix('bob')}{unix}-{i:06x}" for i in range(10_000)]
    plant_tags(alice.repo, digest, raw, tags, request)
    assert len(only_cards_of(bob, "bob")) == 10_001
    refresh = directory(alice)
    why = unchanged(alice, lambda: refresh("bob"))
    assert "stopped after" in why and "refused" in why, why
    _reasons, fetched = refresh("bob")
    # Per card read: its manifest, and where the registry has no referrers API
    # (distribution 2.8) its fallback index.
    assert fetched <= 2 * MAX_CARD_CANDIDATES
    # One directory does not read a refused tag again: each look gets further.
    workspace = alice.workspace()
    with workspace.clients() as pool:
        cards = card_directory(workspace, pool, interval_seconds=0)
        cards.refresh("bob")
        first = cards.reasons("bob")
        cards.refresh("bob")
        second = cards.reasons("bob")
    refused_first = {r.split(":")[0] for r in first if ": refused:" in r}
    refused_second = {r.split(":")[0] for r in second if ": refused:" in r}
    assert refused_first and refused_second and not refused_first & refused_second


def plant_tags(
    repo: str, digest: str, raw: bytes, tags: list[str], request: pytest.FixtureRequest
) -> None:
    """Tag ``digest`` many times straight in the store (pushing 10,000 tags takes minutes)."""
    if repo.startswith("oci-layout:"):
        layout = Path(repo.removeprefix("oci-layout:"))
        index = json.loads((layout / "index.json").read_text())
        for tag in tags:
            index["manifests"].append(
                {
                    "mediaType": p.OCI_MANIFEST,
                    "digest": digest,
                    "size": len(raw),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            )
        (layout / "index.json").write_text(json.dumps(index))
        return
    server = request.getfixturevalue("registry_server")
    name = repo.split("/", 1)[1]
    hex_digest = digest.split(":", 1)[1]
    tag_root = server.root / "docker/registry/v2/repositories" / name / "_manifests" / "tags"
    for tag in tags:
        current = tag_root / tag / "current"
        current.mkdir(parents=True)
        (current / "link").write_text(digest)
        index = tag_root / tag / "index" / "sha256" / hex_digest
        index.mkdir(parents=True)
        (index / "link").write_text(digest)


# --- sealing to a card's key --------------------------------------------------------


def test_alice_seals_to_bob_from_his_card_and_bob_opens_before_and_after_rotation(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = pair
    first = tmp_path / "first.txt"
    first.write_text("sealed with bob's first key\n")
    sent = json.loads(alice.ok("send", str(first), "-r", "bob", "--json"))
    assert contact(alice, "bob")["source"] == "repository"
    bob.ok("key", "rotate", "--age")
    second = tmp_path / "second.txt"
    second.write_text("sealed with bob's new key\n")
    alice.ok("send", str(second), "-r", "bob", "--json")
    assert contact(alice, "bob")["age_recipient"] == age_recipient(bob)
    out = tmp_path / "got"
    bob.ok("recv", "--out", str(out))
    assert (out / "first.txt").read_text() == first.read_text()
    assert (out / "second.txt").read_text() == second.read_text()
    listing = json.loads(bob.ok("ls", "--json"))
    assert all(entry.get("sealed") for entry in listing), (sent, listing)


def test_sending_to_a_name_with_only_junk_cards_fails_fast_and_names_the_fix(
    pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = pair
    drop_cards(bob, "bob")
    note = tmp_path / "note.txt"
    note.write_text("hello\n")
    result = alice.cli("send", str(note), "-r", "bob")
    assert result.code != 0
    assert "trust add bob --card" in result.err


# --- keyless -----------------------------------------------------------------------


def test_a_keyless_identitys_card_verifies_by_identity_and_issuer(
    tmp_path: Path, sigstore_stack: LocalSigstore
) -> None:
    repo = f"oci-layout:{tmp_path / 'layout'}"
    trust_config = sigstore_stack.write_trust_config(tmp_path / "trust-config.json")
    alice = keyless_party(tmp_path, "alice", repo, trust_config, sigstore_stack.issuer_url)
    bob = key_party(tmp_path, "bob", repo, trust_config)
    card = alice.ok("key", "export")
    assert f"keyless-identity: {ALICE_EMAIL}" in card
    token = sigstore_stack.token(email=ALICE_EMAIL)
    alice.ok("card", "publish", "--identity-token", token)
    bob.ok(
        "trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", sigstore_stack.issuer_url
    )
    reasons, _ = directory(bob)("alice")
    facts = contact(bob, "alice")
    assert facts.get("source") == "repository", reasons
    assert f"age-recipient: {facts['age_recipient']}" in card


def test_an_unreachable_registry_is_a_reason_not_an_error(tmp_path: Path) -> None:
    alice = make_party(tmp_path, "alice", f"oci-layout:{tmp_path / 'layout'}")
    bob = make_party(tmp_path, "bob", alice.repo)
    alice.ok("trust", "add", "bob", "--key", str(bob.public_key()))
    before = (alice.home / "trust.json").read_bytes()
    alice.ok("config", "set", "repository", "127.0.0.1:9/nowhere")  # discard: nothing listens
    reasons, _ = directory(alice)("bob")
    assert (alice.home / "trust.json").read_bytes() == before
    assert any("not looked up" in r for r in reasons), reasons


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_a_card_signed_by_its_owner_with_an_absurd_date_is_refused(
    pair: tuple[Party, Party], created_at: str
) -> None:
    """Bob's own signature on a card of year 1 or 9999: refused with a reason, nothing raises."""
    alice, bob = pair
    drop_cards(bob, "bob")
    document = json.loads(build_card_manifest(CardClaim("bob", STRANGER, datetime.now(UTC))))
    document["annotations"][p.A_CREATED_AT] = created_at
    raw = json.dumps(document).encode()
    workspace = bob.workspace()
    with workspace.client() as client:
        digest = client.push_manifest(raw).digest
        subject = m.Descriptor(p.OCI_MANIFEST, digest, len(raw))
        attach_bundle(client, subject, workspace.signer().sign_digest(digest))
        unix = int(datetime.now(UTC).timestamp())
        client.push_manifest(raw, f"{card_tag_prefix('bob')}{unix}-0a0a0a")
    why = unchanged(alice, lambda: directory(alice)("bob"))
    assert "refused" in why, why


def test_a_second_refresh_of_a_name_waits_for_the_look_in_progress(
    pair: tuple[Party, Party],
) -> None:
    """Two sends to bob at once: the second reads what the first look found.

    The new code passes whatever the timing; the one-second wait only gives the
    old code (which returned at once) the chance to show it.
    """
    alice, _bob = pair
    workspace = alice.workspace()
    entered, go = threading.Event(), threading.Event()
    second_saw_the_look_done: list[bool] = []
    with workspace.clients() as pool:
        cards = card_directory(workspace, pool, interval_seconds=3600)
        look = cards._refresh

        def slow(name: str) -> list[str]:
            entered.set()
            go.wait()
            return look(name)

        cards._refresh = slow  # type: ignore[method-assign]
        first = threading.Thread(target=cards.refresh, args=("bob",))
        first.start()
        entered.wait()

        def second() -> None:
            cards.refresh("bob")
            taken = bool(contact(alice, "bob").get("age_recipient"))
            second_saw_the_look_done.append(go.is_set() and taken)

        other = threading.Thread(target=second)
        other.start()
        other.join(timeout=1.0)
        go.set()
        first.join()
        other.join()
    assert second_saw_the_look_done == [True]
