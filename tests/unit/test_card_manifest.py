"""The SPEC 9.1 card manifest: what we push, and what an untrusted one may look like."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pyrage import x25519

from dockercomms.core import protocol
from dockercomms.core._internal.cards import build_card_manifest, parse_card_manifest
from dockercomms.core.contact_card import CARD_ARTIFACT_TYPE, CardClaim
from dockercomms.core.errors import DockerCommsError

CLAIM = CardClaim(
    "bob", str(x25519.Identity.generate().to_public()), datetime(2026, 5, 1, tzinfo=UTC)
)


def test_a_card_manifest_round_trips() -> None:
    raw = build_card_manifest(CLAIM)
    doc = json.loads(raw)
    assert doc["artifactType"] == CARD_ARTIFACT_TYPE
    assert doc["layers"] == [] and doc["config"] == protocol.EMPTY_CONFIG_DESCRIPTOR
    assert parse_card_manifest(raw) == CLAIM


@pytest.mark.parametrize(
    "change",
    [
        {"artifactType": protocol.MESSAGE_ARTIFACT_TYPE},
        {"schemaVersion": 1},
        {"layers": [{"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1}]},
        {"annotations": None},
        {"mediaType": protocol.OCI_INDEX},
    ],
)
def test_what_is_no_card_is_refused(change: dict[str, object]) -> None:
    doc = json.loads(build_card_manifest(CLAIM)) | change
    with pytest.raises(DockerCommsError):
        parse_card_manifest(json.dumps(doc).encode())


def test_a_huge_or_deep_card_manifest_is_refused_unparsed() -> None:
    with pytest.raises(DockerCommsError):
        parse_card_manifest(b"[" * 5000 + b"]" * 5000)
    doc = json.loads(build_card_manifest(CLAIM))
    doc["annotations"]["junk"] = "x" * (128 * 1024)
    with pytest.raises(DockerCommsError):
        parse_card_manifest(json.dumps(doc).encode())
