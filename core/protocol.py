"""DockerComms v1 wire constants and the pure functions that name things.

Everything here is exact strings from ``SPEC.md`` sections 1-4; no I/O. Manifest
building and validation live in :mod:`dockercomms.core._internal.manifest`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Final

PROTOCOL_VERSION: Final = "1.0"

# Media and artifact types (SPEC 1-4).
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG_BYTES: Final = b"{}"
EMPTY_CONFIG_DIGEST: Final = (
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)
EMPTY_CONFIG_DESCRIPTOR: Final[dict[str, object]] = {
    "mediaType": OCI_EMPTY,
    "digest": EMPTY_CONFIG_DIGEST,
    "size": 2,
}
MESSAGE_ARTIFACT_TYPE: Final = "application/vnd.dockercomms.message.v1"
RECEIPT_ARTIFACT_TYPE: Final = "application/vnd.dockercomms.receipt.v1"
BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
CHUNK_MEDIA_TYPES: Final[dict[str, str]] = {
    "gzip": "application/vnd.dockercomms.chunk.v1.tar+gzip",
    "zstd": "application/vnd.dockercomms.chunk.v1.tar+zstd",
}
COMPRESSIONS: Final = tuple(CHUNK_MEDIA_TYPES)

# Annotation keys (SPEC 2 and 4).
A_VERSION: Final = "dockercomms.version"
A_SENDER: Final = "dockercomms.sender"
A_RECIPIENT: Final = "dockercomms.recipient"
A_CREATED_AT: Final = "dockercomms.created_at"
A_TTL: Final = "dockercomms.ttl_seconds"
A_MESSAGE_ID: Final = "dockercomms.message.id"
A_FILENAME: Final = "dockercomms.filename"
A_TOTAL_BYTES: Final = "dockercomms.total_bytes"
A_CHUNK_BYTES: Final = "dockercomms.chunk_bytes"
A_CHUNK_COUNT: Final = "dockercomms.chunk_count"
A_COMPRESSION: Final = "dockercomms.compression"
A_CHUNK_INDEX: Final = "dockercomms.chunk.index"
A_RECEIPT_FOR: Final = "dockercomms.receipt.for"
A_RECEIPT_STATUS: Final = "dockercomms.receipt.status"
A_RECEIPT_VERIFIED: Final = "dockercomms.receipt.verified"
A_RECEIPT_REASON: Final = "dockercomms.receipt.reason"

DEFAULT_TTL_SECONDS: Final = 604800
RECEIPT_STATUSES: Final = ("accepted", "rejected")

# Signature statement (SPEC 3).
DSSE_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
COSIGN_PREDICATE_TYPE: Final = "https://sigstore.dev/cosign/sign/v1"

TAG_PATTERN: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_PATTERN: Final = re.compile(r"^sha256:[0-9a-f]{64}$")


def recipient_tag(recipient: str) -> str:
    """``rt``: lowercase unpadded base32hex of sha256(recipient), first 26 chars."""
    digest = hashlib.sha256(recipient.encode("utf-8")).digest()
    encoded = base64.b32hexencode(digest).decode("ascii")
    return encoded.rstrip("=").lower()[:26]


def inbox_prefix(recipient: str) -> str:
    """The tag prefix under which messages to ``recipient`` are listed."""
    return f"inbox-{recipient_tag(recipient)}-"


def check_tag(tag: str) -> str:
    """Return ``tag`` if it matches the OCI tag grammar, else raise ``ValueError``.

    Called before every push: a bad tag is our bug, never the user's input.
    """
    if not TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"invalid OCI tag {tag!r}")
    return tag


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed lowercase sha256 digest."""
    if not DIGEST_PATTERN.fullmatch(digest):
        from dockercomms.core.errors import ManifestError

        raise ManifestError(f"not a sha256 digest: {digest[:80]!r}")
    return digest


def message_tag(recipient: str, sent_at: datetime, session_id: str, message_id: str) -> str:
    """``inbox-<rt>-<YYYYMMDD>-<sid8>-<mid8>`` for a message."""
    sid8 = session_id.replace("-", "")[:8]
    mid8 = message_id.replace("-", "")[:8]
    day = sent_at.astimezone(UTC).strftime("%Y%m%d")
    return check_tag(f"inbox-{recipient_tag(recipient)}-{day}-{sid8}-{mid8}")


def _suffix_tag(kind: str, subject_digest: str, now: datetime | None) -> str:
    hex12 = subject_digest.split(":", 1)[1][:12]
    unix = int((now or datetime.now(UTC)).timestamp())
    return check_tag(f"{kind}-{hex12}-{unix}-{secrets.token_hex(3)}")


def bundle_tag(subject_digest: str, now: datetime | None = None) -> str:
    """``bundle-<hex12>-<unix>-<rand6>`` for a signature bundle manifest."""
    return _suffix_tag("bundle", subject_digest, now)


def receipt_tag(subject_digest: str, now: datetime | None = None) -> str:
    """``receipt-<hex12>-<unix>-<rand6>`` for a receipt manifest."""
    return _suffix_tag("receipt", subject_digest, now)


def bundle_tag_prefix(subject_digest: str) -> str:
    """Prefix of every ``bundle-`` tag for a subject (last-resort discovery)."""
    return f"bundle-{subject_digest.split(':', 1)[1][:12]}-"


def referrers_fallback_tag(subject_digest: str) -> str:
    """OCI 1.1 tag-schema fallback: ``sha256-<64 hex>`` holds an index of referrers."""
    algorithm, hex_digest = subject_digest.split(":", 1)
    return check_tag(f"{algorithm}-{hex_digest}")


def new_message_id() -> str:
    """A fresh lowercase UUIDv4."""
    return str(uuid.uuid4())


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with seconds and ``Z`` (``2026-11-23T09:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    """Parse the RFC 3339 ``Z`` form we and the other tool write."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", text):
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
