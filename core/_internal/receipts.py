"""Signed receipts (SPEC 4): "I got your message, and this is what I made of it".

A receipt is an empty-layer manifest whose ``subject`` is the message, pushed
untagged, signed like a message, and only then tagged ``receipt-<hex12>-...``.

Caveats first:

* Receipts are never withdrawn; a later one replaces an earlier one. Readers
  take the newest receipt (by ``created_at``, seconds) whose signature verifies
  as its claimed sender (:func:`latest_verified_receipt`), so ``accepted`` after
  ``rejected`` means accepted.
* Anyone can tag a receipt for any message: :func:`receipts_for` parses what it
  finds and skips what is unreadable (even a manifest that breaks a parser in an
  unexpected way); nothing it returns is verified.
* A receipt's reason is the answerer's text, cut to :data:`MAX_REASON_CHARS`;
  show it escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.receive import Receiver
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.send import DigestSigner
from dockercomms.core._internal.signatures import (
    DiscoveryMode,
    attach_bundle,
    attach_referrer,
    find_referrers,
    push_empty_config,
)
from dockercomms.core.errors import DockerCommsError, ManifestError
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 1024

#: Told about a receipt that is skipped: (reference or digest, why, escaped).
Skipped = Callable[[str, str], None]


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
    message: manifest.Message,
    status: str,
    verified: bool,
    reason: str | None = None,
    ttl_seconds: int = protocol.DEFAULT_TTL_SECONDS,
) -> SentReceipt:
    """Push a signed receipt for ``message`` back to its sender."""
    if status not in protocol.RECEIPT_STATUSES:
        raise ManifestError(f"receipt status must be one of {', '.join(protocol.RECEIPT_STATUSES)}")
    annotations = {
        protocol.A_VERSION: protocol.PROTOCOL_VERSION,
        protocol.A_SENDER: me,
        protocol.A_RECIPIENT: message.sender,
        protocol.A_CREATED_AT: protocol.format_timestamp(datetime.now(UTC)),
        protocol.A_TTL: str(ttl_seconds),
        protocol.A_RECEIPT_FOR: message.digest,
        protocol.A_RECEIPT_STATUS: status,
        protocol.A_RECEIPT_VERIFIED: "true" if verified else "false",
    }
    if reason:
        annotations[protocol.A_RECEIPT_REASON] = reason[:MAX_REASON_CHARS]
    push_empty_config(client)
    raw = manifest.build_receipt(message.descriptor, annotations)
    pushed = client.push_manifest(raw)
    attach_bundle(
        client,
        manifest.Descriptor(protocol.OCI_MANIFEST, pushed.digest, len(raw)),
        signer.sign_digest(pushed.digest),
    )
    tag = protocol.receipt_tag(message.digest)
    attach_referrer(
        client,
        raw,
        tag,
        artifact_type=protocol.RECEIPT_ARTIFACT_TYPE,
        annotations=annotations,
        subject=message.digest,
    )
    return SentReceipt(pushed.digest, tag, status, message.digest)


def receipts_for(
    client: RegistryClient,
    message_digest: str,
    mode: DiscoveryMode = "auto",
    *,
    on_unreadable: Skipped | None = None,
) -> list[manifest.Receipt]:
    """Receipts that refer to ``message_digest`` (parsed, signatures not checked).

    ``on_unreadable`` hears of each reference that could not be read for an
    unexpected reason (it is called inside the ``except`` block, so it may log
    the traceback); by default that is a warning. Unreadable ones are skipped.
    """
    found: list[manifest.Receipt] = []
    seen: set[str] = set()
    descriptors = find_referrers(client, message_digest, protocol.RECEIPT_ARTIFACT_TYPE, mode)
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
            receipt = manifest.parse_receipt(raw, digest)
        except DockerCommsError as exc:
            log.info("skipping receipt %s: %s", shown(reference[:40]), shown(exc.diagnostics()))
            continue
        except Exception as exc:  # a manifest that breaks a parser must not hide the rest
            why = f"unreadable ({type(exc).__name__})"
            if on_unreadable is None:
                log.warning("skipping receipt %s: %s", shown(reference[:40]), why)
            else:
                on_unreadable(shown(reference[:40]), why)
            continue
        if receipt.subject_digest == message_digest:
            found.append(receipt)
    return sorted(found, key=lambda r: r.created_at)


def latest_verified_receipt(
    client: RegistryClient,
    receiver: Receiver,
    message_digest: str,
    *,
    sender: str,
    recipient: str,
    on_ignored: Skipped | None = None,
    on_unreadable: Skipped | None = None,
) -> manifest.Receipt | None:
    """The newest receipt for ``message_digest`` from ``sender`` to ``recipient`` that verifies.

    It counts only if its signature verifies and the signer is trusted as
    exactly ``sender``; every other receipt claiming ``sender`` is passed to
    ``on_ignored`` with the reason (escaped) and skipped.
    """
    for receipt in reversed(receipts_for(client, message_digest, on_unreadable=on_unreadable)):
        if receipt.sender != sender or receipt.recipient != recipient:
            continue
        try:
            signer = receiver.verify_signature(receipt.digest)
        except DockerCommsError as exc:
            why = shown(exc.diagnostics())
        else:
            if signer.name == receipt.sender:
                return receipt
            why = f"signed by {shown(signer.name)}, not by {shown(sender)}"
        if on_ignored is not None:
            on_ignored(receipt.digest, why)
    return None
