"""Receiving everything new into a folder: the loop ``recv`` and the syncer share.

Each message is verified and materialised on its own; a bad one becomes a
``rejected`` outcome and the loop goes on. The ledger makes it idempotent: a
message already received is neither downloaded nor acknowledged again, and a
message already rejected costs one manifest fetch and is reported as
``rejected-before`` (not again as news).

Caveats first:

* De-duplication happens among verified messages only
  (:class:`~dockercomms.core.receive.SeenMessages`); an unverified tag can
  neither hide nor stand in for a verified one.
* A rejection is remembered by manifest digest only when the message itself
  decided it: under the trust policy's fingerprint for the signature and signer
  steps (retried when ``trust.json`` changes), for ever for a malformed,
  expired or corrupt-chunked message. What the registry or the local disk did
  (unreachable, a blob missing or not hashing to its digest, a full disk) and a
  message dated in the future are tried again on the next run.
* Rejections and deferrals are logged at DEBUG only: the caller reports the
  outcomes (``recv`` prints them, the syncer keeps them in its status), so a
  rejection is never shown twice, even with ``-v``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from dockercomms.core import protocol as p
from dockercomms.core.errors import (
    DigestMismatchError,
    Disposition,
    DockerCommsError,
    ExpiredError,
    disposition_of,
)
from dockercomms.core.ledger import ReceivedLedger, RejectedRecord
from dockercomms.core.manifest import Message
from dockercomms.core.receipts import send_receipt
from dockercomms.core.receive import Receiver, SeenMessages, VerifiedMessage
from dockercomms.core.send import DigestSigner

log = logging.getLogger(__name__)

ProgressFactory = Callable[[Message], Any]
#: The step that rejected a message, which decides whether and how it is remembered.
Step = Literal["manifest", "signer", "freshness", "chunks"]


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
    """

    tag: str
    status: str
    message: Message | None = None
    path: Path | None = None
    signer_identity: str | None = None
    receipt: str | None = None
    error: DockerCommsError | None = None
    earlier: RejectedRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict for ``--json`` output."""
        out: dict[str, Any] = {"tag": self.tag, "status": self.status}
        if self.message is not None:
            out |= summary(self.message)
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
        "total_bytes": message.total_bytes,
        "created_at": p.format_timestamp(message.created_at),
        "expires_at": p.format_timestamp(message.expires_at),
    }


def receive_new(
    receiver: Receiver,
    ledger: ReceivedLedger,
    out_dir: Path,
    *,
    receipt_signer: DigestSigner | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    progress: ProgressFactory | None = None,
) -> list[Outcome]:
    """Verify and write every new message to me into ``out_dir``."""
    intake = _Intake(receiver, ledger, out_dir, receipt_signer, progress)
    received = 0
    complete = True  # every tag's manifest seen: rejections of other digests can go
    for entry in receiver.inbox():
        if limit is not None and received >= limit:
            complete = False
            break
        if entry.digest is None:
            complete = False  # the manifest could not be fetched this time
        else:
            intake.listed.add(entry.digest)
        message = entry.message
        if message is not None and since and message.created_at < since:
            continue
        earlier = ledger.rejection(entry.digest, intake.policy) if entry.digest else None
        if earlier is not None:
            intake.outcomes.append(Outcome(entry.tag, "rejected-before", message, earlier=earlier))
            continue
        if message is None:
            assert entry.error is not None
            intake.reject(entry.tag, entry.digest, None, entry.error, "manifest")
            continue
        if intake.receive(entry.tag, message):
            received += 1
    if complete:
        ledger.keep_rejections(intake.listed, intake.policy)
    return intake.outcomes


class _Intake:
    """One run of :func:`receive_new`: its outcomes, and what it has seen."""

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
        self.policy = receiver.verifier.policy_fingerprint
        self.outcomes: list[Outcome] = []
        self.seen = SeenMessages()
        self.listed: set[str] = set()

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
        if self.receipt_signer is not None:
            receipt = _acknowledge(receiver, self.ledger, self.receipt_signer, message)
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
    if isinstance(error, DigestMismatchError):
        return None  # the registry served other bytes than the signed ones
    if step == "signer":
        return policy  # trust decided: a new trust entry may change the verdict
    if step == "freshness":
        return "" if isinstance(error, ExpiredError) else None  # the future comes
    return ""  # the manifest or a chunk blob, both content-addressed


def _acknowledge(
    receiver: Receiver, ledger: ReceivedLedger, signer: DigestSigner, message: Message
) -> str | None:
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
    ledger.set_receipt(message.digest, receipt.digest)
    return receipt.digest
