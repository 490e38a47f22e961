"""Building and validating DockerComms manifests (SPEC 1-5).

Building produces the exact bytes we push (compact JSON), so the digest we sign is
the digest of those bytes. Validation is SPEC 5 step 3: every field an artifact
claims is checked before anything it points to is fetched.

Caveats first: every document parsed here is untrusted. Its JSON is size- and
depth-bounded (:mod:`dockercomms.core.untrusted`), and every date and number is
range-checked before any arithmetic: ``created_at`` lies in
[``EARLIEST_CREATED_AT``, ``LATEST_CREATED_AT``) and ``ttl_seconds`` is at most
``MAX_TTL_SECONDS``, so ``created_at + ttl`` (and a clock skew either side) can
never overflow a ``datetime``.

A sealed message (SPEC 9) is told apart here, at step 3, by
``dockercomms.encryption`` = ``age`` alone: only then are the ``+age`` layer media
types accepted, and the file name must be the neutral ``<mid8>.sealed`` and the
``sealed`` annotation present and no longer than its chunk count allows. Nothing
is decrypted here; :class:`Message` carries ``sealed`` facts only once
``receive`` opened them after steps 4-7.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dockercomms.core import protocol, untrusted
from dockercomms.core._internal.limits import DEFAULT_LIMITS, Limits, check_filename
from dockercomms.core._internal.sealed_message import (
    A_ENCRYPTION,
    A_SEALED,
    ENCRYPTION_AGE,
    SEALED_CHUNK_MEDIA_TYPES,
    SealedFacts,
    max_annotation_chars,
    neutral_filename,
)
from dockercomms.core._internal.sealing import MAX_HEADER_BYTES, sealed_length
from dockercomms.core.errors import LimitExceededError, ManifestError

_UINT = re.compile(r"^(0|[1-9][0-9]{0,19})$")
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# Compressed random data can be slightly larger than its input; allow for that.
_LAYER_OVERHEAD = 64 * 1024
#: Longest time to live a message or receipt may claim: ten years.
MAX_TTL_SECONDS = 10 * 366 * 24 * 3600
#: Dates a manifest may claim. Far from ``datetime``'s own limits (years 1 and
#: 9999), so adding a TTL or a clock skew never overflows.
EARLIEST_CREATED_AT = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_CREATED_AT = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as OCI JSON (optional fields only when set)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Message:
    """A validated message manifest: what it claims, not yet whether it is true.

    Attributes:
        digest: sha256 of the exact manifest bytes (what the signature covers).
        size: length of the manifest bytes.
        tag: the ``inbox-`` tag it was listed under, if any.
        chunks: layer descriptors ordered by chunk index.
        encrypted: sealed with age (SPEC 9): the layers are age files and
            ``filename`` is the neutral name until the ``sealed`` annotation is opened.
        sealed: the opened ``sealed`` annotation (set only after SPEC 5 steps 1-7,
            by ``receive``); then ``filename`` is the real name it holds.
    """

    digest: str
    size: int
    tag: str | None
    sender: str
    recipient: str
    created_at: datetime
    ttl_seconds: int
    message_id: str
    filename: str
    total_bytes: int
    chunk_bytes: int
    chunk_count: int
    compression: str
    chunks: tuple[Descriptor, ...]
    annotations: dict[str, str]
    encrypted: bool = False
    sealed: SealedFacts | None = None

    @property
    def expires_at(self) -> datetime:
        """When the sender said the message stops being valid."""
        return self.created_at + timedelta(seconds=self.ttl_seconds)

    @property
    def descriptor(self) -> Descriptor:
        """The descriptor receipts and bundles use as their ``subject``."""
        return Descriptor(protocol.OCI_MANIFEST, self.digest, self.size, artifact_type=None)


@dataclass(frozen=True)
class Receipt:
    """A validated receipt manifest."""

    digest: str
    subject_digest: str
    sender: str
    recipient: str
    created_at: datetime
    status: str
    verified: bool
    reason: str | None


def dump(manifest: dict[str, Any]) -> bytes:
    """The bytes we push for a manifest: compact, key order as built."""
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def message_annotations(
    *,
    sender: str,
    recipient: str,
    created_at: datetime,
    ttl_seconds: int,
    message_id: str,
    filename: str,
    total_bytes: int,
    chunk_bytes: int,
    chunk_count: int,
    compression: str,
) -> dict[str, str]:
    """The eleven required message annotations, all strings (SPEC 2)."""
    return {
        protocol.A_VERSION: protocol.PROTOCOL_VERSION,
        protocol.A_SENDER: sender,
        protocol.A_RECIPIENT: recipient,
        protocol.A_CREATED_AT: protocol.format_timestamp(created_at),
        protocol.A_TTL: str(ttl_seconds),
        protocol.A_MESSAGE_ID: message_id,
        protocol.A_FILENAME: filename,
        protocol.A_TOTAL_BYTES: str(total_bytes),
        protocol.A_CHUNK_BYTES: str(min(chunk_bytes, total_bytes)),
        protocol.A_CHUNK_COUNT: str(chunk_count),
        protocol.A_COMPRESSION: compression,
    }


def build_message(annotations: dict[str, str], layers: list[Descriptor]) -> bytes:
    """Message manifest bytes; ``layers`` must be in chunk-index order."""
    return dump(
        {
            "schemaVersion": 2,
            "mediaType": protocol.OCI_MANIFEST,
            "artifactType": protocol.MESSAGE_ARTIFACT_TYPE,
            "config": dict(protocol.EMPTY_CONFIG_DESCRIPTOR),
            "layers": [layer.to_json() for layer in layers],
            "annotations": annotations,
        }
    )


def build_bundle_manifest(subject: Descriptor, bundle_blob: Descriptor) -> bytes:
    """Manifest that attaches a signature bundle blob to ``subject`` (SPEC 3)."""
    return dump(
        {
            "schemaVersion": 2,
            "mediaType": protocol.OCI_MANIFEST,
            "artifactType": protocol.BUNDLE_MEDIA_TYPE,
            "config": dict(protocol.EMPTY_CONFIG_DESCRIPTOR),
            "layers": [bundle_blob.to_json()],
            "subject": subject.to_json(),
            "annotations": {protocol.A_VERSION: protocol.PROTOCOL_VERSION},
        }
    )


def build_receipt(subject: Descriptor, annotations: dict[str, str]) -> bytes:
    """Receipt manifest bytes (SPEC 4): no layers, ``subject`` = the message."""
    return dump(
        {
            "schemaVersion": 2,
            "mediaType": protocol.OCI_MANIFEST,
            "artifactType": protocol.RECEIPT_ARTIFACT_TYPE,
            "config": dict(protocol.EMPTY_CONFIG_DESCRIPTOR),
            "layers": [],
            "subject": subject.to_json(),
            "annotations": annotations,
        }
    )


def build_referrers_index(descriptors: list[Descriptor]) -> bytes:
    """The ``sha256-<hex>`` fallback index listing the referrers of a subject."""
    return dump(
        {
            "schemaVersion": 2,
            "mediaType": protocol.OCI_INDEX,
            "manifests": [d.to_json() for d in descriptors],
        }
    )


# --- parsing ---------------------------------------------------------------------------


def parse_json(
    raw: bytes, what: str, *, max_bytes: int = DEFAULT_LIMITS.max_manifest_bytes
) -> dict[str, Any]:
    """Parse untrusted manifest/index JSON into a dict, bounded in size and depth.

    Raises ``ManifestError`` (not JSON, not an object) or ``LimitExceededError``
    (too large, nested too deeply); never anything else.
    """
    return untrusted.parse_json_object(raw, what, max_bytes=max_bytes)


def parse_descriptor(value: object, what: str) -> Descriptor:
    """Validate one descriptor object."""
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{what} has no mediaType")
    if not isinstance(digest, str) or not protocol.DIGEST_PATTERN.fullmatch(digest):
        raise ManifestError(f"{what} has an invalid digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what} has an invalid size")
    annotations = value.get("annotations") or {}
    artifact_type = value.get("artifactType")
    return Descriptor(
        media_type,
        digest,
        size,
        _string_map(annotations, f"{what} annotations"),
        artifact_type if isinstance(artifact_type, str) else None,
    )


def _string_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{what} must map strings to strings")
    return dict(value)


def _check_envelope(doc: dict[str, Any], artifact_type: str, what: str) -> None:
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion must be 2")
    media_type = doc.get("mediaType")
    if media_type is not None and media_type != protocol.OCI_MANIFEST:
        raise ManifestError(f"{what}: unexpected mediaType {media_type!r}")
    if doc.get("artifactType") != artifact_type:
        raise ManifestError(f"{what}: artifactType is {doc.get('artifactType')!r}")
    config = parse_descriptor(doc.get("config"), f"{what} config")
    if (config.media_type, config.digest, config.size) != (
        protocol.OCI_EMPTY,
        protocol.EMPTY_CONFIG_DIGEST,
        2,
    ):
        raise ManifestError(f"{what}: config must be the empty descriptor")


def _uint(annotations: dict[str, str], key: str) -> int:
    text = annotations[key]
    if not _UINT.fullmatch(text):
        raise ManifestError(f"annotation {key} is not a non-negative integer: {text[:40]!r}")
    return int(text)


def _required(annotations: dict[str, str], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in annotations]
    if missing:
        raise ManifestError(f"missing annotations: {', '.join(missing)}")
    if annotations[protocol.A_VERSION] != protocol.PROTOCOL_VERSION:
        raise ManifestError(f"unsupported protocol version {annotations[protocol.A_VERSION]!r}")


def _timestamp(annotations: dict[str, str], key: str) -> datetime:
    try:
        moment = protocol.parse_timestamp(annotations[key])
    except ValueError as exc:
        raise ManifestError(f"annotation {key}: {exc}") from exc
    if not EARLIEST_CREATED_AT <= moment < LATEST_CREATED_AT:
        raise ManifestError(
            f"annotation {key} {annotations[key][:40]!r} is not between "
            f"{EARLIEST_CREATED_AT.year} and {LATEST_CREATED_AT.year}"
        )
    return moment


def _ttl(annotations: dict[str, str]) -> int:
    ttl = _uint(annotations, protocol.A_TTL)
    if ttl > MAX_TTL_SECONDS:
        raise LimitExceededError(f"ttl_seconds {ttl} exceeds {MAX_TTL_SECONDS}")
    return ttl


_MESSAGE_KEYS = (
    protocol.A_VERSION,
    protocol.A_SENDER,
    protocol.A_RECIPIENT,
    protocol.A_CREATED_AT,
    protocol.A_TTL,
    protocol.A_MESSAGE_ID,
    protocol.A_FILENAME,
    protocol.A_TOTAL_BYTES,
    protocol.A_CHUNK_BYTES,
    protocol.A_CHUNK_COUNT,
    protocol.A_COMPRESSION,
)


def parse_message(
    raw: bytes,
    digest: str,
    *,
    tag: str | None = None,
    me: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Message:
    """Validate a message manifest (SPEC 5 step 3) and return what it claims.

    ``me`` (when given) must be the recipient exactly, and the tag's recipient
    tag must be the one derived from the recipient annotation.
    """
    doc = parse_json(raw, "message manifest", max_bytes=limits.max_manifest_bytes)
    _check_envelope(doc, protocol.MESSAGE_ARTIFACT_TYPE, "message manifest")
    ann = _string_map(doc.get("annotations"), "message annotations")
    _required(ann, _MESSAGE_KEYS)
    sender, recipient = ann[protocol.A_SENDER], ann[protocol.A_RECIPIENT]
    if not sender:
        raise ManifestError("empty sender")
    if me is not None and recipient != me:
        raise ManifestError(f"message is addressed to {recipient!r}, not to {me!r}")
    if tag is not None and tag.startswith("inbox-"):
        rt = tag.split("-")[1] if tag.count("-") >= 1 else ""
        if rt != protocol.recipient_tag(recipient):
            raise ManifestError(f"tag {tag!r} does not carry the recipient tag of {recipient!r}")
    filename = ann[protocol.A_FILENAME]
    check_filename(filename, limits)
    message_id = ann[protocol.A_MESSAGE_ID]
    if not _UUID4.fullmatch(message_id):
        raise ManifestError(f"message id is not a lowercase UUIDv4: {message_id[:40]!r}")
    compression = ann[protocol.A_COMPRESSION]
    if compression not in protocol.CHUNK_MEDIA_TYPES:
        raise ManifestError(f"unknown compression {compression[:40]!r}")
    total = _uint(ann, protocol.A_TOTAL_BYTES)
    chunk_bytes = _uint(ann, protocol.A_CHUNK_BYTES)
    count = _uint(ann, protocol.A_CHUNK_COUNT)
    encrypted = _encryption(ann, message_id, count, limits)
    ttl = _ttl(ann)
    created_at = _timestamp(ann, protocol.A_CREATED_AT)
    if total > limits.max_total_bytes:
        raise LimitExceededError(f"total_bytes {total} exceeds {limits.max_total_bytes}")
    if count > limits.max_chunks:
        raise LimitExceededError(f"chunk_count {count} exceeds {limits.max_chunks}")
    _check_chunk_geometry(total, chunk_bytes, count)
    chunks = _ordered_chunks(doc.get("layers"), count, chunk_bytes, compression, encrypted)
    return Message(
        digest=digest,
        size=len(raw),
        tag=tag,
        sender=sender,
        recipient=recipient,
        created_at=created_at,
        ttl_seconds=ttl,
        message_id=message_id,
        filename=filename,
        total_bytes=total,
        chunk_bytes=chunk_bytes,
        chunk_count=count,
        compression=compression,
        chunks=chunks,
        annotations=ann,
        encrypted=encrypted,
    )


def _encryption(ann: dict[str, str], message_id: str, count: int, limits: Limits) -> bool:
    """Whether the message is sealed (SPEC 9), after checking what sealing requires.

    ``count`` is not yet checked against the limits: the annotation's bound uses
    at most ``limits.max_chunks``.
    """
    encryption = ann.get(A_ENCRYPTION)
    if encryption is None:
        if A_SEALED in ann:
            raise ManifestError(f"a plaintext message carries a {A_SEALED} annotation")
        return False
    if encryption != ENCRYPTION_AGE:
        raise ManifestError(f"unknown encryption {encryption[:40]!r}")
    sealed = ann.get(A_SEALED)
    if sealed is None:
        raise ManifestError(f"a sealed message has no {A_SEALED} annotation")
    longest = max_annotation_chars(min(count, limits.max_chunks), limits)
    if len(sealed) > longest:
        raise LimitExceededError(
            f"annotation {A_SEALED} is {len(sealed)} characters, more than {longest}"
        )
    neutral = neutral_filename(message_id)
    if ann[protocol.A_FILENAME] != neutral:
        raise ManifestError(
            f"a sealed message must carry the neutral file name {neutral!r}, "
            f"not {ann[protocol.A_FILENAME][:40]!r}"
        )
    return True


def _check_chunk_geometry(total: int, chunk_bytes: int, count: int) -> None:
    if total == 0:
        if count != 0:
            raise ManifestError("a 0-byte message must have no chunks")
        return
    if chunk_bytes == 0 or chunk_bytes > total:
        raise ManifestError(f"chunk_bytes {chunk_bytes} is invalid for total_bytes {total}")
    expected = -(-total // chunk_bytes)
    if count != expected:
        raise ManifestError(
            f"chunk_count {count} does not match total_bytes {total} / chunk_bytes {chunk_bytes}"
        )


def _ordered_chunks(
    layers: object, count: int, chunk_bytes: int, compression: str, encrypted: bool
) -> tuple[Descriptor, ...]:
    if layers is None:
        layers = []
    if not isinstance(layers, list):
        raise ManifestError("layers must be a list")
    if len(layers) != count:
        raise ManifestError(f"manifest has {len(layers)} layers, chunk_count says {count}")
    if encrypted:
        media_type = SEALED_CHUNK_MEDIA_TYPES[compression]
        # age adds a header, a nonce and a tag per 64 KiB block to the compressed tar.
        largest = sealed_length(_largest_layer(chunk_bytes), MAX_HEADER_BYTES)
    else:
        media_type = protocol.CHUNK_MEDIA_TYPES[compression]
        largest = _largest_layer(chunk_bytes)
    by_index: dict[int, Descriptor] = {}
    for position, value in enumerate(layers):
        layer = parse_descriptor(value, f"layer {position}")
        if layer.media_type != media_type:
            raise ManifestError(
                f"layer {position} media type {layer.media_type!r} does not match {compression}"
            )
        index_text = layer.annotations.get(protocol.A_CHUNK_INDEX, "")
        if not _UINT.fullmatch(index_text):
            raise ManifestError(f"layer {position} has no valid chunk index")
        index = int(index_text)
        if index >= count or index in by_index:
            raise ManifestError(f"layer {position}: chunk index {index} repeated or out of range")
        if layer.size > largest:
            raise LimitExceededError(f"layer {position} is {layer.size} bytes, too large")
        by_index[index] = layer
    return tuple(by_index[i] for i in range(count))


def _largest_layer(chunk_bytes: int) -> int:
    """Largest compressed tar a chunk of ``chunk_bytes`` may be."""
    return chunk_bytes + chunk_bytes // 64 + _LAYER_OVERHEAD


_RECEIPT_KEYS = (
    protocol.A_VERSION,
    protocol.A_SENDER,
    protocol.A_RECIPIENT,
    protocol.A_CREATED_AT,
    protocol.A_TTL,
    protocol.A_RECEIPT_FOR,
    protocol.A_RECEIPT_STATUS,
    protocol.A_RECEIPT_VERIFIED,
)


def parse_receipt(raw: bytes, digest: str) -> Receipt:
    """Validate a receipt manifest (SPEC 4); ``"layers": null`` is accepted."""
    doc = parse_json(raw, "receipt manifest")
    _check_envelope(doc, protocol.RECEIPT_ARTIFACT_TYPE, "receipt manifest")
    layers = doc.get("layers")
    if layers not in (None, []):
        raise ManifestError("a receipt has no layers")
    subject = parse_descriptor(doc.get("subject"), "receipt subject")
    ann = _string_map(doc.get("annotations"), "receipt annotations")
    _required(ann, _RECEIPT_KEYS)
    if ann[protocol.A_RECEIPT_FOR] != subject.digest:
        raise ManifestError("receipt.for does not match the receipt subject")
    status = ann[protocol.A_RECEIPT_STATUS]
    if status not in protocol.RECEIPT_STATUSES:
        raise ManifestError(f"unknown receipt status {status[:40]!r}")
    verified = ann[protocol.A_RECEIPT_VERIFIED]
    if verified not in ("true", "false"):
        raise ManifestError("receipt.verified must be 'true' or 'false'")
    _ttl(ann)  # not kept, but a receipt claiming an absurd one is not ours
    return Receipt(
        digest=digest,
        subject_digest=subject.digest,
        sender=ann[protocol.A_SENDER],
        recipient=ann[protocol.A_RECIPIENT],
        created_at=_timestamp(ann, protocol.A_CREATED_AT),
        status=status,
        verified=verified == "true",
        reason=ann.get(protocol.A_RECEIPT_REASON),
    )


def bundle_layer(raw: bytes) -> tuple[Descriptor, Descriptor | None]:
    """From a bundle manifest: its single bundle blob layer and its subject."""
    doc = parse_json(raw, "bundle manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise ManifestError("a bundle manifest has exactly one layer")
    layer = parse_descriptor(layers[0], "bundle layer")
    if layer.media_type != protocol.BUNDLE_MEDIA_TYPE:
        raise ManifestError(f"bundle layer media type is {layer.media_type!r}")
    subject = doc.get("subject")
    return layer, parse_descriptor(subject, "bundle subject") if subject is not None else None


def parse_index(raw: bytes) -> list[Descriptor]:
    """The descriptors listed by an OCI image index (referrers or fallback tag)."""
    doc = parse_json(raw, "index")
    manifests = doc.get("manifests") or []
    if not isinstance(manifests, list):
        raise ManifestError("index manifests must be a list")
    return [parse_descriptor(m, f"index entry {i}") for i, m in enumerate(manifests)]
