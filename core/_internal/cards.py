"""Cards in the repository (SPEC 9.1): publishing mine, and taking a peer's age key from theirs.

Caveats first:

* Anyone who can push can push ``card-`` tags, under any name's prefix. A card
  counts only once its signature verifies against my trust policy *and* the
  verified signer is trusted as exactly the name the card claims (the same
  rule as a message's sender, SPEC 5 step 6). Nothing else about a card is
  believed, and a refused card never changes the trust store.
* Everything read is bounded: per look at most :data:`MAX_CARD_CANDIDATES`
  card manifests fetched and :data:`MAX_CARD_DOWNLOAD_BYTES` of card manifests
  and bundle blobs downloaded (one fetch may overshoot by its own cap: the
  client's manifest limit, a bundle's), each card's bundle search bounded as
  well by ``signatures.bundle_candidates``. The tag list is read whole, as for
  the inbox (the registry's pages are bounded by the client). Tags are
  tried newest first by the ``<unix>`` in their name, which only orders the work:
  what decides is the verified ``created_at``. So a pusher can crowd out a
  genuine card with junk tags of plausible dates for a while; that is the same
  power as deleting the tag, which a pusher also has. A tag already refused is
  remembered (per :class:`CardDirectory` and trust policy, bounded) and not
  fetched again while the policy stays the same, so successive refreshes work
  their way down the list.
* Rollback: a card older than the newest accepted for that name
  (``Contact.card_created_at``) is refused, whether it is an old card under an
  old tag (skipped unread: its tag says it is older) or under a new one
  (verified, then refused). A card dated more than :data:`CLOCK_SKEW` in the
  future is refused too: accepted, it would block every honest card until then.
* :class:`CardDirectory` is the ``ContactRefresher`` the send path calls before
  it reads a recipient's contact: at most once per interval per name, never
  raising for a bad card or an unreachable registry, only logging why and
  keeping the reason (:meth:`CardDirectory.reasons`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.send import DigestSigner
from dockercomms.core._internal.signatures import (
    DiscoveryMode,
    attach_bundle,
    bundle_candidates,
    push_empty_config,
)
from dockercomms.core._internal.signing.verify import BundleVerifier
from dockercomms.core.contact_card import (
    CARD_ARTIFACT_TYPE,
    CardClaim,
    card_annotations,
    card_tag,
    card_tag_prefix,
    parse_card_annotations,
)
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    LimitExceededError,
    ManifestError,
    SignatureError,
    VerificationError,
)
from dockercomms.core.trust import TrustPolicy
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

#: Card manifests fetched in one lookup, at most (an honest name has one per rotation).
MAX_CARD_CANDIDATES = 8
#: Bytes of card manifests and their bundles downloaded in one lookup, at most.
MAX_CARD_DOWNLOAD_BYTES = 1024 * 1024
#: Refused tags remembered per directory (so junk is fetched once, not at every refresh).
MAX_REMEMBERED_REFUSALS = 20_000
#: How far in the future a card may be dated (as for messages, SPEC 5 step 7).
CLOCK_SKEW = timedelta(minutes=5)

_CARD_TAG = re.compile(r"card-[0-9a-v]{26}-(?P<unix>[0-9]{1,12})-[0-9a-f]{6}")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PublishedCard:
    """A card I pushed: its tag and manifest digest."""

    tag: str
    digest: str
    claim: CardClaim


@dataclass(frozen=True)
class CardLookup:
    """What one look at a name's cards found.

    Attributes:
        claim: the newest card that verified as that name; None when none did.
        tag: its tag.
        reasons: why each other card looked at was refused or skipped, one
            sentence each (untrusted strings escaped).
    """

    claim: CardClaim | None = None
    tag: str = ""
    reasons: list[str] = field(default_factory=list)


def build_card_manifest(claim: CardClaim) -> bytes:
    """The card manifest (SPEC 9.1): empty config, no layers, four annotations."""
    return manifest.dump(
        {
            "schemaVersion": 2,
            "mediaType": protocol.OCI_MANIFEST,
            "artifactType": CARD_ARTIFACT_TYPE,
            "config": dict(protocol.EMPTY_CONFIG_DESCRIPTOR),
            "layers": [],
            "annotations": card_annotations(claim),
        }
    )


def parse_card_manifest(raw: bytes) -> CardClaim:
    """What an untrusted card manifest claims; :class:`ManifestError` if it is no card."""
    doc = manifest.parse_json(raw, "card manifest", max_bytes=64 * 1024)
    if doc.get("schemaVersion") != 2:
        raise ManifestError("card manifest: schemaVersion must be 2")
    media_type = doc.get("mediaType")
    if media_type is not None and media_type != protocol.OCI_MANIFEST:
        raise ManifestError("card manifest: unexpected mediaType")
    if doc.get("artifactType") != CARD_ARTIFACT_TYPE:
        raise ManifestError("card manifest: artifactType is not a card's")
    if doc.get("layers") not in ([], None):
        raise ManifestError("card manifest: a card has no layers")
    annotations = doc.get("annotations")
    if not isinstance(annotations, dict):
        raise ManifestError("card manifest has no annotations")
    return parse_card_annotations(annotations)


def publish_card(client: RegistryClient, signer: DigestSigner, claim: CardClaim) -> PublishedCard:
    """Push, sign and then tag my card: signed like a message (SPEC 3), tagged last."""
    raw = build_card_manifest(claim)
    push_empty_config(client)
    pushed = client.push_manifest(raw)
    subject = manifest.Descriptor(protocol.OCI_MANIFEST, pushed.digest, len(raw))
    attach_bundle(client, subject, signer.sign_digest(pushed.digest))
    tag = card_tag(claim.identity, claim.created_at)
    client.push_manifest(raw, tag)
    log.info("published my card as %s (%s)", tag, pushed.digest)
    return PublishedCard(tag, pushed.digest, claim)


def _tag_time(tag: str) -> int | None:
    found = _CARD_TAG.fullmatch(tag)
    return int(found["unix"]) if found else None


def find_card(
    client: RegistryClient,
    verifier: BundleVerifier,
    name: str,
    *,
    not_before: datetime | None = None,
    now: datetime | None = None,
    skip: Callable[[str], bool] = lambda _tag: False,
    refused: Callable[[str], None] = lambda _tag: None,
    bundle_mode: DiscoveryMode = "auto",
) -> CardLookup:
    """The newest card of ``name`` that verifies as ``name``, newer than ``not_before``.

    Never raises for what the repository holds; a registry that cannot list
    tags raises its error (the caller decides whether that matters).
    ``skip(tag)`` leaves a tag out unread, ``refused(tag)`` is told of each tag
    whose card was refused for what it is (not for a network error).
    """
    now = now or _utcnow()
    reasons: list[str] = []
    prefix = card_tag_prefix(name)
    dated: list[tuple[int, str]] = []
    junk = older = future = 0
    floor = int(not_before.timestamp()) if not_before is not None else None
    latest = int((now + CLOCK_SKEW).timestamp())
    for tag in client.list_tags(prefix):
        unix = _tag_time(tag) if protocol.TAG_PATTERN.fullmatch(tag) else None
        if unix is None:
            junk += 1
        elif floor is not None and unix < floor:
            older += 1
        elif unix > latest:
            future += 1
        elif not skip(tag):
            dated.append((unix, tag))
    if junk:
        reasons.append(f"{junk} tags under {prefix} are not card tags")
    if older and not_before is not None:
        reasons.append(
            f"{older} cards are older than the newest accepted for '{shown(name)}' "
            f"({protocol.format_timestamp(not_before)}): a rollback, not read"
        )
    if future:
        reasons.append(f"{future} card tags are dated in the future: not read")
    dated.sort(reverse=True)
    fetched = 0
    spent = _Budget()
    for _unix, tag in dated:
        if fetched >= MAX_CARD_CANDIDATES or spent.exhausted:
            reasons.append(
                f"stopped after {fetched} card manifests and {spent.bytes} bytes "
                f"({len(dated) - fetched} more tags not read)"
            )
            break
        fetched += 1
        try:
            raw, digest = client.fetch_manifest(tag)
        except DockerCommsError as exc:
            reasons.append(f"{tag}: cannot be read: {exc.diagnostics()}")
            continue
        spent.bytes += len(raw)
        try:
            claim = _verified_claim(client, verifier, name, raw, digest, bundle_mode, spent)
            if claim.created_at > now + CLOCK_SKEW:  # (not created_at - skew: year 1)
                raise VerificationError(
                    f"card is dated {protocol.format_timestamp(claim.created_at)}, in the future"
                )
            if not_before is not None and claim.created_at < not_before:
                raise VerificationError(
                    f"card was made {protocol.format_timestamp(claim.created_at)}, before the "
                    f"newest one accepted ({protocol.format_timestamp(not_before)}): "
                    "refused as a rollback"
                )
        except DockerCommsError as exc:
            refused(tag)
            reasons.append(f"{tag}: refused: {exc.diagnostics()}")
            continue
        return CardLookup(claim, tag, reasons)
    return CardLookup(None, "", reasons)


@dataclass
class _Budget:
    """Bytes of card manifests and bundle blobs one look downloaded."""

    bytes: int = 0

    @property
    def exhausted(self) -> bool:
        return self.bytes >= MAX_CARD_DOWNLOAD_BYTES


def _verified_claim(
    client: RegistryClient,
    verifier: BundleVerifier,
    name: str,
    raw: bytes,
    digest: str,
    bundle_mode: DiscoveryMode,
    spent: _Budget,
) -> CardClaim:
    """The claim of card manifest ``raw`` once it verified as ``name`` (bundles on ``spent``)."""
    claim = parse_card_manifest(raw)
    if claim.identity != name:
        raise ManifestError(f"card is for '{shown(claim.identity)}', listed under '{shown(name)}'")
    first_error: DockerCommsError | None = None
    for candidate in bundle_candidates(client, digest, bundle_mode):
        if isinstance(candidate, DockerCommsError):
            first_error = first_error or candidate
            continue
        spent.bytes += len(candidate)
        if spent.exhausted:
            raise LimitExceededError(
                f"stopped reading the signatures of card {digest[:19]}: over the "
                f"{MAX_CARD_DOWNLOAD_BYTES}-byte budget of one look"
            )
        try:
            signer = verifier.verify(candidate, digest)
        except VerificationError as exc:
            first_error = first_error or exc
            continue
        if signer.name != name:
            first_error = first_error or VerificationError(
                f"card for '{shown(name)}' is signed by {shown(signer.identity)}, "
                f"trusted as '{shown(signer.name)}'"
            )
            continue
        return claim
    if isinstance(first_error, LimitExceededError):
        raise first_error
    raise first_error or SignatureError(f"card {digest[:19]} has no signature")


class CardDirectory:
    """Keeps trusted names' age recipients as current as their newest verified cards.

    The send path's ``ContactRefresher``: :meth:`refresh` before reading a
    recipient's ``Contact``. Thread-safe; one per process (mount, syncer, CLI
    send) is enough, and it is what remembers the last look per name.
    """

    def __init__(
        self,
        client: Callable[[], RegistryClient],
        trust_file: Path,
        verifier: Callable[[TrustPolicy], BundleVerifier],
        *,
        interval_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock = _utcnow,
        bundle_mode: DiscoveryMode = "auto",
    ) -> None:
        self._client = client
        self._trust_file = trust_file
        self._verifier = verifier
        self._interval = interval_seconds
        self._monotonic = monotonic
        self._clock = clock
        self._bundle_mode = bundle_mode
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._last_look: dict[str, float] = {}
        self._reasons: dict[str, list[str]] = {}
        self._refused_tags: set[tuple[str, str]] = set()

    def reasons(self, name: str) -> list[str]:
        """Why the last look at ``name``'s cards accepted nothing (or what it skipped)."""
        with self._lock:
            return list(self._reasons.get(name, []))

    def refresh(self, name: str) -> None:
        """Take ``name``'s newest verified card into the trust store, if it is newer.

        At most once per interval per name; never raises for a bad card or an
        unreachable registry (logs why and keeps the reason).
        """
        with self._lock:
            one_name = self._name_locks.setdefault(name, threading.Lock())
        # A second send to the same name waits for the look in progress, then
        # reads what it found, rather than the trust store from before it.
        with one_name:
            with self._lock:
                now = self._monotonic()
                last = self._last_look.get(name)
                if last is not None and now - last < self._interval:
                    return
                self._last_look[name] = now
            self._look(name)

    def _look(self, name: str) -> None:
        try:
            reasons = self._refresh(name)
        except DockerCommsError as exc:
            reasons = [f"cards of '{shown(name)}' not looked up: {exc.diagnostics()}"]
        except Exception as exc:  # a hostile card must not stop a send; say it once
            log.warning("looking up the cards of %s failed", shown(name), exc_info=True)
            reasons = [f"cards of '{shown(name)}' not looked up: {type(exc).__name__}"]
        for reason in reasons:
            log.info("card of %s: %s", shown(name), reason)
        with self._lock:
            self._reasons[name] = reasons

    def _refresh(self, name: str) -> list[str]:
        policy = TrustPolicy.load(self._trust_file)
        if not policy.is_trusted(name):
            return [f"'{shown(name)}' is not trusted, so no card can speak for it"]
        known = policy.contact(name).card_created_at
        not_before = protocol.parse_timestamp(known) if known else None
        verifier = self._verifier(policy)
        trust = verifier.policy_fingerprint  # a refusal stands until the trust policy changes
        found = find_card(
            self._client(),
            verifier,
            name,
            not_before=not_before,
            now=self._clock(),
            skip=lambda tag: self._was_refused(tag, trust),
            refused=lambda tag: self._remember_refused(tag, trust),
            bundle_mode=self._bundle_mode,
        )
        if found.claim is None:
            return found.reasons or [f"no card of '{shown(name)}' in the repository"]
        claim = found.claim
        try:
            with TrustPolicy.editing(self._trust_file) as current:
                if not current.is_trusted(name):
                    return [f"'{shown(name)}' stopped being trusted during the look-up"]
                changed = current.accept_card(
                    name, claim.age_recipient, claim.created_at, "repository"
                )
        except ConfigError as exc:  # a newer card was accepted meanwhile
            return [*found.reasons, exc.diagnostics()]
        if changed:
            log.info(
                "took the age recipient of %s from card %s (%s)",
                shown(name),
                found.tag,
                protocol.format_timestamp(claim.created_at),
            )
        return found.reasons

    def _was_refused(self, tag: str, trust: str) -> bool:
        with self._lock:
            return (tag, trust) in self._refused_tags

    def _remember_refused(self, tag: str, trust: str) -> None:
        with self._lock:
            if len(self._refused_tags) < MAX_REMEMBERED_REFUSALS:
                self._refused_tags.add((tag, trust))
