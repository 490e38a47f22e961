"""Contact cards: the file for key export / trust add --card, and the SPEC 9.1 annotations."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pyrage import x25519

from dockercomms.core import protocol
from dockercomms.core._internal.signing.keypair import public_pem
from dockercomms.core.contact_card import (
    A_AGE_RECIPIENT,
    A_IDENTITY,
    MAX_CARD_BYTES,
    CardClaim,
    ContactCard,
    card_annotations,
    card_tag,
    card_tag_prefix,
    parse_card,
    parse_card_annotations,
)
from dockercomms.core.errors import ConfigError, ManifestError
from dockercomms.core.trust import TrustPolicy

WHEN = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)
RECIPIENT = str(x25519.Identity.generate().to_public())
ISSUER = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/acme/release/.github/workflows/publish.yml@refs/heads/main"


def pem() -> bytes:
    return public_pem(ec.generate_private_key(ec.SECP256R1()).public_key())


def key_card() -> ContactCard:
    return ContactCard.for_key("alice@example.com", pem(), RECIPIENT, WHEN)


def keyless_card(sigstore: str = "public-good") -> ContactCard:
    return ContactCard.for_keyless(
        "release-bot", WORKFLOW, ISSUER, RECIPIENT, WHEN, sigstore=sigstore
    )


def test_a_key_card_round_trips_and_reads_well() -> None:
    card = key_card()
    text = card.text()
    assert parse_card(text) == card
    assert parse_card(text.encode()).text() == text
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    assert lines[1:5] == [
        "dockercomms-card: 1",
        "name: alice@example.com",
        "created-at: 2026-05-01T10:00:00Z",
        f"age-recipient: {RECIPIENT}",
    ]
    assert lines[5].startswith("signing-key: MFkw")  # P-256 SPKI, one line
    assert len(lines) == 6


def test_a_key_card_is_what_trust_add_key_trusts() -> None:
    card = key_card()
    entry = TrustPolicy().add_key(card.name, card.signing_key.encode())
    assert entry.signer == card.signer
    assert card.kind == "key"


@pytest.mark.parametrize("sigstore", ["", "public-good", "staging"])
def test_a_keyless_card_round_trips(sigstore: str) -> None:
    card = keyless_card(sigstore)
    assert parse_card(card.text()) == card
    assert card.kind == "keyless"
    entry = TrustPolicy().add_identity(card.name, WORKFLOW, ISSUER, sigstore_trust=sigstore)
    assert entry.signer == card.signer
    assert ("sigstore:" in card.text()) is bool(sigstore)


def test_mail_and_chat_damage_is_tolerated() -> None:
    card = key_card()
    lines = card.text().splitlines()
    mangled = "\r\n".join(["", "# pasted from mail", *(line + "  " for line in lines), ""])
    assert parse_card(mangled) == card


def card_text(**changes: str | None) -> str:
    """A valid card's text with fields replaced (a value), or removed (None)."""
    fields = dict(
        line.split(": ", 1) for line in key_card().text().splitlines() if ": " in line[:20]
    )
    fields.pop("# dockercomms contact card", None)
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def ed25519_der() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (card_text(dockercomms_card="2"), "not a version 1"),
        (card_text(dockercomms_card=None), "starts with 'dockercomms-card: 1'"),
        ("name: x\ndockercomms-card: 1\n", "starts with"),
        (card_text() + "name: mallory\n", "repeats 'name'"),
        (card_text() + "age-recipient: " + RECIPIENT + "\n", "repeats"),
        (card_text() + "trust: everything\n", "known key"),
        (card_text() + "Name: x\n", "known key"),
        (card_text() + " name: x\n", "known key"),
        (card_text() + "name:x\n", "known key"),
        (card_text() + "signing-key:\n", "known key"),
        (card_text(name=None), "lacks name"),
        (card_text(age_recipient=None), "lacks age-recipient"),
        (card_text(name="../../etc"), "not a valid name"),
        (card_text(name="alice bob"), "not a valid name"),
        (card_text(age_recipient="age1notakey"), "not a valid age"),
        (card_text(age_recipient=RECIPIENT.upper()), "age recipient"),
        (card_text(created_at="2026-05-01T10:00:00.5Z"), "RFC 3339"),
        (card_text(created_at="2026-05-01 10:00:00"), "RFC 3339"),
        (card_text(created_at="yesterday"), "RFC 3339"),
        (card_text(signing_key="not base64!"), "not base64"),
        (card_text(signing_key="QUJD"), "not a PEM public key"),
        (card_text(signing_key=ed25519_der()), "P-256"),
        (card_text(signing_key=None), "a keyless identity and issuer"),
        (card_text(keyless_identity=WORKFLOW, keyless_issuer=ISSUER), "not both"),
        ("name: é\n", "plain ASCII"),
        ("#" * (MAX_CARD_BYTES + 1), f"at most {MAX_CARD_BYTES} bytes"),
        ("\n" * 100, "at most 64 lines"),
    ],
)
def test_a_card_breaking_a_rule_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_card(text)


@pytest.mark.parametrize(
    ("identity", "issuer", "sigstore", "problem"),
    [
        ("", ISSUER, "", "needs both"),
        (WORKFLOW, "", "", "needs both"),
        ("alice @example.com", ISSUER, "", "visible ASCII"),
        ("x" * 1025, ISSUER, "", "at most 1024"),
        (WORKFLOW, "github", "", "not a URL"),
        (WORKFLOW, ISSUER + "/", "", "ends with '/'"),
        (WORKFLOW, ISSUER, "/home/alice/trust.json", "set by the reader"),
    ],
)
def test_keyless_fields_are_checked(
    identity: str, issuer: str, sigstore: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        ContactCard.for_keyless("bot", identity, issuer, RECIPIENT, WHEN, sigstore=sigstore)


def test_a_card_made_in_code_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="whole seconds"):
        replace(key_card(), created_at=WHEN.replace(microsecond=5))
    with pytest.raises(ConfigError, match="canonical PEM"):
        replace(key_card(), signing_key=key_card().signing_key.replace("\n", "\r\n"))
    assert (
        ContactCard.for_key("a", pem(), RECIPIENT, WHEN.replace(microsecond=7)).created_at == WHEN
    )


def test_the_card_manifest_annotations_round_trip() -> None:
    card = key_card()
    annotations = card_annotations(card.claim)
    assert annotations == {
        "dockercomms.version": "1.0",
        "dockercomms.identity": "alice@example.com",
        "dockercomms.age.recipient": RECIPIENT,
        "dockercomms.created_at": "2026-05-01T10:00:00Z",
    }
    other_tools = {**annotations, "org.opencontainers.image.created": "whenever"}
    assert parse_card_annotations(other_tools) == CardClaim(card.name, RECIPIENT, WHEN)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({A_IDENTITY: None}, "lacks the string annotation dockercomms.identity"),
        ({A_AGE_RECIPIENT: 5}, "lacks the string annotation dockercomms.age.recipient"),
        ({protocol.A_VERSION: "2.0"}, "version is not 1.0"),
        ({A_IDENTITY: "bob\nalice"}, "not a name"),
        ({A_IDENTITY: "a" * 300}, "longer than 256"),
        ({A_AGE_RECIPIENT: "age1nope"}, "card age recipient"),
        ({protocol.A_CREATED_AT: "2026-05-01T10:00:00+00:00"}, "RFC 3339"),
    ],
)
def test_hostile_card_annotations_are_refused(changes: dict[str, object], problem: str) -> None:
    annotations: dict[str, object] = dict(card_annotations(key_card().claim))
    for key, value in changes.items():
        if value is None:
            del annotations[key]
        else:
            annotations[key] = value
    with pytest.raises(ManifestError, match=problem):
        parse_card_annotations(annotations)


def test_card_tags() -> None:
    tag = card_tag("alice@example.com", WHEN)
    assert tag.startswith(card_tag_prefix("alice@example.com"))
    assert card_tag_prefix("alice@example.com") == "card-vu6pg6fs1o9bu394h4n4b63u4i-"
    assert tag.split("-")[2] == str(int(WHEN.timestamp()))
    assert len(tag.split("-")[3]) == 6
    assert protocol.TAG_PATTERN.fullmatch(tag)
