"""Attaching signature bundles and receipts to a subject, and finding them again.

Discovery order (SPEC 5 step 4): the OCI 1.1 referrers API; where the registry
lacks it, the ``sha256-<hex>`` tag-schema index; last, tag prefixes
(``bundle-<hex12>-``). Writers add to the fallback index only when the registry
did not answer the manifest PUT with ``OCI-Subject``.

Caveats first: anyone who can push can add referrers to any subject and rewrite
its fallback index. So the bundle candidates of one subject are de-duplicated
(by manifest digest, and by bundle blob digest: the same bytes verify the same
way) and capped: at most ``MAX_BUNDLE_CANDIDATES`` bundle manifests fetched and
``MAX_BUNDLE_DOWNLOAD_BYTES`` downloaded, whatever the index lists. A pusher can
therefore crowd out a genuine bundle with junk ones; that is no more power than
re-tagging the message itself, which a pusher also has, and it costs the
receiver a bounded download instead of gigabytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.limits import MIB
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core.errors import (
    DockerCommsError,
    LimitExceededError,
    ManifestError,
    NotFoundError,
)

log = logging.getLogger(__name__)

DiscoveryMode = Literal["auto", "referrers", "tag"]
#: Bundle manifests fetched for one subject, at most. An honest message has one.
MAX_BUNDLE_CANDIDATES = 8
#: Bytes of bundle manifests and blobs downloaded for one subject, at most (an honest
#: bundle is a few KiB); one fetch may overshoot by its own cap.
MAX_BUNDLE_DOWNLOAD_BYTES = 4 * MIB


def push_empty_config(client: RegistryClient) -> None:
    """Make sure the ``{}`` config blob every manifest of ours names exists."""
    client.push_blob_bytes(protocol.EMPTY_CONFIG_BYTES, protocol.OCI_EMPTY)


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
        descriptor = manifest.Descriptor(
            protocol.OCI_MANIFEST, pushed.digest, len(raw), annotations, artifact_type
        )
        add_to_fallback_index(client, subject, descriptor)
    return pushed.digest


def attach_bundle(client: RegistryClient, subject: manifest.Descriptor, bundle_json: bytes) -> str:
    """Push a bundle blob and its manifest referring to ``subject`` (SPEC 3)."""
    push_empty_config(client)
    blob = client.push_blob_bytes(bundle_json, protocol.BUNDLE_MEDIA_TYPE)
    raw = manifest.build_bundle_manifest(subject, blob)
    return attach_referrer(
        client,
        raw,
        protocol.bundle_tag(subject.digest),
        artifact_type=protocol.BUNDLE_MEDIA_TYPE,
        annotations={protocol.A_VERSION: protocol.PROTOCOL_VERSION},
        subject=subject.digest,
    )


def add_to_fallback_index(
    client: RegistryClient, subject_digest: str, entry: manifest.Descriptor
) -> None:
    """Add ``entry`` to the ``sha256-<hex>`` index of ``subject_digest``.

    Read-modify-write without a lock: two writers at once can drop an entry, which
    is why readers also search by tag prefix.
    """
    tag = protocol.referrers_fallback_tag(subject_digest)
    try:
        raw, _ = client.fetch_manifest(tag)
        entries = manifest.parse_index(raw)
    except NotFoundError:
        entries = []
    if any(e.digest == entry.digest for e in entries):
        return
    # Each entry once: an index padded with repeats (by anyone who can push) shrinks back.
    entries = list({e.digest: e for e in entries}.values())
    client.push_manifest(
        manifest.build_referrers_index([*entries, entry]), tag, media_type=protocol.OCI_INDEX
    )


def find_referrers(
    client: RegistryClient, subject_digest: str, artifact_type: str, mode: DiscoveryMode = "auto"
) -> list[manifest.Descriptor]:
    """Referrer manifests of ``subject_digest`` with ``artifact_type``."""
    if mode in ("auto", "referrers"):
        found = client.referrers(subject_digest, artifact_type)
        if found is not None:
            return found
    if mode == "referrers":
        return []
    if mode in ("auto", "tag"):
        try:
            raw, _ = client.fetch_manifest(protocol.referrers_fallback_tag(subject_digest))
        except NotFoundError:
            return []
        return [d for d in manifest.parse_index(raw) if d.artifact_type == artifact_type]
    return []


def bundle_candidates(
    client: RegistryClient, subject_digest: str, mode: DiscoveryMode = "auto"
) -> Iterator[bytes | DockerCommsError]:
    """Bundle blobs that claim to sign ``subject_digest``, in discovery order, bounded.

    A candidate that cannot even be fetched is yielded as its error, so the caller
    can accept the first that verifies and still report why none did. Each bundle
    manifest and each bundle blob comes up once; after ``MAX_BUNDLE_CANDIDATES``
    manifests or ``MAX_BUNDLE_DOWNLOAD_BYTES`` the search stops with a
    :class:`LimitExceededError`.
    """
    search = _BundleSearch(client, subject_digest)
    for descriptor in find_referrers(client, subject_digest, protocol.BUNDLE_MEDIA_TYPE, mode):
        if descriptor.digest in search.manifests:
            continue
        if search.exhausted():
            yield search.stop()
            return
        search.manifests.add(descriptor.digest)
        search.fetched += 1
        try:
            raw, _ = client.fetch_manifest(descriptor.digest)
        except DockerCommsError as exc:
            yield exc
            continue
        candidate = search.blob_of(raw, descriptor.digest)
        if candidate is not None:
            yield candidate
    if mode == "referrers":
        return
    for tag in client.list_tags(protocol.bundle_tag_prefix(subject_digest)):
        if search.exhausted():
            yield search.stop()
            return
        search.fetched += 1  # a tag costs a fetch even when it names a manifest seen before
        try:
            raw, digest = client.fetch_manifest(tag)
        except DockerCommsError as exc:
            yield exc
            continue
        if digest in search.manifests:
            search.downloaded += len(raw)
            continue
        search.manifests.add(digest)
        candidate = search.blob_of(raw, digest)
        if candidate is not None:
            yield candidate


@dataclass
class _BundleSearch:
    """The budget and memory of one subject's bundle search.

    Attributes:
        manifests: bundle manifest digests already taken up.
        blobs: bundle blob digests already downloaded.
        fetched: bundle manifests fetched so far.
        downloaded: bytes of bundle manifests and blobs so far.
    """

    client: RegistryClient
    subject_digest: str
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    fetched: int = 0
    downloaded: int = 0

    def exhausted(self) -> bool:
        return self.fetched >= MAX_BUNDLE_CANDIDATES or self.downloaded >= MAX_BUNDLE_DOWNLOAD_BYTES

    def stop(self) -> LimitExceededError:
        why = (
            f"stopped looking for bundles of {self.subject_digest[:19]} after "
            f"{self.fetched} manifests and {self.downloaded} bytes"
        )
        log.info("%s", why)
        return LimitExceededError(why)

    def blob_of(self, raw: bytes, manifest_digest: str) -> bytes | DockerCommsError | None:
        """The bundle blob of manifest ``raw`` (just fetched); None if it came up before."""
        self.downloaded += len(raw)
        try:
            layer, subject = manifest.bundle_layer(raw)
            if subject is not None and subject.digest != self.subject_digest:
                raise ManifestError("bundle manifest refers to another subject")
            if layer.digest in self.blobs:
                return None  # the same bytes verify the same way
            limit = self.client.limits.max_bundle_bytes
            if layer.size > limit:
                raise LimitExceededError(
                    f"bundle is {layer.size} bytes, over the {limit}-byte limit"
                )
            if self.downloaded + layer.size > MAX_BUNDLE_DOWNLOAD_BYTES:
                raise LimitExceededError(
                    f"bundle of {layer.size} bytes is over what is left of the "
                    f"{MAX_BUNDLE_DOWNLOAD_BYTES}-byte budget for {self.subject_digest[:19]}"
                )
            self.blobs.add(layer.digest)
            blob = self.client.fetch_small_blob(layer.digest, max_bytes=limit)
            self.downloaded += len(blob)
            return blob
        except DockerCommsError as exc:
            log.info("bundle %s unusable: %s", manifest_digest[:19], exc.diagnostics())
            return exc
