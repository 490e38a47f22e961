"""Who a send goes to, and whether it is sealed (SPEC 9): names and groups -> age recipients.

Caveats first:

* A target is a group name (``TrustPolicy.groups``) or a recipient name; a group
  expands to its members, without me (I am already a reader of everything I
  seal). Names given explicitly are kept even if one is mine. Duplicates go, the
  first mention's order stays.
* A message is sealed to everyone or to no one: the layers are uploaded once for
  every recipient. It is sealed when every recipient's age recipient is known
  (and so is mine: the sender is always a recipient, so ``sent/`` reads it back).
  Otherwise sending fails with :class:`~.errors.NoAgeRecipientError` naming the
  fix, unless the caller allows plaintext (``send --plaintext`` forces it,
  ``Settings.send_plaintext`` only falls back to it).
* Before a name's contact is read, :class:`ContactRefresher` may bring it up to
  date from the repository's cards (SPEC 9.1); the default does nothing. A
  refresher never raises for a bad card, so a hostile repository can delay a
  send at most by the refresher's own bounds, never change whom it reaches.
* The trust file is local and the user's, but its age recipients are still
  parsed strictly: a typo there must fail the send, not seal to nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from dockercomms.core._internal.sealing import MAX_SEAL_RECIPIENTS, AgeRecipient
from dockercomms.core.age_keys import parse_recipient
from dockercomms.core.errors import ConfigError, NoAgeRecipientError
from dockercomms.core.names import check_name
from dockercomms.core.trust import TrustPolicy
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

#: Most manifests one send pushes; the age recipients (these and mine) must fit
#: :data:`~.sealing.MAX_SEAL_RECIPIENTS`.
MAX_RECIPIENTS: Final = MAX_SEAL_RECIPIENTS - 1


class ContactRefresher(Protocol):
    """Keeps a name's :class:`~dockercomms.core.trust.Contact` as current as its cards allow.

    ``refresh(name)`` makes the trust store's contact for ``name`` as current as
    the repository's newest verified card allows; bounded, rate-limited; it never
    raises for a bad card, it only logs or records the reason.
    """

    def refresh(self, name: str) -> None:
        """Bring ``name``'s contact up to date (or leave it as it is)."""
        ...


class NoRefresh:
    """The default :class:`ContactRefresher`: the trust file as it is."""

    def refresh(self, name: str) -> None:
        """Nothing to do."""


@dataclass(frozen=True)
class RecipientPlan:
    """Whom one send reaches and how: pinned by the push queue at its first upload.

    Attributes:
        names: one manifest (recipient, tag, signature) per name, in order.
        seal_to: the ``age1…`` recipients every sealed piece is encrypted to
            (every recipient's and mine), sorted; empty for a plaintext send.
    """

    names: tuple[str, ...]
    seal_to: tuple[str, ...] = ()

    @property
    def sealed(self) -> bool:
        """The message is sealed (SPEC 9), not plaintext."""
        return bool(self.seal_to)

    def age_recipients(self) -> list[AgeRecipient]:
        """``seal_to`` as pyrage recipients (each checked again)."""
        return [parse_recipient(text, "age recipient") for text in self.seal_to]


def expand(
    targets: Iterable[str], groups: dict[str, tuple[str, ...]], *, me: str
) -> tuple[str, ...]:
    """Recipient names for ``targets``: groups expanded (without ``me``), duplicates dropped."""
    names: list[str] = []
    for target in targets:
        members = groups.get(target)
        if members is None:
            candidates: Sequence[str] = (target,)
        else:
            candidates = [member for member in members if member != me]
            if not candidates:
                raise ConfigError(f"group '{shown(target)}' has no members but me; nothing to send")
        for name in candidates:
            check_name(name, "recipient")
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError("no recipient given")
    if len(names) > MAX_RECIPIENTS:
        raise ConfigError(f"{len(names)} recipients; one message reaches at most {MAX_RECIPIENTS}")
    return tuple(names)


def plan_recipients(
    targets: Iterable[str],
    load_policy: Callable[[], TrustPolicy],
    *,
    me: str,
    my_age_recipient: Callable[[], str | None],
    plaintext: bool = False,
    plaintext_fallback: bool = False,
    refresher: ContactRefresher | None = None,
) -> RecipientPlan:
    """Resolve ``targets`` into a :class:`RecipientPlan` (see the module caveats).

    ``plaintext`` forces a plaintext send (``send --plaintext``);
    ``plaintext_fallback`` (``Settings.send_plaintext``) sends plaintext only
    when some age recipient is unknown. ``my_age_recipient`` returns mine, or
    None when this identity has no age key yet.
    """
    names = expand(targets, load_policy().groups, me=me)
    if plaintext:
        return RecipientPlan(names)
    refresh = refresher or NoRefresh()
    for name in names:
        refresh.refresh(name)
    policy = load_policy()
    mine = my_age_recipient()
    keys: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        # A note to myself is sealed to my own key, whatever the trust file says.
        recipient = mine if name == me and mine else policy.contact(name).age_recipient
        if recipient:
            parse_recipient(recipient, f"the age recipient trusted for '{shown(name)}'")
            keys[name] = recipient
        else:
            missing.append(name)
    if not missing and mine is not None:
        parse_recipient(mine, "my age recipient")
        return RecipientPlan(names, tuple(sorted({*keys.values(), mine})))
    if plaintext_fallback:
        log.warning(
            "sending to %s unsealed: %s (send_plaintext is on)",
            ", ".join(shown(name) for name in names),
            _why_not_sealed(missing, mine is None),
        )
        return RecipientPlan(names)
    raise NoAgeRecipientError(
        _why_not_sealed(missing, mine is None) + _fixes(missing, mine is None)
    )


def _why_not_sealed(missing: list[str], no_key_of_mine: bool) -> str:
    reasons = []
    if missing:
        who = ", ".join(f"'{shown(name)}'" for name in missing)
        reasons.append(f"no age recipient is known for {who}, so the message cannot be sealed")
    if no_key_of_mine:
        reasons.append("this identity has no age key, so it could not read back what it seals")
    return "; ".join(reasons)


def _fixes(missing: list[str], no_key_of_mine: bool) -> str:
    fixes = [
        f"'dockercomms trust add {shown(name)} --card FILE' with their contact card "
        "(or wait until their signed card is published in the repository)"
        for name in missing
    ]
    if no_key_of_mine:
        fixes.append("'dockercomms init' to add my age key")
    fixes.append(
        "or, to send it unsealed anyway, 'send --plaintext' "
        "('config set send_plaintext true' for the sync and the mount)"
    )
    return "; nothing was sent. Run " + "; ".join(fixes)
