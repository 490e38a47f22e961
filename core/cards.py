"""My card (SPEC 9.1) and my age identity, as the CLI, the mount and the syncer see them.

Caveats first:

* My card says: my name, my current age recipient and its date, signed like a
  message by my signer. Its ``created_at`` is the ``# created:`` stamp of my
  current age key (now, for a key file without one), so publishing the same key
  again (``card publish`` after moving to another repository) makes a card of
  the same date, which readers take as nothing new, and a rotation always makes
  a newer one.
* The card *file* (``key export``) and the card *manifest* carry the same facts;
  the file adds my signing key or keyless identity, which a reader must trust
  before any card in the repository counts.
* Publishing needs the registry and, for keyless identities, a Sigstore token:
  callers that must not fail for it (``init``) catch :class:`DockerCommsError`
  and say how to publish later.
* Peers' cards are read by :func:`card_directory` (``CardDirectory.refresh``), the
  send path's ``ContactRefresher``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dockercomms.core import protocol
from dockercomms.core._internal.cards import CardDirectory, find_card, publish_card
from dockercomms.core._internal.registry.retry import RetryPolicy
from dockercomms.core.age_keys import (
    AgeKeys,
    create_identity_file,
    load_identity_file,
    rotate_identity_file,
)
from dockercomms.core.contact_card import CARD_SIGSTORE_INSTANCES, ContactCard
from dockercomms.core.errors import ConfigError, DockerCommsError
from dockercomms.core.keys import signing_key

if TYPE_CHECKING:
    from dockercomms.core.clients import ClientPool
    from dockercomms.core.workspace import RegistryOptions, Workspace

__all__ = [
    "QUICK_RETRY",
    "CardDirectory",
    "CardState",
    "Published",
    "age_identity",
    "card_directory",
    "card_state",
    "my_card",
    "publish_my_card",
    "quick",
    "rotate_age_identity",
]

#: For publishing at ``init`` and for ``status``: say soon that the registry is not there.
QUICK_RETRY = RetryPolicy(attempts=2, base_delay=0.5, total_budget=6.0, connect_timeout=3.0)


@dataclass(frozen=True)
class Published:
    """A card I published.

    Attributes:
        tag: its ``card-`` tag.
        digest: its manifest digest.
        age_recipient: the recipient it names.
        created_at: its ``created_at``.
        repository: where.
    """

    tag: str
    digest: str
    age_recipient: str
    created_at: datetime
    repository: str


@dataclass(frozen=True)
class CardState:
    """Whether my card is in the repository, and names my current age key.

    Attributes:
        state: ``current`` (my newest verified card names my current age key),
            ``outdated`` (it names another), ``missing`` (none verifies as me),
            ``unknown`` (the repository could not be read, or I have no age key).
        tag: the newest verified card's tag, when there is one.
        created_at: its ``created_at``.
        detail: what to do, or why the state is unknown.
    """

    state: str
    tag: str = ""
    created_at: datetime | None = None
    detail: str = ""


def age_identity(workspace: Workspace) -> tuple[AgeKeys, bool]:
    """My age identities, made first when I have none; and whether they were just made."""
    path = workspace.paths.age_identity_file
    if path.exists() or path.is_symlink():
        return load_identity_file(path), False
    return create_identity_file(path), True


def rotate_age_identity(workspace: Workspace) -> AgeKeys:
    """A new current age identity, the old ones kept to open what was sealed to them."""
    path = workspace.paths.age_identity_file
    now = datetime.now(UTC).replace(microsecond=0)
    # The new key's card must be newer than the old one's, even within one second;
    # an unreadable file is reported by the rotation itself.
    with contextlib.suppress(ConfigError):
        now = max(now, _created_at(load_identity_file(path)) + timedelta(seconds=1))
    return rotate_identity_file(path, now=now)


def my_card(workspace: Workspace, keys: AgeKeys | None = None) -> ContactCard:
    """The card of this identity: name, current age recipient, and its signer."""
    keys = keys or load_identity_file(workspace.paths.age_identity_file)
    created = _created_at(keys)
    settings = workspace.settings
    if settings.signing == "key":
        pem = signing_key(workspace.paths.key_file).public_pem
        return ContactCard.for_key(settings.identity, pem, keys.recipient, created)
    mine = [e for e in workspace.trust_policy().identities() if e.name == settings.identity]
    if not mine:
        raise ConfigError(
            f"no keyless trust entry for {settings.identity}, so a card cannot say who signs "
            f"as you: dockercomms trust add {settings.identity} --identity CERT-IDENTITY "
            "--issuer URL"
        )
    instance = settings.sigstore_trust if settings.sigstore_trust in CARD_SIGSTORE_INSTANCES else ""
    entry = mine[0]
    return ContactCard.for_keyless(
        settings.identity, entry.identity, entry.issuer, keys.recipient, created, sigstore=instance
    )


def publish_my_card(
    workspace: Workspace, options: RegistryOptions | None = None, keys: AgeKeys | None = None
) -> Published:
    """Sign and push my card to the repository (SPEC 9.1).

    Without ``options``: the settings' repository, with credentials from the
    environment or the docker config, as a command without registry flags has.
    """
    if options is None:
        from dockercomms.core.workspace import RegistryOptions

        options = RegistryOptions.from_flags()
    card = my_card(workspace, keys)
    with workspace.client(options) as client:
        done = publish_card(client, workspace.signer(), card.claim)
    repository = str(workspace.repository(options))
    return Published(done.tag, done.digest, card.age_recipient, card.created_at, repository)


def card_state(workspace: Workspace, options: RegistryOptions | None = None) -> CardState:
    """Whether my newest verified card in the repository names my current age key."""
    try:
        keys = load_identity_file(workspace.paths.age_identity_file)
    except ConfigError as exc:
        return CardState("unknown", detail=f"{exc.diagnostics()}; 'dockercomms init' makes one")
    try:
        with workspace.client(options) as client:
            found = find_card(client, workspace.verifier(), workspace.identity)
    except DockerCommsError as exc:
        return CardState("unknown", detail=f"cannot read the repository: {exc.diagnostics()}")
    if found.claim is None:
        return CardState("missing", detail="publish it with 'dockercomms card publish'")
    claim = found.claim
    if claim.age_recipient != keys.recipient:
        return CardState(
            "outdated",
            found.tag,
            claim.created_at,
            "it names an older age key: publish again with 'dockercomms card publish'",
        )
    return CardState("current", found.tag, claim.created_at)


def card_directory(
    workspace: Workspace, pool: ClientPool, *, interval_seconds: float
) -> CardDirectory:
    """The ``ContactRefresher`` of ``workspace``: peers' cards over ``pool``'s clients."""
    from dockercomms.core._internal.signing.verify import BundleVerifier

    return CardDirectory(
        pool.client,
        workspace.paths.trust_file,
        lambda policy: BundleVerifier(policy, workspace.trusted_root),
        interval_seconds=interval_seconds,
    )


def quick(options: RegistryOptions | None) -> RegistryOptions:
    """``options`` with :data:`QUICK_RETRY` (for ``init`` and ``status``)."""
    from dockercomms.core.workspace import RegistryOptions

    return replace(options or RegistryOptions.from_flags(), retry=QUICK_RETRY)


def _created_at(keys: AgeKeys) -> datetime:
    try:
        return protocol.parse_timestamp(keys.current.created)
    except ValueError:
        return datetime.now(UTC).replace(microsecond=0)
