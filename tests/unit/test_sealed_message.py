"""The sealed message's pieces: the ``sealed`` annotation and one sealed chunk (SPEC 9)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from dockercomms.core._internal import sealed_message as sm
from dockercomms.core._internal import sealing
from dockercomms.core._internal.chunking import ChunkSpan, layer_stream, plan_chunks
from dockercomms.core._internal.receive import BlobSpool
from dockercomms.core.age_keys import create_identity_file
from dockercomms.core.errors import (
    DigestMismatchError,
    FilenameError,
    LimitExceededError,
    ManifestError,
    NotARecipientError,
    ProtocolError,
)
from tests import age_cli

DIGESTS = tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
FACTS = sm.SealedFacts("Quarterly report (final).pdf", 70_000, DIGESTS)


def identities(count: int) -> list[x25519.Identity]:
    return [x25519.Identity.generate() for _ in range(count)]


def annotation_of(plaintext: bytes, identity: x25519.Identity) -> str:
    """A hostile or odd annotation: any plaintext, properly sealed to ``identity``."""
    return base64.b64encode(pyrage.encrypt(plaintext, [identity.to_public()])).decode()


def open_it(value: str, identity: x25519.Identity, **manifest: int) -> sm.SealedFacts:
    expected = {"total_bytes": FACTS.total_bytes, "chunk_count": len(DIGESTS), **manifest}
    return sm.open_annotation(value, [identity], **expected)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> age_cli.CountingDecrypt:
    wrapper = age_cli.CountingDecrypt()
    monkeypatch.setattr(pyrage, "decrypt_io", wrapper)
    return wrapper


@pytest.mark.parametrize("recipients", [1, 3])
def test_the_annotation_round_trips_for_every_recipient(recipients: int) -> None:
    ids = identities(recipients)
    value = sm.seal_annotation(FACTS, [i.to_public() for i in ids])
    assert base64.b64encode(base64.b64decode(value)).decode() == value
    assert len(value) <= sm.max_annotation_chars(len(DIGESTS))
    for identity in ids:
        assert open_it(value, identity) == FACTS


def test_someone_else_cannot_open_the_annotation() -> None:
    mine, theirs = identities(2)
    value = sm.seal_annotation(FACTS, [theirs.to_public()])
    with pytest.raises(NotARecipientError, match="sealed annotation is sealed to someone else"):
        open_it(value, mine)


def test_the_stock_age_tool_opens_our_annotation(tmp_path: Path) -> None:
    keys = create_identity_file(tmp_path / "age.key")
    value = sm.seal_annotation(FACTS, [x25519.Recipient.from_str(keys.recipient)])
    plain = age_cli.decrypt(base64.b64decode(value), tmp_path / "age.key")
    assert plain == FACTS.to_json()
    assert json.loads(plain) == {
        "filename": FACTS.filename,
        "total_bytes": FACTS.total_bytes,
        "chunk_sha256": list(DIGESTS),
    }


def test_an_annotation_the_stock_age_tool_sealed_opens_with_ours() -> None:
    ids = identities(2)
    sealed = age_cli.encrypt(FACTS.to_json(), [str(i.to_public()) for i in ids])
    value = base64.b64encode(sealed).decode()
    for identity in ids:
        assert open_it(value, identity) == FACTS


def test_a_too_long_annotation_is_refused_before_decoding(
    counting: age_cli.CountingDecrypt,
) -> None:
    [identity] = identities(1)
    value = "A" * (sm.max_annotation_chars(3) + 4)
    with pytest.raises(ManifestError, match="more than"):
        open_it(value, identity)
    assert counting.calls == 0


@pytest.mark.parametrize(
    "value",
    ["not base64!", "YWJj\n", "YWJjZA", "YWJjZB==", "YWJj" + "\u00e9"],
    ids=["alphabet", "newline", "unpadded", "non-canonical", "non-ascii"],
)
def test_an_annotation_that_is_not_standard_padded_base64_is_refused(value: str) -> None:
    with pytest.raises(ManifestError, match="base64"):
        open_it(value, identities(1)[0])


def test_plaintext_beyond_the_cap_is_refused_before_any_crypto(
    counting: age_cli.CountingDecrypt,
) -> None:
    """A well-formed annotation a sender padded to far more than 3 digests can take."""
    [identity] = identities(1)
    padded = FACTS.to_json()[:-1] + b"," + b" " * sm.max_facts_bytes(3) + b"}"
    value = annotation_of(padded, identity)
    assert len(value) <= sm.max_annotation_chars(3)  # past the length check
    with pytest.raises(LimitExceededError, match="plaintext"):
        open_it(value, identity)
    assert counting.calls == 0


def test_json_nested_too_deep_is_refused() -> None:
    [identity] = identities(1)
    value = annotation_of(b'{"filename": [["x"]], "total_bytes": 1, "chunk_sha256": []}', identity)
    with pytest.raises(LimitExceededError, match="nested deeper"):
        open_it(value, identity)


def test_not_json_is_refused() -> None:
    [identity] = identities(1)
    with pytest.raises(ManifestError, match="not valid JSON"):
        open_it(annotation_of(b"\xff{", identity), identity)
    with pytest.raises(ManifestError, match="not a JSON object"):
        open_it(annotation_of(b"[]", identity), identity)


def facts_doc(**changes: object) -> bytes:
    doc: dict[str, object] = json.loads(FACTS.to_json())
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("doc", "error", "text"),
    [
        (facts_doc(filename=7), ManifestError, "filename is not a string"),
        (facts_doc(total_bytes="70000"), ManifestError, "total_bytes"),
        (facts_doc(total_bytes=True), ManifestError, "total_bytes"),
        (facts_doc(total_bytes=70000.0), ManifestError, "total_bytes"),
        (facts_doc(total_bytes=-1), ManifestError, "total_bytes"),
        (facts_doc(total_bytes=69_999), ManifestError, "manifest says 70000"),
        (facts_doc(chunk_sha256="abc"), ManifestError, "not a list"),
        (facts_doc(chunk_sha256=list(DIGESTS[:2])), ManifestError, "2 chunk digests"),
        (facts_doc(chunk_sha256=[*DIGESTS, DIGESTS[0]]), ManifestError, "4 chunk digests"),
        (facts_doc(chunk_sha256=[DIGESTS[0].upper(), *DIGESTS[1:]]), ManifestError, r"\[0\]"),
        (facts_doc(chunk_sha256=[*DIGESTS[:2], 5]), ManifestError, r"\[2\]"),
        (facts_doc(chunk_sha256=[*DIGESTS[:2], DIGESTS[2][:63]]), ManifestError, r"\[2\]"),
        (facts_doc(extra=1), ManifestError, "unknown 'extra'"),
        (facts_doc(filename=...), ManifestError, "missing filename"),
        (facts_doc(filename="../../.bashrc"), FilenameError, "path separator"),
        (facts_doc(filename="a\x1b[2Jb"), FilenameError, "control"),
        (facts_doc(filename=".."), FilenameError, "directory"),
    ],
)
def test_every_field_is_checked(doc: bytes, error: type[ProtocolError], text: str) -> None:
    [identity] = identities(1)
    with pytest.raises(error, match=text):
        open_it(annotation_of(doc, identity), identity)


def test_we_never_seal_facts_a_receiver_would_refuse() -> None:
    [identity] = identities(1)
    with pytest.raises(FilenameError):
        sm.seal_annotation(sm.SealedFacts("a/b", 1, DIGESTS[:1]), [identity.to_public()])
    with pytest.raises(ManifestError, match=r"chunk_sha256\[0\]"):
        sm.seal_annotation(sm.SealedFacts("a", 1, ("ABC",)), [identity.to_public()])


def test_the_neutral_filename() -> None:
    assert sm.neutral_filename("0f1e2d3c-4b5a-4697-8877-665544332211") == "0f1e2d3c.sealed"


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_sealed_chunk_opens_to_its_bytes_and_digest(tmp_path: Path, compression: str) -> None:
    """Send side (layer_stream -> seal_pieces, span_sha256) to receive side (open_chunk)."""
    ids = identities(3)
    source = tmp_path / "file"
    source.write_bytes(os.urandom(150_000) + bytes(100_000))
    spans = plan_chunks(250_000, 100_000)
    with source.open("rb") as f:
        layers = [
            b"".join(
                sealing.seal_pieces(
                    layer_stream(f.fileno(), span, compression), [i.to_public() for i in ids]
                )
            )
            for span in spans
        ]
        digests = [sm.span_sha256(f.fileno(), span) for span in spans]
    data = source.read_bytes()
    for span, layer, digest in zip(spans, layers, digests, strict=True):
        chunk = data[span.offset : span.offset + span.length]
        assert digest == hashlib.sha256(chunk).hexdigest()
        with BlobSpool(len(layer)) as spool:
            spool.write(layer)
            out = io.BytesIO()
            sm.open_chunk(
                spool.contents(),
                [ids[span.index % 3]],
                index=span.index,
                expected_length=span.length,
                compression=compression,
                chunk_sha256=digest,
                out=out,
            )
        assert out.getvalue() == chunk


def test_a_chunk_that_does_not_match_its_sealed_digest_is_refused(tmp_path: Path) -> None:
    [identity] = identities(1)
    source = tmp_path / "file"
    source.write_bytes(b"the bytes the sender sealed")
    span = ChunkSpan(0, 0, source.stat().st_size)
    with source.open("rb") as f:
        layer = b"".join(
            sealing.seal_pieces(layer_stream(f.fileno(), span, "zstd"), [identity.to_public()])
        )
    with pytest.raises(DigestMismatchError, match="chunk 0 hashes to"):
        sm.open_chunk(
            bytearray(layer),
            [identity],
            index=0,
            expected_length=span.length,
            compression="zstd",
            chunk_sha256=hashlib.sha256(b"what the annotation claims").hexdigest(),
            out=io.BytesIO(),
        )
