"""Building hostile artifacts on purpose: the attacker's toolkit for the tests.

Everything goes through the real registry client, so a forged message sits in
the repository exactly as a malicious or broken sender would leave it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.chunking import ChunkSpan, layer_stream
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.send import DigestSigner
from dockercomms.core._internal.signatures import attach_bundle, attach_referrer, push_empty_config


def compress(data: bytes, compression: str) -> bytes:
    """Compress ``data`` as a chunk layer would be."""
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def tar_bytes(entries: list[tarfile.TarInfo], payloads: list[bytes]) -> bytes:
    """A tar archive with arbitrary entries (symlinks, several files...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in zip(entries, payloads, strict=True):
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tarfile.TarInfo:
    """A regular-file tar entry."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info


def honest_layer(data: bytes, index: int, compression: str) -> bytes:
    """The layer our own sender would produce for ``data`` at ``index``."""
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        span = ChunkSpan(index, 0, len(data))
        return b"".join(layer_stream(handle.fileno(), span, compression))


def bomb_layer(compression: str, *, expanded: int = 10 * 1024**3) -> bytes:
    """A small layer that decompresses to ``expanded`` bytes.

    A PAX header claiming a huge record is followed by non-zero bytes, so a tar
    reader without an output cap would try to buffer all of it.
    """
    piece_size = 16 * 1024 * 1024
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = expanded
    head = header.tobuf(format=tarfile.GNU_FORMAT)
    piece = compress(b"a" * piece_size, compression)
    repeats = expanded // piece_size
    return compress(head, compression) + piece * repeats


@dataclass
class Forge:
    """Pushes hand-made messages as ``sender`` (signing with ``signer``)."""

    client: RegistryClient
    signer: DigestSigner
    sender: str
    layers: list[m.Descriptor] = field(default_factory=list)

    def layer(self, blob: bytes, index: int, compression: str = "zstd") -> m.Descriptor:
        """Upload a chunk blob and describe it as chunk ``index``."""
        pushed = self.client.push_blob_bytes(blob, p.CHUNK_MEDIA_TYPES[compression])
        return m.Descriptor(
            pushed.media_type, pushed.digest, pushed.size, {p.A_CHUNK_INDEX: str(index)}
        )

    def annotations(self, recipient: str, data_size: int, **overrides: str) -> dict[str, str]:
        """Valid annotations for a one-chunk message of ``data_size`` bytes, then overrides."""
        annotations = m.message_annotations(
            sender=self.sender,
            recipient=recipient,
            created_at=datetime.now(UTC),
            ttl_seconds=p.DEFAULT_TTL_SECONDS,
            message_id=p.new_message_id(),
            filename="forged.bin",
            total_bytes=data_size,
            chunk_bytes=max(data_size, 1),
            chunk_count=1 if data_size else 0,
            compression="zstd",
        )
        annotations.update(overrides)
        return annotations

    def push(
        self,
        raw: bytes,
        recipient: str,
        *,
        sign: Callable[[str], bytes] | None = None,
        tag: str | None = None,
    ) -> str:
        """Push manifest bytes, attach a bundle (ours unless ``sign``), tag for ``recipient``."""
        push_empty_config(self.client)
        pushed = self.client.push_manifest(raw)
        bundle = (sign or self.signer.sign_digest)(pushed.digest)
        attach_bundle(self.client, m.Descriptor(p.OCI_MANIFEST, pushed.digest, len(raw)), bundle)
        tag = tag or p.message_tag(
            recipient, datetime.now(UTC), p.new_message_id(), p.new_message_id()
        )
        self.client.push_manifest(raw, tag)
        return pushed.digest

    def message(
        self,
        recipient: str,
        data: bytes = b"forged payload\n",
        *,
        layer_blobs: list[bytes] | None = None,
        layer_indices: list[int] | None = None,
        sign: Callable[[str], bytes] | None = None,
        **overrides: str,
    ) -> str:
        """A one-chunk message with optional bad layers/annotations; returns its digest."""
        blobs = layer_blobs if layer_blobs is not None else [honest_layer(data, 0, "zstd")]
        indices = layer_indices if layer_indices is not None else list(range(len(blobs)))
        compression = overrides.get(p.A_COMPRESSION, "zstd")
        compression = compression if compression in p.CHUNK_MEDIA_TYPES else "zstd"
        layers = [self.layer(b, i, compression) for b, i in zip(blobs, indices, strict=True)]
        raw = m.build_message(self.annotations(recipient, len(data), **overrides), layers)
        return self.push(raw, recipient, sign=sign)


def tamper_blob_on_disk(storage: Path, digest: str) -> None:
    """Flip a byte of a stored blob, as a compromised registry would (same size)."""
    hex_digest = digest.split(":", 1)[1]
    candidates = [
        storage / "blobs" / "sha256" / hex_digest,
        storage
        / "docker"
        / "registry"
        / "v2"
        / "blobs"
        / "sha256"
        / hex_digest[:2]
        / hex_digest
        / "data",
    ]
    for path in candidates:
        if path.exists():
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            os.chmod(path, 0o644)
            path.write_bytes(bytes(data))
            return
    raise FileNotFoundError(f"blob {digest} not found under {storage}")


# --- the #13 receive-hardening toolkit: decoys, hostile JSON, crowds of junk bundles ----


def push_unsigned(client: RegistryClient, raw: bytes, tag: str) -> str:
    """Push manifest bytes under ``tag`` with no signature at all, as any pusher can."""
    push_empty_config(client)
    return client.push_manifest(raw, tag).digest


def nested_member(raw: bytes, depth: int) -> bytes:
    """JSON object ``raw`` with one more member, ``depth`` arrays deep (a parser's stack)."""
    return b'{"nested":' + b"[" * depth + b"]" * depth + b"," + raw[1:]


def sorting_first_tag(recipient: str, message_id: str) -> str:
    """An inbox tag for ``recipient`` that sorts before any real one (dated 1999)."""
    return p.check_tag(
        f"inbox-{p.recipient_tag(recipient)}-19990101-00000000-{message_id.replace('-', '')[:8]}"
    )


def crowd_bundles(client: RegistryClient, subject: m.Descriptor, junk: bytes, count: int) -> str:
    """Attach ``count`` distinct bundle manifests to ``subject``, all naming one junk blob.

    Returns the digest of the first, so a test can also list it over and over in
    the fallback index.
    """
    push_empty_config(client)
    blob = client.push_blob_bytes(junk, p.BUNDLE_MEDIA_TYPE)
    first = ""
    for n in range(count):
        raw = m.dump(
            {
                "schemaVersion": 2,
                "mediaType": p.OCI_MANIFEST,
                "artifactType": p.BUNDLE_MEDIA_TYPE,
                "config": dict(p.EMPTY_CONFIG_DESCRIPTOR),
                "layers": [blob.to_json()],
                "subject": subject.to_json(),
                "annotations": {p.A_VERSION: p.PROTOCOL_VERSION, "junk": str(n)},
            }
        )
        digest = attach_referrer(
            client,
            raw,
            p.bundle_tag(subject.digest),
            artifact_type=p.BUNDLE_MEDIA_TYPE,
            annotations={p.A_VERSION: p.PROTOCOL_VERSION},
            subject=subject.digest,
        )
        first = first or digest
    return first


def repeat_in_fallback_index(
    client: RegistryClient, subject_digest: str, manifest_digest: str, times: int
) -> None:
    """Rewrite the ``sha256-<hex>`` index to list one bundle manifest ``times`` times."""
    raw, _ = client.fetch_manifest(manifest_digest)
    entry = m.Descriptor(
        p.OCI_MANIFEST, manifest_digest, len(raw), {}, artifact_type=p.BUNDLE_MEDIA_TYPE
    )
    client.push_manifest(
        m.build_referrers_index([entry] * times),
        p.referrers_fallback_tag(subject_digest),
        media_type=p.OCI_INDEX,
    )


def key_signed_statement(key_file: Path, statement: dict[str, object]) -> bytes:
    """A key-pair bundle over any in-toto statement (an attestation, two subjects...)."""
    import base64
    import json

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from dockercomms.core._internal.signing.keypair import key_hint, load_private_key
    from dockercomms.core._internal.signing.statement import pae

    key = load_private_key(key_file)
    payload = json.dumps(statement, separators=(",", ":")).encode()
    signature = key.sign(pae(p.DSSE_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": p.BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(key.public_key())}},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": p.DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(bundle).encode()


def plant_in_layout(layout: Path, raw: bytes, tag: str) -> str:
    """Tag manifest bytes straight into an OCI layout, as a compromised registry serves them.

    For documents the embedded registry would refuse on push (too big, too deep).
    """
    import json

    digest = p.sha256_digest(raw)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": p.OCI_MANIFEST,
            "digest": digest,
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))


def forge_bundle(client: RegistryClient, subject: m.Descriptor, blob: m.Descriptor) -> str:
    """A "bundle" claiming to sign ``subject`` whose one layer is any stored blob.

    Pushed with a ``bundle-`` tag (and fallback index where needed) exactly as a
    real bundle is, so discovery finds it; nothing about it verifies.
    """
    push_empty_config(client)
    layer = m.Descriptor(p.BUNDLE_MEDIA_TYPE, blob.digest, blob.size)
    return attach_referrer(
        client,
        m.build_bundle_manifest(subject, layer),
        p.bundle_tag(subject.digest),
        artifact_type=p.BUNDLE_MEDIA_TYPE,
        annotations={p.A_VERSION: p.PROTOCOL_VERSION},
        subject=subject.digest,
    )


def plant_manifest(client: RegistryClient, storage: Path | None, raw: bytes, tag: str) -> str:
    """Put any manifest bytes under ``tag``; returns their digest.

    With ``storage`` (an OCI layout directory) the bytes are written straight to
    disk and listed in ``index.json``, as a tampered disk or a copy tool would leave
    them: for what the embedded store itself refuses to take (JSON nested 5,000
    deep). Without it they are pushed, for registries that take them.
    """
    if storage is None:
        return client.push_manifest(raw, tag).digest
    digest = p.sha256_digest(raw)
    (storage / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(raw)
    index_path = storage / "index.json"
    index = json.loads(index_path.read_bytes())
    ref_name = {"org.opencontainers.image.ref.name": tag}
    index["manifests"].append(
        {"mediaType": p.OCI_MANIFEST, "digest": digest, "size": len(raw), "annotations": ref_name}
    )
    index_path.write_text(json.dumps(index))
    return digest
