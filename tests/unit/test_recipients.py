"""Names and groups -> recipients with age keys, and the plaintext decision (SPEC 9)."""

from __future__ import annotations

import pytest
from pyrage import x25519

from dockercomms.core._internal.recipients import MAX_RECIPIENTS, expand, plan_recipients
from dockercomms.core.errors import ConfigError, NoAgeRecipientError
from dockercomms.core.trust import Contact, TrustPolicy

BOB = str(x25519.Identity.generate().to_public())
CAROL = str(x25519.Identity.generate().to_public())
MINE = str(x25519.Identity.generate().to_public())


def policy(**keys: str) -> TrustPolicy:
    trust = TrustPolicy()
    for name, key in keys.items():
        trust.set_contact(Contact(name, age_recipient=key, source="manual"))
    trust.groups["team"] = ("bob", "me", "carol")
    return trust


class Refresher:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def refresh(self, name: str) -> None:
        self.asked.append(name)


def test_groups_expand_without_me_and_duplicates_go() -> None:
    groups = {"team": ("bob", "me", "carol")}
    assert expand(["carol", "team", "bob"], groups, me="me") == ("carol", "bob")
    assert expand(["me"], groups, me="me") == ("me",)
    with pytest.raises(ConfigError, match="no members but me"):
        expand(["solo"], {"solo": ("me",)}, me="me")
    with pytest.raises(ConfigError, match="at most"):
        expand([f"p{i}" for i in range(MAX_RECIPIENTS + 1)], {}, me="me")


def test_sealed_to_every_recipient_and_me_after_a_refresh() -> None:
    refresher = Refresher()
    plan = plan_recipients(
        ["team"],
        lambda: policy(bob=BOB, carol=CAROL),
        me="me",
        my_age_recipient=lambda: MINE,
        refresher=refresher,
    )
    assert plan.names == ("bob", "carol") and plan.sealed
    assert plan.seal_to == tuple(sorted((BOB, CAROL, MINE)))
    assert refresher.asked == ["bob", "carol"]


def test_an_unknown_key_names_the_fix_unless_plaintext_is_allowed() -> None:
    def attempt(**flags: bool) -> object:
        return plan_recipients(
            ["bob", "carol"],
            lambda: policy(bob=BOB),
            me="me",
            my_age_recipient=lambda: None,
            **flags,
        )

    with pytest.raises(NoAgeRecipientError) as caught:
        attempt()
    text = str(caught.value)
    assert "'carol'" in text and "'bob'" not in text.split(";")[0]
    assert "trust add carol --card FILE" in text and "dockercomms init" in text
    assert "--plaintext" in text
    assert not attempt(plaintext_fallback=True).sealed  # type: ignore[attr-defined]
    assert not attempt(plaintext=True).sealed  # type: ignore[attr-defined]


def test_a_bad_age_recipient_in_the_trust_file_fails_the_send() -> None:
    with pytest.raises(ConfigError, match="not an age recipient"):
        plan_recipients(
            ["bob"], lambda: policy(bob="age1typo"), me="me", my_age_recipient=lambda: MINE
        )


def test_a_note_to_myself_is_sealed_to_my_own_key() -> None:
    plan = plan_recipients(["me"], lambda: policy(), me="me", my_age_recipient=lambda: MINE)
    assert plan.names == ("me",) and plan.seal_to == (MINE,)
