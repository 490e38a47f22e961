"""What an inbox listing changes: new, gone, expired, aliased, rejected, retried. Pure logic.

The mount's ``inbox/`` keeps what it listed; every poll asks :func:`tags_to_check`
which tags to verify, then :func:`reconcile` what the answers change, and only
applies the :class:`Changes` to its inodes. No I/O here, no clock of its own:
everything is a parameter, so every rule is unit-tested without a kernel.

The rules, in the order :func:`reconcile` applies them:

1. A listed message, a rejection or an alias whose tag is no longer in the
   registry is gone; an expired tag that is gone is forgotten.
2. A listed message whose ``expires_at`` (plus the receivers' clock skew) has
   passed is unlisted and its tag remembered as expired: not checked again.
3. Verified tags, oldest message first (by ``created_at``, then digest): a tag
   already listed (a retry) stays as it is and drops its failure, unless its
   chunks proved corrupt; a tag naming a message already listed under another
   tag (same digest, or the same verified sender and message id) becomes an
   alias of it; any other is new. Either way it leaves ``.rejected/``.
4. A tag that failed as expired is remembered as expired; one that failed as a
   rejection (``Disposition.REJECTED``) is listed in ``.rejected/``; anything
   else (registry trouble for that tag) is left unknown, so the next poll
   checks it again.

Which tags a poll checks: every tag not known yet; and when the trust policy
changed, every rejected tag and every listed message that failed at its last
``open()`` too, so trusting a sender makes their waiting messages appear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from dockercomms.core._internal.listing import CheckedTag
from dockercomms.core._internal.receive import CLOCK_SKEW
from dockercomms.core.errors import Disposition, ExpiredError


@dataclass(frozen=True)
class Listed:
    """What the inbox shows for one tag's verified message, as far as the rules care.

    Attributes:
        sender: the verified sender (the trust entry name).
        failing: its latest ``open()`` or ``read()`` failed as a rejection.
        corrupt: a chunk failed its digest or shape check (sticky).
    """

    digest: str
    sender: str
    message_id: str
    expires_at: datetime
    failing: bool = False
    corrupt: bool = False


@dataclass(frozen=True)
class InboxState:
    """The inbox as listed before a poll.

    Attributes:
        listed: verified messages by tag.
        rejected: tags listed in ``.rejected/``.
        aliases: tags naming a listed message, to the digest they name.
        expired: tags past their time to live, not checked again.
    """

    listed: Mapping[str, Listed] = field(default_factory=dict)
    rejected: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)
    expired: frozenset[str] = frozenset()

    @property
    def known(self) -> frozenset[str]:
        """Every tag the inbox already has an answer for."""
        return frozenset(self.listed) | self.rejected | frozenset(self.aliases) | self.expired


@dataclass(frozen=True)
class Changes:
    """What one poll changes; applied in this order.

    Attributes:
        gone: listed tags to unlist, no longer in the registry.
        unrejected: tags to take out of ``.rejected/`` (gone, or verified now).
        expired_now: listed tags to unlist, past their time to live.
        aliases: every alias after the poll (tag -> digest).
        expired: every expired tag after the poll.
        recovered: retried tags already listed that verified again.
        added: new messages to list, in this order.
        rejected: tags to list in ``.rejected/`` (with the check's error).
        transient: tags not checked this time (registry trouble); unknown still.
    """

    gone: list[str] = field(default_factory=list)
    unrejected: list[str] = field(default_factory=list)
    expired_now: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    expired: frozenset[str] = frozenset()
    recovered: list[CheckedTag] = field(default_factory=list)
    added: list[CheckedTag] = field(default_factory=list)
    rejected: list[CheckedTag] = field(default_factory=list)
    transient: list[CheckedTag] = field(default_factory=list)


def tags_to_check(state: InboxState, tags: Iterable[str], *, trust_changed: bool) -> list[str]:
    """The tags a poll verifies, in listing order (see the module notes)."""
    retry: frozenset[str] = frozenset()
    if trust_changed:
        retry = state.rejected | {tag for tag, item in state.listed.items() if item.failing}
    known = state.known
    return [tag for tag in tags if tag not in known or tag in retry]


def is_expired(expires_at: datetime, now: datetime) -> bool:
    """Past its time to live as receivers judge it (with their clock-skew allowance)."""
    return expires_at + CLOCK_SKEW < now


def reconcile(
    state: InboxState, tags: frozenset[str], checked: list[CheckedTag], now: datetime
) -> Changes:
    """What listing ``tags`` (and checking ``checked`` among them) changes, at ``now``."""
    # 1. Gone from the registry.
    gone = [tag for tag in state.listed if tag not in tags]
    unrejected = [tag for tag in state.rejected if tag not in tags]
    aliases = {tag: digest for tag, digest in state.aliases.items() if tag in tags}
    expired = {tag for tag in state.expired if tag in tags}
    remaining = {tag: item for tag, item in state.listed.items() if tag in tags}
    # 2. Expired while listed.
    expired_now = [tag for tag, item in remaining.items() if is_expired(item.expires_at, now)]
    for tag in expired_now:
        expired.add(tag)
        del remaining[tag]
    # 3. Verified: retried, aliased or new.
    recovered: list[CheckedTag] = []
    added: list[CheckedTag] = []
    verified = sorted((e for e in checked if e.error is None), key=_oldest_first)
    # Made only when something verified: an idle poll of 10,000 listed needs neither.
    by_digest = {item.digest: tag for tag, item in remaining.items()} if verified else {}
    by_id = (
        {(item.sender, item.message_id): tag for tag, item in remaining.items()} if verified else {}
    )
    rejected_now = state.rejected & tags
    for entry in verified:
        assert entry.message is not None
        message = entry.message
        existing = remaining.get(entry.tag)
        if existing is not None:
            if existing.digest == message.digest and not existing.corrupt:
                recovered.append(entry)
                if entry.tag in rejected_now:
                    unrejected.append(entry.tag)
            continue
        if entry.tag in rejected_now:
            unrejected.append(entry.tag)
        key = (message.sender, message.message_id)  # the verified sender: signer.name
        twin = by_digest.get(message.digest) or by_id.get(key)
        if twin is not None:
            aliases[entry.tag] = remaining[twin].digest
            continue
        added.append(entry)
        remaining[entry.tag] = Listed(message.digest, *key, message.expires_at)
        by_digest[message.digest] = entry.tag
        by_id[key] = entry.tag
    # 4. Failed: expired, rejected, or not checked this time.
    rejected: list[CheckedTag] = []
    transient: list[CheckedTag] = []
    for entry in checked:
        if entry.error is None:
            continue
        if isinstance(entry.error, ExpiredError):
            expired.add(entry.tag)
        elif entry.error.disposition is Disposition.REJECTED:
            rejected.append(entry)
        else:
            transient.append(entry)
    return Changes(
        gone=gone,
        unrejected=unrejected,
        expired_now=expired_now,
        aliases=aliases,
        expired=frozenset(expired),
        recovered=recovered,
        added=added,
        rejected=rejected,
        transient=transient,
    )


def _oldest_first(entry: CheckedTag) -> tuple[datetime, str]:
    assert entry.message is not None
    return (entry.message.created_at, entry.message.digest)
