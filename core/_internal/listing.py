"""Checking inbox tags: fetch each message manifest and verify its signature, many at once.

Caveats first:

* A check touches no chunk: it is the manifest, the referrers (or the fallback
  index), the bundle manifest and the bundle blob, so a few registry round trips
  each. Listing a big inbox over HTTP is mostly waiting on them, so
  :func:`check_tags` runs batches on a few threads, each thread with its own
  client (``core.clients.ClientPool``); ``ls`` and the mount's polls both go
  through it.
* The embedded registry has no round trips to overlap and its work holds the GIL:
  :func:`listing_workers` gives it one thread (measured: three made a 1,000-message
  listing slower, 2.2 s -> 3.1 s).
* Registries that meter manifest pulls (Docker Hub) count every check, however
  many run at once.
* One tag never stops a listing: an unexpected exception while checking it (a
  parser that chokes on a hostile manifest, a bug) is logged once with its
  traceback and the tag comes back rejected (a :class:`ProtocolError`).
* What verified once is not verified again by a listing (:class:`VerifiedCache`,
  the ledger's ``verified`` table, kept across restarts): a tag whose manifest
  digest was verified under the same trust-policy fingerprint is parsed again
  from the manifest bytes kept with the result (recipient, tag and filename
  rules included) and checked for expiry by the clock; the signature is not
  checked again. That is safe against a hostile registry because the digest is
  the sha256 of those bytes: they cannot change under it, and a registry that
  points a tag at another digest gets that digest checked. A deleted tag is not
  listed, so its result is never used. A signature is never cached for more
  than listing: ``open()``, ``verify`` and ``recv`` check it again.
* On the embedded store the digest of every tag comes from one read of the
  layout's index (:func:`inbox_digests`), so a cached tag costs no request: a
  10,000-message inbox lists in well under a second. Over HTTP each tag's
  manifest is still fetched (one round trip, where an unknown one costs four).
* Results come back in the order of the tags given. Nothing is de-duplicated
  here; :func:`first_of_each_message` does that, among verified messages only
  (:class:`~dockercomms.core._internal.receive.SeenMessages`), as ``recv`` does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from dockercomms.core import protocol
from dockercomms.core._internal.ledger import ReceivedLedger, VerifiedRecord
from dockercomms.core._internal.manifest import Message
from dockercomms.core._internal.receive import Receiver, SeenMessages
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import RepositoryRef
from dockercomms.core._internal.signing.verify import VerifiedSigner
from dockercomms.core.clients import ClientPool
from dockercomms.core.errors import (
    DigestMismatchError,
    Disposition,
    DockerCommsError,
    ExpiredError,
    ProtocolError,
    SenderMismatchError,
    SignatureError,
    UntrustedSignerError,
)
from dockercomms.core.log_once import LogOnce

log = logging.getLogger(__name__)

#: Checks at once over HTTP. Measured through a proxy adding 20 ms per GET, 50
#: messages took 13.5 s on one thread, 5.4 s on four, 2.8 s on eight.
LISTING_WORKERS = 8
BATCH = 10
#: Batch size on one thread: a receiver per batch reads ``trust.json`` again, which
#: cost more than the check itself once results are kept.
CACHED_BATCH = 500
#: Failures at or before the signature check: whoever made the message is not known
#: to be its claimed sender, so nobody is answered.
UNANSWERED = (
    SignatureError,
    UntrustedSignerError,
    SenderMismatchError,
    DigestMismatchError,
    ExpiredError,
)


@dataclass(frozen=True)
class CheckedTag:
    """One inbox tag, checked: verified (``signer`` set) or not (``error`` set).

    Attributes:
        message: set whenever the manifest itself was valid, even if its
            signature was not, so a listing can still say what the bad message
            claims.
        answerable: for a message rejected on its own content, the verified
            signer (trusted as exactly its claimed sender) a ``rejected``
            receipt may answer; None for every other tag.
    """

    tag: str
    message: Message | None
    signer: VerifiedSigner | None
    error: DockerCommsError | None
    answerable: VerifiedSigner | None = None


class VerifiedCache:
    """Listing results verified under one trust policy: those kept, and those found now.

    Thread-safe: the checks of one listing read it and add to it from several
    threads; :meth:`save` writes what they found, on the caller's thread.

    Attributes:
        policy: the trust-policy fingerprint every result here holds under.
    """

    def __init__(self, policy: str, known: Mapping[str, VerifiedRecord]) -> None:
        self.policy = policy
        self._known = dict(known)
        self._found: list[VerifiedRecord] = []
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, ledger: ReceivedLedger, policy: str, digests: Iterable[str] | None = None
    ) -> VerifiedCache:
        """The results kept under ``policy`` (only those for ``digests``, when given)."""
        return cls(policy, ledger.verified(policy, digests))

    def get(self, digest: str, policy: str) -> VerifiedRecord | None:
        """The result for ``digest``, if it holds under ``policy`` and its bytes hash to it."""
        if policy != self.policy:
            return None
        with self._lock:
            record = self._known.get(digest)
        if record is None or protocol.sha256_digest(record.manifest) != digest:
            return None
        return record

    def add(self, raw: bytes, message: Message, signer: VerifiedSigner, policy: str) -> None:
        """Keep a result a check just found (under the policy it was found under)."""
        if policy != self.policy:
            return
        record = VerifiedRecord(
            message.digest,
            policy,
            raw,
            signer.name,
            signer.kind,
            signer.identity,
            signer.issuer,
            datetime.now(UTC).isoformat(),
        )
        with self._lock:
            self._known[message.digest] = record
            self._found.append(record)

    def save(self, ledger: ReceivedLedger) -> int:
        """Write the results found since the last save; how many."""
        with self._lock:
            found, self._found = self._found, []
        ledger.remember_verified(found)
        return len(found)


def check_tag(
    receiver: Receiver,
    tag: str,
    unexpected: LogOnce,
    *,
    cache: VerifiedCache | None = None,
    digest: str | None = None,
    policy: str | None = None,
) -> CheckedTag:
    """Fetch and verify one tag; a bad message is a result, never an exception.

    With ``cache``, a manifest verified before under this receiver's trust policy
    is not verified again (see the module notes); ``digest`` is what the tag names
    when the store said so without a request (the embedded layout's index);
    ``policy`` is the receiver's trust-policy fingerprint, if already computed.
    """
    try:
        if policy is None:
            policy = receiver.verifier.policy_fingerprint
        if cache is not None and digest is not None:
            record = cache.get(digest, policy)
            if record is not None:
                known = _from_cache(receiver, tag, record)
                if known is not None:
                    return known
        try:
            raw, fetched = receiver.client.fetch_manifest(tag)
            message = receiver.parse_message(raw, fetched, tag)
        except DockerCommsError as exc:
            return CheckedTag(tag, None, None, exc)
        if cache is not None:
            record = cache.get(message.digest, policy)
            if record is not None:
                known = _from_cache(receiver, tag, record)
                if known is not None:
                    return known
        try:
            verified = receiver.verify_message(message)
        except DockerCommsError as exc:
            return CheckedTag(tag, message, None, exc, _answerable(receiver, message, exc))
        if cache is not None:
            cache.add(raw, message, verified.signer, policy)  # the signed bytes, never opened
        return CheckedTag(tag, verified.message, verified.signer, None)  # opened if sealed
    except Exception as exc:
        unexpected.log(
            logging.ERROR,
            tag,
            "inbox tag %s failed unexpectedly (%s); listed as rejected",
            tag,
            type(exc).__name__,
            exc_info=True,
        )
        error = ProtocolError(
            f"checking it failed unexpectedly ({type(exc).__name__}); see the log"
        )
        return CheckedTag(tag, None, None, error)


def _from_cache(receiver: Receiver, tag: str, record: VerifiedRecord) -> CheckedTag | None:
    """A tag's check from a kept result: parsed again, signer as kept, expiry by the clock.

    None when the kept bytes no longer pass today's parser (a stricter rule after
    an upgrade) or a sealed message no longer opens: the tag is then checked in
    full, as if nothing were kept.
    """
    try:
        message = receiver.parse_message(record.manifest, record.digest, tag)
    except DockerCommsError:
        return None
    signer = VerifiedSigner(
        record.signer_name,
        "keyless" if record.signer_kind == "keyless" else "key",
        record.signer_identity,
        record.signer_issuer,
    )
    if signer.name != message.sender:
        return None
    try:
        receiver.check_fresh(message)
    except DockerCommsError as exc:
        return CheckedTag(tag, message, None, exc, _answerable(receiver, message, exc))
    try:
        # A sealed message's real name is opened again from the signed bytes (SPEC 9):
        # what was decrypted is never kept in the state database.
        opened = receiver.open_message(message, signer)
    except DockerCommsError:
        return None  # checked in full, which says why
    return CheckedTag(tag, opened, signer, None)


def _answerable(
    receiver: Receiver, message: Message, error: DockerCommsError
) -> VerifiedSigner | None:
    """The signer to answer about a rejected message, if it may be answered.

    Only a message whose signature verifies, by a signer trusted as exactly its
    claimed sender, failed on its own content; that is checked here again (one
    more signature check, and only for failures after that step), never inferred.
    """
    if isinstance(error, UNANSWERED) or error.disposition is not Disposition.REJECTED:
        return None
    try:
        signer = receiver.verify_signature(message.digest)
    except DockerCommsError:
        return None
    return signer if signer.name == message.sender else None


def listing_workers(ref: RepositoryRef, over_http: int = LISTING_WORKERS) -> int:
    """How many checks to run at once against ``ref`` (see the module notes)."""
    return 1 if ref.layout_dir is not None else over_http


def batches(tags: list[str], size: int = BATCH) -> list[list[str]]:
    """``tags`` in consecutive groups of ``size``."""
    return [tags[i : i + size] for i in range(0, len(tags), size)]


def check_tags(
    tags: list[str],
    *,
    pool: ClientPool,
    receiver_for: Callable[[RegistryClient], Receiver],
    workers: int,
    unexpected: LogOnce,
    cache: VerifiedCache | None = None,
    digests: Mapping[str, str] | None = None,
) -> list[CheckedTag]:
    """Check every tag, a batch at a time on ``workers`` threads; results in order.

    ``receiver_for`` runs once per batch, so a trust policy edited meanwhile
    applies from the next batch on, as it would for a slow sequential listing
    (a kept result counts only under the policy it was found under). A batch that
    fails as a whole (a trust policy that cannot be read) fails the listing with
    its error. ``digests``: what each tag names, when the store says so at no cost.
    """
    named = digests or {}

    def check_batch(batch: list[str]) -> list[CheckedTag]:
        receiver = receiver_for(pool.client())
        policy = receiver.verifier.policy_fingerprint
        return [
            check_tag(receiver, tag, unexpected, cache=cache, digest=named.get(tag), policy=policy)
            for tag in batch
        ]

    size = BATCH if cache is None or workers > 1 else CACHED_BATCH
    done = pool.map(check_batch, batches(tags, size), workers=workers)
    return [checked for batch in done for checked in batch]


def inbox_digests(client: RegistryClient, me: str) -> dict[str, str] | None:
    """Every inbox tag of ``me`` with the digest it names, from the embedded layout's index.

    None where the store cannot say so in one read (HTTP): there, each tag's
    manifest is fetched to learn it. A damaged index is None as well, so the
    ordinary requests report it as they would.
    """
    store = client.embedded_store()
    if store is None:
        return None
    found = store.tag_digests(protocol.inbox_prefix(me))
    if found is None:
        return None
    # As ``Receiver.inbox_tags``: a name that is no tag is no message.
    return {tag: d for tag, d in found.items() if protocol.TAG_PATTERN.fullmatch(tag)}


def first_of_each_message(checked: Iterable[CheckedTag]) -> list[CheckedTag]:
    """Drop later tags naming a verified message an earlier verified tag named.

    Every tag that did not verify stays, shown as what it is: it can neither
    hide a verified message nor be hidden by one.
    """
    seen = SeenMessages()
    return [
        e
        for e in checked
        if e.message is None or e.signer is None or seen.first_time(e.message, e.signer)
    ]
