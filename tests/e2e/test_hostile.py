"""Hostile artifacts: each must be refused with the right exit code and write nothing.

Alice (trusted by Bob) or Mallory (not trusted) forges a message to Bob; Bob runs
``recv`` and the output folder must stay empty, hidden temp files included.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from tests.conftest import Party, make_party
from tests.forge import (
    Forge,
    bomb_layer,
    compress,
    honest_layer,
    key_signed_statement,
    regular,
    tamper_blob_on_disk,
    tar_bytes,
)

VERIFICATION = 2
PROTOCOL = 4


def forge_as(party: Party) -> Forge:
    workspace = party.workspace()
    return Forge(workspace.client(), workspace.signer(), workspace.identity)


def recv_refuses(bob: Party, out: Path, expected_code: int) -> dict[str, object]:
    """Bob's recv exits with ``expected_code`` and leaves ``out`` empty."""
    result = bob.cli("recv", "--out", str(out), "--json")
    assert result.code == expected_code, result.out + result.err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
    outcomes = json.loads(result.out)
    rejected = [o for o in outcomes if o["status"] == "rejected"]
    assert rejected, outcomes
    return rejected[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "received"


def test_tampered_chunk(alice_bob: tuple[Party, Party], backend_storage: Path, out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    forge.message(bob.name, b"x" * 4096)
    raw, _ = forge.client.fetch_manifest(forge.client.list_tags("inbox-")[0])
    layer = m.parse_json(raw, "manifest")["layers"][0]["digest"]
    tamper_blob_on_disk(backend_storage, layer)
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert rejection["error_type"] == "DigestMismatchError"


def test_tampered_manifest(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    layer = forge.layer(honest_layer(b"data", 0, "zstd"), 0)
    honest = m.build_message(forge.annotations(bob.name, 4), [layer])
    bundle = forge.signer.sign_digest(p.sha256_digest(honest))
    tampered = m.build_message(forge.annotations(bob.name, 4, **{p.A_FILENAME: "evil.sh"}), [layer])
    forge.push(tampered, bob.name, sign=lambda _: bundle)
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert "not sha256:" in str(rejection["error"]) or "signs" in str(rejection["error"])


def test_bundle_for_another_digest(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    other = p.sha256_digest(b"some other manifest")
    forge.message(bob.name, sign=lambda _: forge.signer.sign_digest(other))
    recv_refuses(bob, out, VERIFICATION)


def test_untrusted_key(alice_bob: tuple[Party, Party], tmp_path: Path, out: Path) -> None:
    _, bob = alice_bob
    mallory = make_party(tmp_path, "mallory", bob.repo)
    forge = forge_as(mallory)
    forge.sender = "alice@example.com"  # claims to be Alice, signs with her own key
    forge.message(bob.name)
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert rejection["error_type"] == "UntrustedSignerError"


def test_sender_annotation_not_the_signer(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    forge.sender = "bob"  # Alice's valid signature, claiming to be someone Bob trusts
    forge.message(bob.name)
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert rejection["error_type"] == "SenderMismatchError"


def test_recipient_not_me(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    layer = forge.layer(honest_layer(b"data", 0, "zstd"), 0)
    raw = m.build_message(forge.annotations("mallory", 4), [layer])
    forge.push(raw, bob.name)  # listed under Bob's recipient tag
    recv_refuses(bob, out, PROTOCOL)


def test_recipient_tag_mismatch() -> None:
    raw = m.build_message(
        m.message_annotations(
            sender="alice",
            recipient="bob",
            created_at=datetime.now(UTC),
            ttl_seconds=60,
            message_id=p.new_message_id(),
            filename="a",
            total_bytes=0,
            chunk_bytes=0,
            chunk_count=0,
            compression="zstd",
        ),
        [],
    )
    wrong_tag = f"inbox-{p.recipient_tag('carol')}-20260101-abcdef12-abcdef12"
    with pytest.raises(m.ManifestError, match="recipient tag"):
        m.parse_message(raw, p.sha256_digest(raw), tag=wrong_tag)


def test_expired(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    old = p.format_timestamp(datetime.now(UTC) - timedelta(days=2))
    forge_as(alice).message(bob.name, **{p.A_CREATED_AT: old, p.A_TTL: "60"})
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert rejection["error_type"] == "ExpiredError"


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "a/b", "nul\x00byte", "esc\x1b[31mred", "x" * 300, "..", ""],
    ids=["traversal", "slash", "nul", "control", "300-bytes", "dotdot", "empty"],
)
def test_unsafe_filenames(embedded_pair: tuple[Party, Party], out: Path, filename: str) -> None:
    alice, bob = embedded_pair
    forge_as(alice).message(bob.name, **{p.A_FILENAME: filename})
    recv_refuses(bob, out, PROTOCOL)


def test_chunk_count_lie(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge_as(alice).message(bob.name, **{p.A_CHUNK_COUNT: "3"})
    recv_refuses(bob, out, PROTOCOL)


def test_total_bytes_lie(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    data = b"y" * 1000
    # Claims 1500 bytes in chunks of 1000: two chunks, the second should hold 500.
    blobs = [honest_layer(data, 0, "zstd"), honest_layer(data, 1, "zstd")]
    forge_as(alice).message(
        bob.name,
        data,
        layer_blobs=blobs,
        **{p.A_TOTAL_BYTES: "1500", p.A_CHUNK_BYTES: "1000", p.A_CHUNK_COUNT: "2"},
    )
    recv_refuses(bob, out, PROTOCOL)


@pytest.mark.parametrize("indices", [[0, 0], [0, 2]], ids=["duplicate", "missing"])
def test_bad_chunk_indices(
    embedded_pair: tuple[Party, Party], out: Path, indices: list[int]
) -> None:
    alice, bob = embedded_pair
    data = b"z" * 20
    blobs = [honest_layer(data[:10], 0, "zstd"), honest_layer(data[10:], 1, "zstd")]
    forge_as(alice).message(
        bob.name,
        data,
        layer_blobs=blobs,
        layer_indices=indices,
        **{p.A_CHUNK_BYTES: "10", p.A_CHUNK_COUNT: "2"},
    )
    recv_refuses(bob, out, PROTOCOL)


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("chunk_0.bin")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "layer",
    [
        compress(
            tar_bytes([regular("chunk_0.bin", b"abcd"), regular("extra", b"e")], [b"abcd", b"e"]),
            "zstd",
        ),
        compress(tar_bytes([_symlink()], [b""]), "zstd"),
        compress(tar_bytes([regular("../chunk_0.bin", b"abcd")], [b"abcd"]), "zstd"),
        compress(tar_bytes([regular("chunk_1.bin", b"abcd")], [b"abcd"]), "zstd"),
        b"not compressed at all",
    ],
    ids=["two-entries", "symlink", "traversal-name", "wrong-name", "garbage"],
)
def test_bad_tar_layers(embedded_pair: tuple[Party, Party], out: Path, layer: bytes) -> None:
    alice, bob = embedded_pair
    forge_as(alice).message(bob.name, b"abcd", layer_blobs=[layer])
    recv_refuses(bob, out, PROTOCOL)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_decompression_bombs(
    embedded_pair: tuple[Party, Party], out: Path, compression: str
) -> None:
    alice, bob = embedded_pair
    bomb = bomb_layer(compression)
    assert len(bomb) < 16 * 1024 * 1024  # small on the wire, 10 GiB expanded
    claimed = 16 * 1024 * 1024
    forge_as(alice).message(
        bob.name,
        b"",
        layer_blobs=[bomb],
        **{
            p.A_COMPRESSION: compression,
            p.A_TOTAL_BYTES: str(claimed),
            p.A_CHUNK_BYTES: str(claimed),
            p.A_CHUNK_COUNT: "1",
        },
    )
    rejection = recv_refuses(bob, out, PROTOCOL)
    assert rejection["error_type"] in ("LimitExceededError", "ChunkError")


def test_unknown_compression(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge_as(alice).message(bob.name, **{p.A_COMPRESSION: "brotli"})
    recv_refuses(bob, out, PROTOCOL)


def test_oversized_manifest(embedded_pair: tuple[Party, Party], out: Path) -> None:
    alice, bob = embedded_pair
    forge = forge_as(alice)
    # The embedded registry itself refuses manifests over 4 MiB, so plant one on
    # disk the way a compromised registry would serve it.
    forge.client.list_tags()  # creates the layout
    raw = m.build_message(forge.annotations(bob.name, 0, padding="p" * (5 * 1024 * 1024)), [])
    layout = Path(bob.repo.removeprefix("oci-layout:"))
    digest = p.sha256_digest(raw)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    tag = p.message_tag(bob.name, datetime.now(UTC), p.new_message_id(), p.new_message_id())
    index["manifests"].append(
        {
            "mediaType": p.OCI_MANIFEST,
            "digest": digest,
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    rejection = recv_refuses(bob, out, PROTOCOL)
    assert rejection["error_type"] == "LimitExceededError"


def test_oversized_bundle(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    huge = json.dumps({"padding": "q" * (2 * 1024 * 1024)}).encode()
    forge.message(bob.name, sign=lambda _: huge)
    rejection = recv_refuses(bob, out, PROTOCOL)
    assert rejection["error_type"] == "LimitExceededError"


def test_bad_message_does_not_block_good_ones(alice_bob: tuple[Party, Party], out: Path) -> None:
    alice, bob = alice_bob
    forge = forge_as(alice)
    forge.message(bob.name, **{p.A_FILENAME: "../escape"})
    good = out.parent / "good.txt"
    good.write_text("hello bob\n")
    alice.ok("send", str(good), "--recipient", bob.name)
    result = bob.cli("recv", "--out", str(out), "--json")
    assert result.code == PROTOCOL
    assert [f.name for f in out.iterdir()] == ["good.txt"]
    assert (out / "good.txt").read_text() == "hello bob\n"


def test_bundle_without_key_or_certificate(embedded_pair: tuple[Party, Party]) -> None:
    alice, bob = embedded_pair
    forge = forge_as(alice)
    digest = forge.message(bob.name, sign=lambda _: b'{"verificationMaterial": {}}')
    result = bob.cli("verify", "--digest", digest)
    assert result.code == VERIFICATION, result.err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), unmounted afterwards."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_full_disk_fails_cleanly_and_loses_nothing(
    embedded_pair: tuple[Party, Party], small_disk: Path, tmp_path: Path
) -> None:
    """The space is reserved before any chunk downloads; the message stays pending."""
    alice, bob = embedded_pair
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    alice.ok("send", str(big), "--recipient", bob.name)

    full = bob.cli("recv", "--out", str(small_disk), "--json")

    assert full.code == 1, full.out + full.err
    (outcome,) = json.loads(full.out)
    assert outcome["status"] == "deferred"
    assert "No space left on device" in outcome["error"]
    assert list(small_disk.iterdir()) == []  # no partial file, no hidden temp file
    roomy = tmp_path / "roomy"
    later = bob.cli("recv", "--out", str(roomy), "--json")
    assert later.code == 0, later.out + later.err
    assert (roomy / "big.bin").read_bytes() == big.read_bytes()


def _attestation(digest: str, **changes: object) -> dict[str, object]:
    statement: dict[str, object] = {
        "_type": p.IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": digest, "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": p.COSIGN_PREDICATE_TYPE,
        "predicate": {},
    }
    return statement | changes


@pytest.mark.parametrize(
    "changes",
    [
        {"predicateType": "https://slsa.dev/provenance/v1"},
        {"subject": "two"},
    ],
    ids=["provenance-attestation", "two-subjects"],
)
def test_other_statements_by_a_trusted_key_are_no_message_signature(
    alice_bob: tuple[Party, Party], out: Path, changes: dict[str, object]
) -> None:
    """SPEC 3: only a cosign sign/v1 statement naming the manifest digest alone counts."""
    alice, bob = alice_bob
    key_file = alice.workspace().paths.key_file

    def sign(digest: str) -> bytes:
        statement = _attestation(digest, **changes)
        if changes.get("subject") == "two":
            other = p.sha256_digest(b"another artifact")
            statement["subject"] = [
                {"name": digest, "digest": {"sha256": digest.split(":")[1]}},
                {"name": other, "digest": {"sha256": other.split(":")[1]}},
            ]
        return key_signed_statement(key_file, statement)

    forge_as(alice).message(bob.name, sign=sign)
    rejection = recv_refuses(bob, out, VERIFICATION)
    assert rejection["error_type"] == "SignatureError"
