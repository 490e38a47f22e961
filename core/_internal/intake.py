"""Receiving everything new into a folder: the loop ``recv`` and the syncer share.

Each message is verified and materialised on its own; a bad one becomes a
``rejected`` outcome and the loop goes on. The ledger makes it idempotent: a
message already received is neither downloaded nor acknowledged again, and a
message already rejected costs one manifest fetch and is reported as
``rejected-before`` (not again as news).

Caveats first:

* De-duplication happens among verified messages only
  (:class:`~dockercomms.core._internal.receive.SeenMessages`); an unverified tag can
  neither hide nor stand in for a verified one.
* A rejection is remembered by manifest digest only when the message itself
  decided it: under the trust policy's fingerprint for the signature and signer
  steps (retried when ``trust.json`` changes), for ever for a malformed,
  expired or corrupt-chunked message. What the registry or the local disk did
  (unreachable, a blob missing or not hashing to its digest, a full disk) and a
  message dated in the future are tried again on the next run.
* One message's unexpected failure (a parser that chokes on a hostile
  manifest, a bug) is logged once with its traceback and makes that message a
  rejection for this run, never remembered; the loop goes on. ``recv``, the
  syncer and anything else that receives get this from the loop itself.
* Sealed messages (SPEC 9) are opened after the signer and freshness steps; a
  plaintext message from a sender who must seal (``NotSealedError``) and one
  sealed to none of my age keys (``NotARecipientError``) are remembered under
  the trust policy's fingerprint, which then includes who must seal
  (``Receiver.policy_fingerprint``), so changing either retries them. A sealed
  chunk that opens to other bytes than its signed ``chunk_sha256``
  (``PlaintextMismatchError``) is the sender's doing and is remembered for ever;
  a plain digest mismatch is the registry's and is not.
* Whether a failure is a rejection or a deferral is the error's own
  :class:`~dockercomms.core.errors.Disposition`.
* A received message is answered ``accepted`` once: the receipt store
  (:mod:`.receipt_store`) is asked first, and a mount's answer counts.
* Rejections and deferrals are logged at DEBUG only: the caller reports the
  outcomes (``recv`` prints them, the syncer keeps them in its status), so a
  rejection is never shown twice, even with ``-v``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dockercomms.core import protocol
from dockercomms.core._internal.ledger import ReceivedLedger, ReceivedRecord, RejectedRecord
from dockercomms.core._internal.listing import inbox_digests
from dockercomms.core._internal.manifest import Message
from dockercomms.core._internal.receipt_store import Answer, ReceiptStore, supersedes
from dockercomms.core._internal.receipts import send_receipt
from dockercomms.core._internal.receive import Receiver, SeenMessages, VerifiedMessage
from dockercomms.core._internal.send import DigestSigner
from dockercomms.core.errors import (
    DigestMismatchError,
    Disposition,
    DockerCommsError,
    ExpiredError,
    NotARecipientError,
    NotSealedError,
    PlaintextMismatchError,
    ProtocolError,
    disposition_of,
)
from dockercomms.core.log_once import LogOnce
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

ProgressFactory = Callable[[Message], Any]
#: The step that rejected a message, which decides whether and how it is remembered.
Step = Literal["manifest", "signer", "freshness", "sealed", "chunks"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one inbox entry.

    Attributes:
        status: ``received``, ``already-received``, ``rejected`` (the message is
            bad; news of this run), ``rejected-before`` (rejected by an earlier
            run, not checked again), or ``deferred`` (the registry or the local
            disk failed us; the next run tries again).
        error: the rejection, when rejected or deferred in this run.
        earlier: the remembered rejection, when rejected before.
        receipt: digest of the receipt we sent, if any.
        record: what the ledger kept of an earlier receive, when that answered
            ``already-received`` without fetching the manifest again.
    """

    tag: str
    status: str
    message: Message | None = None
    path: Path | None = None
    signer_identity: str | None = None
    receipt: str | None = None
    error: DockerCommsError | None = None
    earlier: RejectedRecord | None = None
    record: ReceivedRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict for ``--json`` output."""
        out: dict[str, Any] = {"tag": self.tag, "status": self.status}
        if self.message is not None:
            out |= summary(self.message)
        elif self.record is not None:
            out |= {
                "digest": self.record.digest,
                "message_id": self.record.message_id,
                "sender": self.record.sender,
                "filename": self.record.filename,
                "path": self.record.path,
            }
        if self.path is not None:
            out["path"] = str(self.path)
        if self.signer_identity:
            out["signer"] = self.signer_identity
        if self.receipt:
            out["receipt"] = self.receipt
        if self.error is not None:
            out |= {
                "error": self.error.diagnostics(),
                "error_type": type(self.error).__name__,
                "exit_code": self.error.exit_code,
            }
        if self.earlier is not None:
            out |= {
                "error": self.earlier.reason,
                "error_type": self.earlier.error_type,
                "rejected_at": self.earlier.rejected_at,
            }
        return out


def summary(message: Message) -> dict[str, Any]:
    """The user-facing fields of a message."""
    return {
        "digest": message.digest,
        "tag": message.tag,
        "message_id": message.message_id,
        "sender": message.sender,
        "filename": message.filename,
        "sealed": message.encrypted,
        "total_bytes": message.total_bytes,
        "created_at": protocol.format_timestamp(message.created_at),
        "expires_at": protocol.format_timestamp(message.expires_at),
    }


def receive_new(
    receiver: Receiver,
    ledger: ReceivedLedger,
    out_dir: Path,
    *,
    receipt_signer: DigestSigner | None = None,
    answers: ReceiptStore | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    progress: ProgressFactory | None = None,
    unexpected: LogOnce | None = None,
) -> list[Outcome]:
    """Verify and write every new message to me into ``out_dir``.

    With ``receipt_signer`` each received message is answered ``accepted``
    unless the receipt store (``answers``, else the one in the ledger's
    database) says it was answered already. ``unexpected`` remembers which
    unexpected failures were logged (a poller passes its own, so a message that
    keeps failing is logged once, not once per poll).
    """
    intake = _Intake(receiver, ledger, out_dir, receipt_signer, progress)
    intake.unexpected = unexpected or LogOnce(log)
    owned = answers is None and receipt_signer is not None
    intake.answers = ReceiptStore(ledger.path) if owned else answers
    received = 0
    complete = True  # every tag's manifest seen: rejections of other digests can go
    # Where the store names each tag's digest in one read (the embedded layout), a
    # digest already received or rejected needs no manifest fetch: a poll that
    # finds nothing new at 10,000 messages cost 4.4 s of CPU. (``since`` needs each
    # message's date, so it takes the long way.)
    digests = inbox_digests(receiver.client, receiver.me) if since is None else None
    try:
        for tag in receiver.inbox_tags():
            if limit is not None and received >= limit:
                complete = False
                break
            try:
                known = digests.get(tag) if digests is not None else None
                if known is not None and intake.settled(tag, known):
                    continue
                taken = intake.take(tag, since)
            except Exception as exc:  # one message's bug must not stop the others
                intake.failed_unexpectedly(tag, exc)
                complete = False
                continue
            if taken is None:
                complete = False  # the manifest could not be fetched this time
            received += bool(taken)
    finally:
        if owned and intake.answers is not None:
            intake.answers.close()
    if complete:
        ledger.keep_rejections(intake.listed, intake.policy)
    return intake.outcomes


class _Intake:
    """One run of :func:`receive_new`: its outcomes, and what it has seen."""

    answers: ReceiptStore | None
    unexpected: LogOnce

    def __init__(
        self,
        receiver: Receiver,
        ledger: ReceivedLedger,
        out_dir: Path,
        receipt_signer: DigestSigner | None,
        progress: ProgressFactory | None,
    ) -> None:
        self.receiver = receiver
        self.ledger = ledger
        self.out_dir = out_dir
        self.receipt_signer = receipt_signer
        self.progress = progress
        self.policy = receiver.policy_fingerprint
        self.outcomes: list[Outcome] = []
        self.seen = SeenMessages()
        self.listed: set[str] = set()

    def settled(self, tag: str, digest: str) -> bool:
        """Whether ``digest`` (what ``tag`` names) was received or rejected before.

        Only verified receives and remembered rejections (under the current trust
        policy) are in the ledger, so the same bytes would be answered the same
        way: the outcome is given from the ledger, with no fetch.
        """
        if digest in self.listed:
            return True  # the same bytes under another tag, already answered
        record = self.ledger.get(digest)
        earlier = None if record is not None else self.ledger.rejection(digest, self.policy)
        if record is None and earlier is None:
            return False
        self.listed.add(digest)
        if record is not None:
            self.outcomes.append(Outcome(tag, "already-received", record=record))
        else:
            self.outcomes.append(Outcome(tag, "rejected-before", earlier=earlier))
        return True

    def take(self, tag: str, since: datetime | None) -> bool | None:
        """Fetch, check and maybe receive one tag: True if received; None if unfetchable."""
        entry = self.receiver.inbox_entry(tag)
        digest = entry.digest
        if digest is not None:
            if digest in self.listed:
                return False  # the same bytes under another tag verify the same way
            self.listed.add(digest)
        message = entry.message
        if message is not None and since and message.created_at < since:
            return False
        earlier = self.ledger.rejection(digest, self.policy) if digest else None
        if earlier is not None:
            self.outcomes.append(Outcome(tag, "rejected-before", message, earlier=earlier))
            return False
        if message is None:
            assert entry.error is not None
            self.reject(tag, digest, None, entry.error, "manifest")
            return None if digest is None else False
        return self.receive(tag, message)

    def failed_unexpectedly(self, tag: str, exc: Exception) -> None:
        """A failure of no known kind (a parser that chokes, a bug): this run's rejection.

        Logged once with its traceback; never remembered, so a fixed bug or a
        message that only tripped one run is tried again.
        """
        self.unexpected.log(
            logging.ERROR,
            tag,
            "message %s failed unexpectedly (%s); skipped",
            shown(tag),
            type(exc).__name__,
            exc_info=True,
        )
        error = ProtocolError(f"handling it failed unexpectedly ({type(exc).__name__})")
        error.__cause__ = exc
        self.outcomes.append(Outcome(tag, "rejected", error=error))

    def receive(self, tag: str, message: Message) -> bool:
        """Verify, de-duplicate and materialise one message; True if it was received."""
        if self.ledger.get(message.digest):
            self.outcomes.append(Outcome(tag, "already-received", message))
            return False
        receiver = self.receiver
        step: Step = "signer"
        try:
            signer = receiver.verify_signer(message)
            step = "freshness"
            receiver.check_fresh(message)
            if not self.seen.first_time(message, signer):
                return False  # the same message under another tag, in this run
            if self.ledger.get(message.digest, sender=signer.name, message_id=message.message_id):
                self.outcomes.append(Outcome(tag, "already-received", message))
                return False
            step = "sealed"
            message = receiver.open_message(message, signer)
            step = "chunks"
            verified = VerifiedMessage(message, signer)
            if self.progress is None:
                path = receiver.materialise(verified, self.out_dir)
            else:
                with self.progress(message) as sink:
                    path = receiver.materialise(verified, self.out_dir, on_progress=sink)
        except DockerCommsError as exc:
            self.reject(tag, message.digest, message, exc, step)
            return False
        self.ledger.record(
            message.digest, message.message_id, signer.name, message.filename, str(path)
        )
        receipt = None
        if self.receipt_signer is not None and self.answers is not None:
            receipt = _acknowledge(receiver, self.answers, self.receipt_signer, message)
        self.outcomes.append(Outcome(tag, "received", message, path, signer.identity, receipt))
        return True

    def reject(
        self,
        tag: str,
        digest: str | None,
        message: Message | None,
        error: DockerCommsError,
        step: Step,
    ) -> None:
        """Report ``error`` as this run's rejection (or deferral), and remember it if it lasts."""
        if disposition_of(error) is not Disposition.REJECTED:
            # Not the message's fault (registry hiccup or refusal, full disk, my own
            # Sigstore set-up): the next run tries again.
            log.debug("deferred %s: %s", tag, error.diagnostics())
            self.outcomes.append(Outcome(tag, "deferred", message, error=error))
            return
        log.debug("rejected %s: %s", tag, error.diagnostics())
        self.outcomes.append(Outcome(tag, "rejected", message, error=error))
        policy = _remembered_under(error, step, self.policy)
        if digest is not None and policy is not None:
            self.ledger.remember_rejection(
                digest, policy, type(error).__name__, error.diagnostics()
            )


def _remembered_under(error: DockerCommsError, step: Step, policy: str) -> str | None:
    """The policy a rejection is remembered under (``""``: any), or None to try again."""
    if disposition_of(error) is not Disposition.REJECTED:
        return None  # the registry, the configuration: not a verdict on the message
    if isinstance(error, PlaintextMismatchError):
        return ""  # the signed ciphertext opened to other bytes: the sender's doing
    if isinstance(error, DigestMismatchError):
        return None  # the registry served other bytes than the signed ones
    if step == "signer":
        return policy  # trust decided: a new trust entry may change the verdict
    if step == "sealed" and isinstance(error, NotSealedError | NotARecipientError):
        return policy  # like trust: retried when the policy (or who must seal) changes
    if step == "freshness":
        return "" if isinstance(error, ExpiredError) else None  # the future comes
    return ""  # the manifest or a chunk blob, both content-addressed


def _acknowledge(
    receiver: Receiver, answers: ReceiptStore, signer: DigestSigner, message: Message
) -> str | None:
    """Answer ``accepted`` unless it was answered so already (by a mount, say); the receipt."""
    earlier = answers.get(message.digest)
    if not supersedes("accepted", earlier):
        assert earlier is not None
        return earlier.receipt_digest
    try:
        receipt = send_receipt(
            receiver.client,
            signer,
            me=receiver.me,
            message=message,
            status="accepted",
            verified=True,
        )
    except DockerCommsError as exc:
        log.warning("receipt for %s not sent: %s", message.digest[:19], exc.diagnostics())
        return None
    answers.record(Answer(message.digest, "accepted", receipt.digest, None, _now()))
    return receipt.digest


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
