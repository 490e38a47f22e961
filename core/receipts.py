"""Signed receipts (SPEC 4): "I got your message, and this is what I made of it".

A receipt is an empty-layer manifest whose ``subject`` is the message, pushed
untagged, signed like a message, and only then tagged ``receipt-<hex12>-...``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from dockercomms.core import manifest as m
from dockercomms.core import protocol as p
from dockercomms.core.errors import DockerCommsError, ManifestError
from dockercomms.core.registry.client import RegistryClient
from dockercomms.core.send import DigestSigner
from dockercomms.core.signatures import (
    DiscoveryMode,
    attach_bundle,
    attach_referrer,
    find_referrers,
    push_empty_config,
)

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 1024


@dataclass(frozen=True)
class SentReceipt:
    """What ``ack`` pushed."""

    digest: str
    tag: str
    status: str
    subject_digest: str


def send_receipt(
    client: RegistryClient,
    signer: DigestSigner,
    *,
    me: str,
    message: m.Message,
    status: str,
    verified: bool,
    reason: str | None = None,
    ttl_seconds: int = p.DEFAULT_TTL_SECONDS,
) -> SentReceipt:
    """Push a signed receipt for ``message`` back to its sender."""
    if status not in p.RECEIPT_STATUSES:
        raise ManifestError(f"receipt status must be one of {', '.join(p.RECEIPT_STATUSES)}")
    annotations = {
        p.A_VERSION: p.PROTOCOL_VERSION,
        p.A_SENDER: me,
        p.A_RECIPIENT: message.sender,
        p.A_CREATED_AT: p.format_timestamp(datetime.now(UTC)),
        p.A_TTL: str(ttl_seconds),
        p.A_RECEIPT_FOR: message.digest,
        p.A_RECEIPT_STATUS: status,
        p.A_RECEIPT_VERIFIED: "true" if verified else "false",
    }
    if reason:
        annotations[p.A_RECEIPT_REASON] = reason[:MAX_REASON_CHARS]
    push_empty_config(client)
    raw = m.build_receipt(message.descriptor, annotations)
    pushed = client.push_manifest(raw)
    attach_bundle(
        client,
        m.Descriptor(p.OCI_MANIFEST, pushed.digest, len(raw)),
        signer.sign_digest(pushed.digest),
    )
    tag = p.receipt_tag(message.digest)
    attach_referrer(
        client,
        raw,
        tag,
        artifact_type=p.RECEIPT_ARTIFACT_TYPE,
        annotations=annotations,
        subject=message.digest,
    )
    return SentReceipt(pushed.digest, tag, status, message.digest)


def receipts_for(
    client: RegistryClient, message_digest: str, mode: DiscoveryMode = "auto"
) -> list[m.Receipt]:
    """Receipts that refer to ``message_digest`` (parsed, signatures not checked)."""
    found: list[m.Receipt] = []
    seen: set[str] = set()
    descriptors = find_referrers(client, message_digest, p.RECEIPT_ARTIFACT_TYPE, mode)
    digests = [d.digest for d in descriptors]
    if mode != "referrers":
        prefix = f"receipt-{message_digest.split(':', 1)[1][:12]}-"
        digests += list(client.list_tags(prefix))
    for reference in digests:
        try:
            raw, digest = client.fetch_manifest(reference)
            if digest in seen:
                continue
            seen.add(digest)
            receipt = m.parse_receipt(raw, digest)
        except DockerCommsError as exc:
            log.info("skipping receipt %s: %s", reference[:40], exc.diagnostics())
            continue
        if receipt.subject_digest == message_digest:
            found.append(receipt)
    return sorted(found, key=lambda r: r.created_at)
