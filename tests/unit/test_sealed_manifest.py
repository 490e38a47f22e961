"""SPEC 5 step 3 for sealed messages (SPEC 9): what a manifest must say before anything is opened.

The ``+age`` layer media types only with ``dockercomms.encryption`` = ``age``, the
neutral file name, a ``sealed`` annotation no longer than its chunk count allows;
and none of that on a plaintext message. Nothing here decrypts.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal import sealed_message as sm
from dockercomms.core.errors import LimitExceededError, ManifestError

MESSAGE_ID = "0b1c2d3e-4f50-4a1b-8c2d-3e4f5a6b7c8d"
SEALED = "YWdl"  # content is not looked at in step 3


def annotations(**overrides: str) -> dict[str, str]:
    values = m.message_annotations(
        sender="alice",
        recipient="bob",
        created_at=datetime(2026, 11, 23, tzinfo=UTC),
        ttl_seconds=60,
        message_id=MESSAGE_ID,
        filename=sm.neutral_filename(MESSAGE_ID),
        total_bytes=25,
        chunk_bytes=10,
        chunk_count=3,
        compression="zstd",
    )
    values |= {sm.A_ENCRYPTION: sm.ENCRYPTION_AGE, sm.A_SEALED: SEALED}
    values.update(overrides)
    return {key: value for key, value in values.items() if value != "<absent>"}


def layers(media: str = sm.SEALED_CHUNK_MEDIA_TYPES["zstd"], size: int = 300) -> list[m.Descriptor]:
    return [
        m.Descriptor(media, p.sha256_digest(bytes([i])), size, {p.A_CHUNK_INDEX: str(i)})
        for i in range(3)
    ]


def parse(raw: bytes) -> m.Message:
    return m.parse_message(raw, p.sha256_digest(raw), me="bob")


def test_a_sealed_manifest_parses_unopened() -> None:
    message = parse(m.build_message(annotations(), layers()))
    assert message.encrypted and message.sealed is None
    assert message.filename == "0b1c2d3e.sealed"


@pytest.mark.parametrize(
    ("overrides", "media", "error", "text"),
    [
        ({sm.A_ENCRYPTION: "<absent>", sm.A_SEALED: "<absent>"}, None, ManifestError, "media type"),
        ({sm.A_ENCRYPTION: "<absent>"}, p.CHUNK_MEDIA_TYPES["zstd"], ManifestError, "plaintext"),
        ({sm.A_ENCRYPTION: "rot13"}, None, ManifestError, "unknown encryption"),
        ({sm.A_SEALED: "<absent>"}, None, ManifestError, "no dockercomms.sealed"),
        ({p.A_FILENAME: "report.pdf"}, None, ManifestError, "neutral file name"),
        ({}, p.CHUNK_MEDIA_TYPES["zstd"], ManifestError, "media type"),
        ({sm.A_SEALED: "A" * 200_000}, None, LimitExceededError, "characters"),
    ],
    ids=[
        "age-layers-without-encryption",
        "sealed-annotation-on-plaintext",
        "unknown-encryption",
        "no-sealed-annotation",
        "real-name-in-the-clear",
        "plain-layers-in-a-sealed-message",
        "annotation-too-long",
    ],
)
def test_step_three_refuses(
    overrides: dict[str, str], media: str | None, error: type[Exception], text: str
) -> None:
    chosen = layers(media) if media else layers()
    with pytest.raises(error, match=text):
        parse(m.build_message(annotations(**overrides), chosen))


def test_a_sealed_layer_may_be_larger_by_the_age_overhead_only() -> None:
    # chunk_bytes 10: the compressed tar may be 64 KiB + a little; age adds a 64 KiB header at most.
    assert parse(m.build_message(annotations(), layers(size=128 * 1024))).encrypted
    with pytest.raises(LimitExceededError, match="too large"):
        parse(m.build_message(annotations(), layers(size=256 * 1024)))
