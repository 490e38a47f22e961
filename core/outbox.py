"""The outbox as the rest of dockercomms sees it: where a dropped file goes, sending, receipts.

``send``, the syncer's push worker and receipt poller, and the mount's
``outbox/`` come through here; the registry client and the sender stay behind.

Caveats first:

* :func:`route` is the one rule for where a file dropped at ``outbox/PATH`` goes:
  ``outbox/<recipient>/.../FILE`` to that recipient under FILE's own name,
  ``outbox/FILE`` to the default recipient, and a work-in-progress name
  (:func:`is_temporary_name`) anywhere on the path never. The syncer's watcher
  and the mount's ``outbox/`` both ask it. ``<recipient>`` may be a group
  (``outbox/team/``): it is expanded to its members when the file is sent
  (:meth:`Outbox.plan`), and a queued file keeps the members of its first try.
* :meth:`Outbox.send` seals (SPEC 9) whenever every recipient's age recipient is
  known, else fails with :class:`~.errors.NoAgeRecipientError` before anything
  is pushed, unless plaintext was asked for (``SendRequest.plaintext``) or
  allowed (``Settings.send_plaintext``).
* :class:`Outbox` is thread-safe: each call runs on the calling thread's client
  (:class:`~dockercomms.core.clients.ClientPool`).
* A receipt for what I sent counts only if it verifies as the recipient's
  (:meth:`Outbox.latest_receipt`); anyone can tag one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from dockercomms.core._internal.manifest import Descriptor
from dockercomms.core._internal.receipts import Skipped, latest_verified_receipt
from dockercomms.core._internal.recipients import (
    ContactRefresher,
    NoRefresh,
    RecipientPlan,
    plan_recipients,
)
from dockercomms.core._internal.send import (
    ChunkDone,
    Delivery,
    DigestSigner,
    Sender,
    SendJournal,
    SendRequest,
    SentMessage,
)
from dockercomms.core.age_keys import load_identity_file
from dockercomms.core.clients import ClientPool
from dockercomms.core.errors import NotFoundError

if TYPE_CHECKING:
    from dockercomms.core.workspace import Workspace

__all__ = [
    "ChunkDone",
    "ContactRefresher",
    "Delivery",
    "Descriptor",
    "Outbox",
    "RecipientPlan",
    "Route",
    "SendJournal",
    "SendRequest",
    "SentMessage",
    "is_temporary_name",
    "route",
]

_TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".swx")
# Vim swap files run .swp, .swo, .swn ... down to .swa as earlier ones exist.
_VIM_SWAP = re.compile(r"\.sw[a-p]$", re.IGNORECASE)


def is_temporary_name(name: str) -> bool:
    """True for names that are work in progress, never a file someone meant to send.

    Dotfiles (``.x.swp``, ``.#lock``, ``.~lock.x#``), backups ending in ``~``,
    Emacs ``#autosave#``, Office ``~$lock`` files, vim swap files and partial
    downloads (``.part``, ``.crdownload``, ``.tmp``...).
    """
    if not name or name.startswith((".", "~$")) or name.endswith("~"):
        return True
    if name.startswith("#") and name.endswith("#"):
        return True
    lowered = name.lower()
    return lowered.endswith(_TEMP_SUFFIXES) or bool(_VIM_SWAP.search(lowered))


@dataclass(frozen=True)
class Route:
    """Where a file in the outbox goes.

    Attributes:
        recipient: who gets it; None for a file directly in the outbox when there
            is no default recipient (it waits, and is reported).
        filename: the name announced to the recipient (the file's own).
    """

    recipient: str | None
    filename: str


def route(relative: PurePath, default_recipient: str | None) -> Route | None:
    """Where the file at ``outbox/relative`` goes; None if it is never sent."""
    parts = relative.parts
    if not parts or any(is_temporary_name(part) for part in parts):
        return None
    if len(parts) == 1:
        return Route(default_recipient, parts[0])
    return Route(parts[0], parts[-1])


class Outbox:
    """Sending as me to one repository, and what became of what I sent."""

    def __init__(
        self,
        workspace: Workspace,
        pool: ClientPool,
        *,
        owns_pool: bool = False,
        refresher: ContactRefresher | None = None,
    ) -> None:
        self.workspace = workspace
        self._pool = pool
        self._owns_pool = owns_pool
        self.refresher: ContactRefresher = refresher or NoRefresh()
        self._lock = threading.Lock()
        self._signer: DigestSigner | None = None

    def _sender(self) -> Sender:
        with self._lock:
            if self._signer is None:
                self._signer = self.workspace.signer()
            signer = self._signer
        return Sender(
            self._pool.client(), signer, self.workspace.identity, limits=self.workspace.limits
        )

    def send(
        self,
        request: SendRequest,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_chunk: ChunkDone | None = None,
        journal: SendJournal | None = None,
    ) -> SentMessage:
        """Send ``request.path``: chunks, manifests, signatures, and only then the inbox tags.

        A request without a pinned ``plan`` is resolved first (:meth:`plan`), so
        nothing is pushed when a recipient cannot be sealed to.
        """
        if request.plan is None:
            request.plan = self.plan(request.targets, plaintext=request.plaintext)
        return self._sender().send(
            request, on_progress=on_progress, on_chunk=on_chunk, journal=journal
        )

    def plan(self, targets: tuple[str, ...], *, plaintext: bool = False) -> RecipientPlan:
        """Whom ``targets`` (names and groups) reach, and whether it is sealed."""
        workspace = self.workspace
        return plan_recipients(
            targets,
            workspace.trust_policy,
            me=workspace.identity,
            my_age_recipient=self._my_age_recipient,
            plaintext=plaintext,
            plaintext_fallback=workspace.settings.send_plaintext,
            refresher=self.refresher,
        )

    def _my_age_recipient(self) -> str | None:
        path = self.workspace.paths.age_identity_file
        if not path.exists():
            return None
        return load_identity_file(path).recipient

    def is_tagged(self, tag: str) -> bool:
        """The registry has ``tag`` (a send that got as far as tagging before a crash)."""
        try:
            self._pool.client().fetch_manifest(tag)
        except NotFoundError:
            return False
        return True

    def receipt_tags(self) -> list[str]:
        """Every receipt tag in the repository (whoever made it, whatever it answers)."""
        return self._pool.client().list_tags("receipt-")

    def latest_receipt(
        self,
        digest: str,
        *,
        recipient: str,
        on_ignored: Skipped | None = None,
        on_unreadable: Skipped | None = None,
    ) -> str | None:
        """The status of the newest receipt for my message ``digest`` that ``recipient`` signed.

        Receipts claiming ``recipient`` that do not verify as exactly that
        recipient go to ``on_ignored`` (with why, escaped); unreadable ones to
        ``on_unreadable``.
        """
        client = self._pool.client()
        receipt = latest_verified_receipt(
            client,
            self.workspace.receiver(client),
            digest,
            sender=recipient,
            recipient=self.workspace.identity,
            on_ignored=on_ignored,
            on_unreadable=on_unreadable,
        )
        return receipt.status if receipt is not None else None

    def renew(self) -> None:
        """Drop this thread's connections (they may hold dead sockets after an outage)."""
        self._pool.renew()

    def close(self) -> None:
        """Close the client pool if this outbox made it."""
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
