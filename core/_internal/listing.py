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
* Results come back in the order of the tags given. Nothing is de-duplicated
  here; :func:`first_of_each_message` does that, among verified messages only
  (:class:`~dockercomms.core._internal.receive.SeenMessages`), as ``recv`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


def check_tag(receiver: Receiver, tag: str, unexpected: LogOnce) -> CheckedTag:
    """Fetch and verify one tag; a bad message is a result, never an exception."""
    try:
        try:
            message = receiver.fetch_message(tag)
        except DockerCommsError as exc:
            return CheckedTag(tag, None, None, exc)
        try:
            verified = receiver.verify_message(message)
        except DockerCommsError as exc:
            return CheckedTag(tag, message, None, exc, _answerable(receiver, message, exc))
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
) -> list[CheckedTag]:
    """Check every tag, a batch at a time on ``workers`` threads; results in order.

    ``receiver_for`` runs once per batch, so a trust policy edited meanwhile
    applies from the next batch on, as it would for a slow sequential listing.
    A batch that fails as a whole (a trust policy that cannot be read) fails the
    listing with its error.
    """

    def check_batch(batch: list[str]) -> list[CheckedTag]:
        receiver = receiver_for(pool.client())
        return [check_tag(receiver, tag, unexpected) for tag in batch]

    done = pool.map(check_batch, batches(tags), workers=workers)
    return [checked for batch in done for checked in batch]


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
