"""Receiving everything new into a folder: the loop ``recv`` and the syncer share.

Each message is verified and materialised on its own; a bad one becomes a
``rejected`` outcome and the loop goes on. The ledger makes it idempotent: a
message already received is neither downloaded nor acknowledged again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dockercomms.core import protocol as p
from dockercomms.core.errors import ConfigError, DockerCommsError, OutputError, RegistryError
from dockercomms.core.ledger import ReceivedLedger
from dockercomms.core.manifest import Message
from dockercomms.core.receipts import send_receipt
from dockercomms.core.receive import Receiver
from dockercomms.core.send import DigestSigner

log = logging.getLogger(__name__)

ProgressFactory = Callable[[Message], Any]


@dataclass(frozen=True)
class Outcome:
    """What happened to one inbox entry.

    Attributes:
        status: ``received``, ``already-received``, ``rejected`` (the message is
            bad), or ``deferred`` (the registry or the local disk failed us; the next run
            tries again).
        error: the rejection, when rejected.
        receipt: digest of the receipt we sent, if any.
    """

    tag: str
    status: str
    message: Message | None = None
    path: Path | None = None
    signer_identity: str | None = None
    receipt: str | None = None
    error: DockerCommsError | None = None

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
    outcomes: list[Outcome] = []
    received = 0
    for entry in receiver.inbox():
        if limit is not None and received >= limit:
            break
        message = entry.message
        if message is None:
            assert entry.error is not None
            outcomes.append(_rejected(entry.tag, None, entry.error))
            continue
        if since and message.created_at < since:
            continue
        if ledger.get(message.digest, message.message_id):
            outcomes.append(Outcome(entry.tag, "already-received", message))
            continue
        try:
            verified = receiver.verify_message(message)
            if progress is None:
                path = receiver.materialise(verified, out_dir)
            else:
                with progress(message) as sink:
                    path = receiver.materialise(verified, out_dir, on_progress=sink)
        except DockerCommsError as exc:
            outcomes.append(_rejected(entry.tag, message, exc))
            continue
        received += 1
        ledger.record(
            message.digest, message.message_id, message.sender, message.filename, str(path)
        )
        receipt = None
        if receipt_signer is not None:
            receipt = _acknowledge(receiver, ledger, receipt_signer, message)
        outcomes.append(
            Outcome(entry.tag, "received", message, path, verified.signer.identity, receipt)
        )
    return outcomes


def _rejected(tag: str, message: Message | None, error: DockerCommsError) -> Outcome:
    if (isinstance(error, RegistryError) and error.temporary) or isinstance(
        error, OutputError | ConfigError
    ):
        # Not the message's fault (registry hiccup, full disk, my own Sigstore set-up):
        # the next run tries again.
        log.warning("deferred %s: %s", tag, error.diagnostics())
        return Outcome(tag, "deferred", message, error=error)
    log.warning("rejected %s: %s", tag, error.diagnostics())
    return Outcome(tag, "rejected", message, error=error)


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
