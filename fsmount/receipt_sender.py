"""Receipts the mount sends: ``accepted`` on first read, ``rejected`` for bad content.

Caveats first:

* Only a message whose signature verified, by a signer trusted as exactly its
  claimed sender, is ever answered: the callers must hand over that
  :class:`VerifiedSigner`, and ``Inbox.answer`` refuses a signer under another
  name. Unsigned, untrusted, mismatched and expired messages get no receipt at
  all, so nobody can make the mount sign (or put words into) a receipt by
  pushing messages in a trusted sender's name.
* ``rejected`` answers a verified message whose own content then failed (a
  corrupt or ill-shaped chunk, a creation date in the future); the reason is
  escaped text (``errno_map.reason``).
* At most one receipt per message and status, whoever sends it: the one receipt
  store in ``core`` (``state.db``) is asked before sending, so a message
  ``recv`` answered is not answered again here, and a remount does not answer
  again. ``accepted`` is final; a ``rejected`` one may be followed by
  ``accepted``. A send that failed (registry down, keyless token missing) is
  not recorded and is tried again the next time the message is read or listed,
  at most once per mount per message.
* ``--no-receipts`` turns off both kinds: a user who said "no receipts" does not
  want the mount to write to the registry on their behalf at all.
* Sending happens in the background (a task in the mount's nursery), so a
  ``read()`` never waits for a receipt.
"""

from __future__ import annotations

import logging

import trio

from dockercomms.core.errors import DockerCommsError
from dockercomms.core.inbox import Inbox, Message, VerifiedSigner
from dockercomms.core.status import ReceiptStatistics
from dockercomms.core.untrusted import shown
from dockercomms.fsmount.worker_threads import WorkerThreads

log = logging.getLogger(__name__)


class ReceiptSender:
    """Answers messages once each, in the background.

    Attributes:
        enabled: False with ``--no-receipts``.
        failures: receipts that could not be sent (kept for ``.status``).
    """

    def __init__(
        self,
        inbox: Inbox,
        threads: WorkerThreads,
        nursery: trio.Nursery,
        *,
        enabled: bool,
        ttl_seconds: int,
    ) -> None:
        self.inbox = inbox
        self.threads = threads
        self.enabled = enabled
        self.failures = 0
        self._nursery = nursery
        self._ttl_seconds = ttl_seconds
        self._tried: set[str] = set()

    def statistics(self, answered: int) -> ReceiptStatistics:
        """For ``.status``; ``answered`` is the receipt store's count (a database read)."""
        return ReceiptStatistics(self.enabled, answered, self.failures)

    def accepted(self, message: Message, signer: VerifiedSigner) -> None:
        """The first successful read of ``message``, which ``signer`` signed, happened."""
        self._schedule(message, "accepted", None, signer)

    def rejected(self, message: Message, reason: str, signer: VerifiedSigner) -> None:
        """``message``, whose signature by ``signer`` verified, failed on its own content."""
        self._schedule(message, "rejected", reason, signer)

    def _schedule(
        self, message: Message, status: str, reason: str | None, signer: VerifiedSigner
    ) -> None:
        if not self.enabled:
            return
        key = f"{status} {message.digest}"
        if key in self._tried:
            return
        self._tried.add(key)
        self._nursery.start_soon(self._send, message, status, reason, signer)

    async def _send(
        self, message: Message, status: str, reason: str | None, signer: VerifiedSigner
    ) -> None:
        try:
            answer = await self.threads.run(
                self.inbox.answer,
                message,
                status,
                signer,
                reason=reason,
                ttl_seconds=self._ttl_seconds,
            )
        except (DockerCommsError, OSError) as exc:
            self.failures += 1
            text = exc.diagnostics() if isinstance(exc, DockerCommsError) else str(exc)
            log.warning("%s receipt for %s not sent: %s", status, message.digest[:19], shown(text))
            return
        except Exception:
            # A background job must never take the mount down with it.
            self.failures += 1
            log.exception("%s receipt for %s failed unexpectedly", status, message.digest[:19])
            return
        if answer is not None:
            log.info("sent %s receipt for %s", status, message.digest[:19])
