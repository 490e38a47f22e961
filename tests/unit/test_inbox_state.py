"""The inbox's rules as pure logic: new, gone, expired, aliased, rejected, retried on trust change.

No kernel, no registry: ``reconcile`` and ``tags_to_check`` are fed listings and
check results as the mount's polls would get them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dockercomms.core.errors import (
    DockerCommsError,
    ExpiredError,
    RegistryUnavailableError,
    SignatureError,
)
from dockercomms.core.inbox import CheckedTag, Message, VerifiedSigner
from dockercomms.core.inbox_state import InboxState, Listed, reconcile, tags_to_check

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CAROL = VerifiedSigner("carol", "key", "fingerprint-of-carol")


def message(
    digest: str, *, sender: str = "carol", message_id: str = "m1", age: timedelta = timedelta(0)
) -> Message:
    return Message(
        digest=f"sha256:{digest}",
        size=100,
        tag=None,
        sender=sender,
        recipient="bob",
        created_at=NOW - timedelta(hours=1) - age,
        ttl_seconds=86_400,
        message_id=message_id,
        filename="report.pdf",
        total_bytes=3,
        chunk_bytes=3,
        chunk_count=1,
        compression="zstd",
        chunks=(),
        annotations={},
    )


def verified(tag: str, msg: Message, signer: VerifiedSigner = CAROL) -> CheckedTag:
    return CheckedTag(tag, msg, signer, None)


def failed(tag: str, error: DockerCommsError, msg: Message | None = None) -> CheckedTag:
    return CheckedTag(tag, msg, None, error)


def listed(msg: Message, **flags: bool) -> Listed:
    return Listed(msg.digest, msg.sender, msg.message_id, msg.expires_at, **flags)


def test_a_new_verified_tag_is_added_and_what_left_the_registry_goes() -> None:
    old = message("a" * 64, message_id="old")
    state = InboxState(
        listed={"t-old": listed(old)},
        rejected=frozenset({"t-bad"}),
        aliases={"t-alias": old.digest},
        expired=frozenset({"t-expired"}),
    )
    new = message("b" * 64, message_id="new")

    changes = reconcile(state, frozenset({"t-new"}), [verified("t-new", new)], NOW)

    assert changes.gone == ["t-old"] and changes.unrejected == ["t-bad"]
    assert [e.tag for e in changes.added] == ["t-new"]
    assert changes.aliases == {} and changes.expired == frozenset()


def test_a_listed_message_past_its_ttl_is_unlisted_and_never_checked_again() -> None:
    old = message("a" * 64, age=timedelta(days=2))  # ttl is one day
    state = InboxState(listed={"t1": listed(old)})

    changes = reconcile(state, frozenset({"t1"}), [], NOW)
    assert changes.expired_now == ["t1"] and changes.expired == frozenset({"t1"})

    after = InboxState(expired=changes.expired)
    assert tags_to_check(after, ["t1", "t2"], trust_changed=True) == ["t2"]


def test_the_same_message_under_two_tags_is_listed_once_the_oldest_first() -> None:
    first = message("a" * 64, message_id="m1", age=timedelta(minutes=5))
    resent = message("b" * 64, message_id="m1")  # the same message id, sent again later
    other_sender = message("c" * 64, sender="dave", message_id="m1")
    dave = VerifiedSigner("dave", "key", "fingerprint-of-dave")
    checked = [
        verified("t-resent", resent),
        verified("t-copy", first),
        verified("t-first", first),
        verified("t-dave", other_sender, dave),
    ]

    changes = reconcile(InboxState(), frozenset(e.tag for e in checked), checked, NOW)

    assert [e.tag for e in changes.added] == ["t-copy", "t-dave"]
    assert changes.aliases == {"t-first": first.digest, "t-resent": first.digest}


def test_an_unverified_decoy_hides_nothing() -> None:
    real = message("a" * 64, message_id="m1")
    decoy = message("b" * 64, message_id="m1", age=timedelta(minutes=5))
    checked = [failed("t-decoy", SignatureError("no"), decoy), verified("t-real", real)]

    changes = reconcile(InboxState(), frozenset({"t-decoy", "t-real"}), checked, NOW)

    assert [e.tag for e in changes.added] == ["t-real"]
    assert [e.tag for e in changes.rejected] == ["t-decoy"]


def test_failures_are_expired_rejected_or_left_for_the_next_poll() -> None:
    checked = [
        failed("t-expired", ExpiredError("old")),
        failed("t-rejected", SignatureError("no")),
        failed("t-later", RegistryUnavailableError("down")),
    ]

    changes = reconcile(InboxState(), frozenset(e.tag for e in checked), checked, NOW)

    assert changes.expired == frozenset({"t-expired"})
    assert [e.tag for e in changes.rejected] == ["t-rejected"]
    assert [e.tag for e in changes.transient] == ["t-later"]
    after = InboxState(rejected=frozenset({"t-rejected"}), expired=changes.expired)
    assert tags_to_check(after, [e.tag for e in checked], trust_changed=False) == ["t-later"]


def test_a_trust_change_retries_rejections_and_failing_messages_but_corruption_stays() -> None:
    failing = message("a" * 64, message_id="m-failing")
    corrupt = message("b" * 64, message_id="m-corrupt")
    state = InboxState(
        listed={
            "t-fine": listed(message("c" * 64, message_id="m-fine")),
            "t-failing": listed(failing, failing=True),
            "t-corrupt": listed(corrupt, failing=True, corrupt=True),
        },
        rejected=frozenset({"t-untrusted", "t-failing"}),
    )
    tags = ["t-fine", "t-failing", "t-corrupt", "t-untrusted"]
    assert tags_to_check(state, tags, trust_changed=False) == []
    assert tags_to_check(state, tags, trust_changed=True) == [
        "t-failing",
        "t-corrupt",
        "t-untrusted",
    ]

    now_trusted = message("d" * 64, sender="erin", message_id="m-erin")
    erin = VerifiedSigner("erin", "key", "fingerprint-of-erin")
    checked = [
        verified("t-failing", failing),
        verified("t-corrupt", corrupt),
        verified("t-untrusted", now_trusted, erin),
    ]
    changes = reconcile(state, frozenset(tags), checked, NOW)

    assert [e.tag for e in changes.recovered] == ["t-failing"]
    assert sorted(changes.unrejected) == ["t-failing", "t-untrusted"]
    assert [e.tag for e in changes.added] == ["t-untrusted"]
