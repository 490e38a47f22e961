"""Attaching signature bundles and receipts to a subject, and finding them again.

Discovery order (SPEC 5 step 4): the OCI 1.1 referrers API; where the registry
lacks it, the ``sha256-<hex>`` tag-schema index; last, tag prefixes
(``bundle-<hex12>-``). Writers add to the fallback index only when the registry
did not answer the manifest PUT with ``OCI-Subject``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

from dockercomms.core import manifest as m
from dockercomms.core import protocol as p
from dockercomms.core.errors import (
    DockerCommsError,
    LimitExceededError,
    ManifestError,
    NotFoundError,
)
from dockercomms.core.registry.client import RegistryClient

log = logging.getLogger(__name__)

DiscoveryMode = Literal["auto", "referrers", "tag"]


def push_empty_config(client: RegistryClient) -> None:
    """Make sure the ``{}`` config blob every manifest of ours names exists."""
    client.push_blob_bytes(p.EMPTY_CONFIG_BYTES, p.OCI_EMPTY)


def attach_referrer(
    client: RegistryClient,
    raw: bytes,
    tag: str,
    *,
    artifact_type: str,
    annotations: dict[str, str],
    subject: str,
) -> str:
    """Push a manifest with a ``subject`` under ``tag``; keep the fallback index in step."""
    pushed = client.push_manifest(raw, tag)
    if not pushed.subject_accepted:
        descriptor = m.Descriptor(
            p.OCI_MANIFEST, pushed.digest, len(raw), annotations, artifact_type
        )
        add_to_fallback_index(client, subject, descriptor)
    return pushed.digest


def attach_bundle(client: RegistryClient, subject: m.Descriptor, bundle_json: bytes) -> str:
    """Push a bundle blob and its manifest referring to ``subject`` (SPEC 3)."""
    push_empty_config(client)
    blob = client.push_blob_bytes(bundle_json, p.BUNDLE_MEDIA_TYPE)
    raw = m.build_bundle_manifest(subject, blob)
    return attach_referrer(
        client,
        raw,
        p.bundle_tag(subject.digest),
        artifact_type=p.BUNDLE_MEDIA_TYPE,
        annotations={p.A_VERSION: p.PROTOCOL_VERSION},
        subject=subject.digest,
    )


def add_to_fallback_index(client: RegistryClient, subject_digest: str, entry: m.Descriptor) -> None:
    """Add ``entry`` to the ``sha256-<hex>`` index of ``subject_digest``.

    Read-modify-write without a lock: two writers at once can drop an entry, which
    is why readers also search by tag prefix.
    """
    tag = p.referrers_fallback_tag(subject_digest)
    try:
        raw, _ = client.fetch_manifest(tag)
        entries = m.parse_index(raw)
    except NotFoundError:
        entries = []
    if any(e.digest == entry.digest for e in entries):
        return
    client.push_manifest(m.build_referrers_index([*entries, entry]), tag, media_type=p.OCI_INDEX)


def find_referrers(
    client: RegistryClient, subject_digest: str, artifact_type: str, mode: DiscoveryMode = "auto"
) -> list[m.Descriptor]:
    """Referrer manifests of ``subject_digest`` with ``artifact_type``."""
    if mode in ("auto", "referrers"):
        found = client.referrers(subject_digest, artifact_type)
        if found is not None:
            return found
    if mode == "referrers":
        return []
    if mode in ("auto", "tag"):
        try:
            raw, _ = client.fetch_manifest(p.referrers_fallback_tag(subject_digest))
        except NotFoundError:
            return []
        return [d for d in m.parse_index(raw) if d.artifact_type == artifact_type]
    return []


def bundle_candidates(
    client: RegistryClient, subject_digest: str, mode: DiscoveryMode = "auto"
) -> Iterator[bytes | DockerCommsError]:
    """Every bundle blob that claims to sign ``subject_digest``, in discovery order.

    A candidate that cannot even be fetched is yielded as its error, so the caller
    can accept the first that verifies and still report why none did.
    """
    seen: set[str] = set()
    for descriptor in find_referrers(client, subject_digest, p.BUNDLE_MEDIA_TYPE, mode):
        seen.add(descriptor.digest)
        yield _bundle_blob(client, descriptor.digest, subject_digest)
    if mode == "referrers":
        return
    for tag in client.list_tags(p.bundle_tag_prefix(subject_digest)):
        try:
            _, digest = client.fetch_manifest(tag)
        except DockerCommsError as exc:
            yield exc
            continue
        if digest not in seen:
            seen.add(digest)
            yield _bundle_blob(client, digest, subject_digest)


def _bundle_blob(
    client: RegistryClient, manifest_digest: str, subject_digest: str
) -> bytes | DockerCommsError:
    try:
        raw, _ = client.fetch_manifest(manifest_digest)
        layer, subject = m.bundle_layer(raw)
        if subject is not None and subject.digest != subject_digest:
            raise ManifestError("bundle manifest refers to another subject")
        limit = client.limits.max_bundle_bytes
        if layer.size > limit:
            raise LimitExceededError(f"bundle is {layer.size} bytes, over the {limit}-byte limit")
        return client.fetch_small_blob(layer.digest, max_bytes=limit)
    except DockerCommsError as exc:
        log.info("bundle %s unusable: %s", manifest_digest[:19], exc.diagnostics())
        return exc
