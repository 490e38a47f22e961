"""Protocol units: names, limits, manifests and chunk layers, no registry involved."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.chunking import extract_layer, plan_chunks
from dockercomms.core._internal.limits import check_filename, sanitize_filename
from dockercomms.core._internal.signing.statement import signed_digest, statement_bytes
from dockercomms.core.errors import ChunkError, FilenameError, ManifestError
from tests.forge import compress, honest_layer


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("alice@example.com", "vu6pg6fs1o9bu394h4n4b63u4i"),
        ("bob", "g6r3fm7sqb3dkoqpsqb324t12s"),
        ("", "seoc8gkovge196nruj49irtp4g"),
        ("team-a", "ir18gr2hq7fr940tjvmcvtj22f"),
    ],
)
def test_recipient_tag_vectors(recipient: str, expected: str) -> None:
    assert p.recipient_tag(recipient) == expected


def test_message_tag_shape() -> None:
    moment = datetime(2026, 11, 23, 23, 59, tzinfo=UTC)
    tag = p.message_tag("bob", moment, "0d1e2f3a-aaaa-4bbb-8ccc-dddddddddddd", "12345678-9abc")
    assert tag == "inbox-g6r3fm7sqb3dkoqpsqb324t12s-20261123-0d1e2f3a-12345678"
    assert p.TAG_PATTERN.fullmatch(tag)


def test_suffix_tags() -> None:
    digest = p.sha256_digest(b"x")
    bundle = p.bundle_tag(digest, datetime.fromtimestamp(1700000000, UTC))
    assert (
        bundle.startswith(f"bundle-{digest[7:19]}-1700000000-") and len(bundle.split("-")[-1]) == 6
    )
    assert p.receipt_tag(digest).startswith(f"receipt-{digest[7:19]}-")
    assert p.referrers_fallback_tag(digest) == "sha256-" + digest[7:]


def test_check_tag_refuses_bad_tags() -> None:
    for bad in ["", "-x", "a" * 129, "a/b", "a:b"]:
        with pytest.raises(ValueError):
            p.check_tag(bad)


def test_timestamps_round_trip() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert p.format_timestamp(moment) == "2026-01-02T03:04:05Z"
    assert p.parse_timestamp("2026-01-02T03:04:05Z") == moment
    with pytest.raises(ValueError):
        p.parse_timestamp("2026-01-02 03:04:05")


@pytest.mark.parametrize("name", ["report.pdf", "ünïcödé.txt", "a" * 255, "with space"])
def test_safe_names_pass(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00b", "a\nb", "é" * 128])
def test_unsafe_names_fail(name: str) -> None:
    with pytest.raises(FilenameError):
        check_filename(name)


def test_sanitize_takes_basename_and_trims_on_char_boundary() -> None:
    assert sanitize_filename("/tmp/dir/file.txt") == "file.txt"
    assert sanitize_filename("C:\\Users\\x\\doc.txt") == "doc.txt"
    assert sanitize_filename("bad\x07name") == "badname"
    trimmed = sanitize_filename("é" * 200)
    assert len(trimmed.encode()) <= 255 and trimmed == "é" * 127


def test_plan_chunks() -> None:
    assert plan_chunks(0, 10) == []
    spans = plan_chunks(25, 10)
    assert [(s.index, s.offset, s.length) for s in spans] == [(0, 0, 10), (1, 10, 10), (2, 20, 5)]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 100_000])
def test_layer_round_trip(compression: str, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    layer = honest_layer(data, 7, compression)
    out = io.BytesIO()
    extract_layer(
        io.BytesIO(layer), index=7, expected_length=size, compression=compression, out=out
    )
    assert out.getvalue() == data


def test_layer_is_go_style_tar() -> None:
    import tarfile

    import zstandard

    raw = zstandard.ZstdDecompressor().decompress(
        honest_layer(b"abc", 0, "zstd"), max_output_size=1 << 20
    )
    assert len(raw) == 512 + 512 + 1024  # header, one data block, two zero blocks
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        (member,) = archive.getmembers()
    assert (member.name, member.mode, member.uid, member.gid, member.mtime) == (
        "chunk_0.bin",
        0o644,
        0,
        0,
        0,
    )


def test_layer_wrong_index_is_refused() -> None:
    with pytest.raises(ChunkError, match=r"chunk_1\.bin"):
        extract_layer(
            io.BytesIO(honest_layer(b"abc", 0, "zstd")),
            index=1,
            expected_length=3,
            compression="zstd",
            out=io.BytesIO(),
        )


def _plain_tar(data: bytes, index: int = 0, *, end: bytes = b"\0" * 1024) -> bytes:
    """A USTAR entry for chunk ``index`` followed by ``end`` instead of the usual zero blocks."""
    info = tarfile.TarInfo(f"chunk_{index}.bin")
    info.size = len(data)
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header + data + b"\0" * (-len(data) % 512) + end


def _extract(layer: bytes | memoryview | io.BytesIO, length: int, compression: str) -> bytes:
    out = io.BytesIO()
    extract_layer(layer, index=0, expected_length=length, compression=compression, out=out)
    return out.getvalue()


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize("source", ["bytes", "memoryview", "file"])
def test_layer_sources(compression: str, source: str) -> None:
    """A spooled blob is read in place (memory) or from its temp file; both extract."""
    data = bytes(range(256)) * 5000
    layer = honest_layer(data, 0, compression)
    given = {"bytes": layer, "memoryview": memoryview(bytearray(layer)), "file": io.BytesIO(layer)}
    assert _extract(given[source], len(data), compression) == data


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_pax_layer_goes_through_tarfile(compression: str) -> None:
    data = b"pax" * 1000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("chunk_0.bin")
        info.size = len(data)
        info.pax_headers = {"comment": "written by another tool"}
        archive.addfile(info, io.BytesIO(data))
    assert buffer.getvalue()[156:157] == tarfile.XHDTYPE
    assert _extract(compress(buffer.getvalue(), compression), len(data), compression) == data


def test_layer_without_end_blocks_is_accepted() -> None:
    data = b"x" * 1000
    assert _extract(compress(_plain_tar(data, end=b""), "zstd"), len(data), "zstd") == data


def test_gzip_members_may_be_concatenated() -> None:
    raw = _plain_tar(b"y" * 3000)
    layer = compress(raw[:700], "gzip") + compress(raw[700:], "gzip")
    assert _extract(layer, 3000, "gzip") == b"y" * 3000


@pytest.mark.parametrize(
    ("end", "message"),
    [
        (b"junk".ljust(512, b"\0"), "unexpected data after"),
        (b"\0" * 512 + _plain_tar(b"second", 1), "more than one entry"),
        (b"\0" * 1024 + b"\1", "unexpected data after"),
    ],
    ids=["garbage", "entry-after-a-zero-block", "byte-after-the-end"],
)
def test_anything_but_zero_blocks_after_the_entry_is_refused(end: bytes, message: str) -> None:
    layer = compress(_plain_tar(b"abc", end=end), "zstd")
    with pytest.raises(ChunkError, match=message):
        _extract(layer, 3, "zstd")


@pytest.mark.parametrize("cut", [100, 512, 700])
def test_truncated_layer_is_refused(cut: int) -> None:
    layer = compress(_plain_tar(b"z" * 1000)[:cut], "zstd")
    with pytest.raises(ChunkError):
        _extract(layer, 1000, "zstd")


def _annotations(**overrides: str) -> dict[str, str]:
    annotations = m.message_annotations(
        sender="alice",
        recipient="bob",
        created_at=datetime(2026, 11, 23, tzinfo=UTC),
        ttl_seconds=60,
        message_id="0b1c2d3e-4f50-4a1b-8c2d-3e4f5a6b7c8d",
        filename="f.txt",
        total_bytes=25,
        chunk_bytes=10,
        chunk_count=3,
        compression="gzip",
    )
    annotations.update(overrides)
    return annotations


def _layers(count: int = 3, media: str = p.CHUNK_MEDIA_TYPES["gzip"]) -> list[m.Descriptor]:
    return [
        m.Descriptor(media, p.sha256_digest(bytes([i])), 30, {p.A_CHUNK_INDEX: str(i)})
        for i in range(count)
    ]


def test_message_manifest_round_trip() -> None:
    raw = m.build_message(_annotations(), list(reversed(_layers())))
    message = m.parse_message(raw, p.sha256_digest(raw), me="bob")
    assert [c.annotations[p.A_CHUNK_INDEX] for c in message.chunks] == ["0", "1", "2"]
    assert (message.total_bytes, message.chunk_bytes, message.chunk_count) == (25, 10, 3)
    assert b'"artifactType":"application/vnd.dockercomms.message.v1"' in raw


def test_reader_accepts_missing_media_type_and_null_layers_on_receipts() -> None:
    import json

    doc = json.loads(m.build_message(_annotations(), _layers()))
    del doc["mediaType"]
    raw = json.dumps(doc).encode()
    assert m.parse_message(raw, p.sha256_digest(raw)).chunk_count == 3
    subject = m.Descriptor(p.OCI_MANIFEST, p.sha256_digest(b"m"), 10)
    receipt = json.loads(
        m.build_receipt(
            subject,
            {
                p.A_VERSION: "1.0",
                p.A_SENDER: "bob",
                p.A_RECIPIENT: "alice",
                p.A_CREATED_AT: "2026-11-23T00:00:00Z",
                p.A_TTL: "60",
                p.A_RECEIPT_FOR: subject.digest,
                p.A_RECEIPT_STATUS: "accepted",
                p.A_RECEIPT_VERIFIED: "true",
            },
        )
    )
    receipt["layers"] = None
    raw = json.dumps(receipt).encode()
    assert m.parse_receipt(raw, p.sha256_digest(raw)).status == "accepted"


@pytest.mark.parametrize(
    ("overrides", "layers", "match"),
    [
        ({p.A_VERSION: "2.0"}, _layers(), "version"),
        ({p.A_TOTAL_BYTES: "-1"}, _layers(), "non-negative"),
        ({p.A_TOTAL_BYTES: "0x10"}, _layers(), "non-negative"),
        ({p.A_CHUNK_BYTES: "30"}, _layers(), "chunk_bytes"),
        ({p.A_MESSAGE_ID: "not-a-uuid"}, _layers(), "UUID"),
        ({p.A_CREATED_AT: "yesterday"}, _layers(), "RFC 3339"),
        ({}, _layers(media=p.CHUNK_MEDIA_TYPES["zstd"]), "does not match"),
        ({}, _layers(2), "chunk_count"),
    ],
)
def test_invalid_manifests(
    overrides: dict[str, str], layers: list[m.Descriptor], match: str
) -> None:
    raw = m.build_message(_annotations(**overrides), layers)
    with pytest.raises(ManifestError, match=match):
        m.parse_message(raw, p.sha256_digest(raw))


def test_missing_annotation_and_wrong_config() -> None:
    annotations = _annotations()
    del annotations[p.A_SENDER]
    raw = m.build_message(annotations, _layers())
    with pytest.raises(ManifestError, match="missing annotations"):
        m.parse_message(raw, p.sha256_digest(raw))
    raw = raw.replace(p.EMPTY_CONFIG_DIGEST.encode(), p.sha256_digest(b"other").encode())
    with pytest.raises(ManifestError):
        m.parse_message(raw, p.sha256_digest(raw))


def test_statement_names_the_digest() -> None:
    digest = p.sha256_digest(b"manifest")
    assert signed_digest(p.DSSE_PAYLOAD_TYPE, statement_bytes(digest)) == digest
    with pytest.raises(ValueError):
        signed_digest("text/plain", statement_bytes(digest))


def _statement(**changes: object) -> bytes:
    digest = p.sha256_digest(b"manifest")
    statement = json.loads(statement_bytes(digest)) | changes
    return json.dumps(statement).encode()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_statement(predicateType="https://slsa.dev/provenance/v1"), "predicateType"),
        (_statement(predicateType=None), "predicateType"),
        (
            _statement(
                subject=[
                    {"name": "a", "digest": {"sha256": "a" * 64}},
                    {"name": "b", "digest": {"sha256": "b" * 64}},
                ]
            ),
            "exactly one subject",
        ),
        (_statement(subject=[{"name": "a", "digest": {"sha256": "A" * 64}}]), "sha256"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
    ],
    ids=["attestation", "no-predicate", "two-subjects", "uppercase-hex", "deep"],
)
def test_only_a_cosign_signature_statement_is_a_message_signature(
    payload: bytes, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        signed_digest(p.DSSE_PAYLOAD_TYPE, payload)
