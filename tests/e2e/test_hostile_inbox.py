"""Hostile inbox tags against the whole receive pipeline (issues #13.2-#13.4, #16.8).

Anyone may push to the repository, so anyone may tag a manifest ``inbox-<rt(bob)>-…``.
Whatever they push, Bob's ``ls``, ``recv`` and ``sync --once`` must finish, show
every verified message, and spend bounded work on the junk: the bounds are proved
by counting registry operations, never by the clock.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.registry.client import RegistryClient
from tests.conftest import Party, introduce, make_party
from tests.forge import (
    Forge,
    crowd_bundles,
    honest_layer,
    nested_member,
    plant_in_layout,
    push_unsigned,
    repeat_in_fallback_index,
    sorting_first_tag,
)

VERIFICATION = 2
PROTOCOL = 4


def forge_as(party: Party) -> Forge:
    workspace = party.workspace()
    return Forge(workspace.client(), workspace.signer(), workspace.identity)


def send_file(sender: Party, tmp_path: Path, name: str, to: str) -> dict[str, str]:
    source = tmp_path / name
    source.write_text(f"{name} from {sender.name}\n")
    sent: dict[str, str] = json.loads(sender.ok("send", str(source), "--recipient", to, "--json"))
    return sent


def recv_json(bob: Party, out: Path) -> tuple[int, list[dict[str, Any]]]:
    result = bob.cli("recv", "--out", str(out), "--json")
    return result.code, json.loads(result.out)


def received_names(outcomes: list[dict[str, Any]]) -> list[str]:
    return sorted(str(o["filename"]) for o in outcomes if o["status"] == "received")


def _fresh_ids() -> tuple[datetime, str, str]:
    """Arguments for ``p.message_tag`` after the recipient: now, a session, a message id."""
    return datetime.now(UTC), p.new_message_id(), p.new_message_id()


# --- #13.2: one hostile manifest must not stop anyone's inbox ------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[Forge, str], bytes]


def _message(forge: Forge, recipient: str, **overrides: str) -> bytes:
    layer = forge.layer(honest_layer(b"hostile\n", 0, "zstd"), 0)
    return m.build_message(forge.annotations(recipient, 8, **overrides), [layer])


HOSTILE = [
    Hostile("nested-5000", lambda f, r: nested_member(_message(f, r), 5000)),
    Hostile("ttl-20-digits", lambda f, r: _message(f, r, **{p.A_TTL: "9" * 20})),
    Hostile(
        "created-9999", lambda f, r: _message(f, r, **{p.A_CREATED_AT: "9999-12-31T23:59:59Z"})
    ),
    Hostile(
        "created-0001", lambda f, r: _message(f, r, **{p.A_CREATED_AT: "0001-01-01T00:00:00Z"})
    ),
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_one_hostile_manifest_stops_nothing(
    alice_bob: tuple[Party, Party], tmp_path: Path, hostile: Hostile
) -> None:
    """ls, recv and sync --once each finish, refuse the junk and receive the good one."""
    alice, bob = alice_bob
    forge = forge_as(alice)
    if hostile.name.startswith("nested") and bob.repo.startswith("oci-layout:"):
        # The embedded registry refuses it on push, so plant it as a hostile store
        # would; 500 deep, since its own referrers scan parses every stored manifest
        # (that parser is the registry's to bound; 500 is deep enough for ours).
        raw = nested_member(_message(forge, bob.name), 500)
        tag = p.message_tag(bob.name, *_fresh_ids())
        plant_in_layout(Path(bob.repo.removeprefix("oci-layout:")), raw, tag)
    else:
        forge.push(hostile.build(forge, bob.name), bob.name)  # validly signed, even
    send_file(alice, tmp_path, "good.txt", bob.name)

    listed = bob.cli("ls", "--json")
    assert listed.code == 0, listed.err
    rows = json.loads(listed.out)
    assert [r["filename"] for r in rows if r["verified"]] == ["good.txt"]
    assert [r for r in rows if not r["verified"]], rows

    synced = bob.cli(
        "sync", "--once", "--outbox", str(tmp_path / "outbox"), "--inbox", str(tmp_path / "sync")
    )
    assert synced.code == PROTOCOL, synced.out + synced.err
    assert [f.name for f in (tmp_path / "sync").iterdir()] == ["good.txt"]

    send_file(alice, tmp_path, "later.txt", bob.name)
    code, outcomes = recv_json(bob, tmp_path / "recv")
    assert code == 0, outcomes  # the hostile one was rejected before, by sync
    assert received_names(outcomes) == ["later.txt"]


def test_hostile_receipt_dates_are_refused() -> None:
    subject = m.Descriptor(p.OCI_MANIFEST, p.sha256_digest(b"x"), 1)
    annotations = {
        p.A_VERSION: p.PROTOCOL_VERSION,
        p.A_SENDER: "bob",
        p.A_RECIPIENT: "alice",
        p.A_CREATED_AT: "9999-12-31T23:59:59Z",
        p.A_TTL: "60",
        p.A_RECEIPT_FOR: subject.digest,
        p.A_RECEIPT_STATUS: "accepted",
        p.A_RECEIPT_VERIFIED: "true",
    }
    raw = m.build_receipt(subject, annotations)
    with pytest.raises(m.ManifestError, match="created_at"):
        m.parse_receipt(raw, p.sha256_digest(raw))
    raw = m.build_receipt(subject, annotations | {p.A_CREATED_AT: "2026-01-01T00:00:00Z"})
    with pytest.raises(m.LimitExceededError):
        m.parse_receipt(nested_member(raw, 5000), p.sha256_digest(raw))


# --- #13.3: de-duplication only among verified messages ------------------------------


def test_unsigned_decoy_with_the_victims_message_id_hides_nothing(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    sent = send_file(alice, tmp_path, "real.txt", bob.name)
    forge = forge_as(alice)  # only Alice's name and public message id; no signature
    decoy = _message(
        forge, bob.name, **{p.A_MESSAGE_ID: sent["message_id"], p.A_FILENAME: "decoy.txt"}
    )
    push_unsigned(forge.client, decoy, sorting_first_tag(bob.name, sent["message_id"]))

    rows = json.loads(bob.ok("ls", "--json"))
    assert sorted((r["filename"], r["verified"]) for r in rows) == [
        ("decoy.txt", False),
        ("real.txt", True),
    ]
    code, outcomes = recv_json(bob, tmp_path / "out")
    assert code == VERIFICATION
    assert received_names(outcomes) == ["real.txt"]
    assert (tmp_path / "out" / "real.txt").read_text() == "real.txt from alice@example.com\n"


def test_two_trusted_senders_with_one_message_id_both_arrive(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    carol = make_party(tmp_path, "carol", bob.repo)
    introduce(carol, bob)
    sent = send_file(alice, tmp_path, "alice.txt", bob.name)
    forge_as(carol).message(
        bob.name, b"carol's\n", **{p.A_MESSAGE_ID: sent["message_id"], p.A_FILENAME: "carol.txt"}
    )

    rows = json.loads(bob.ok("ls", "--json"))
    assert sorted((r["sender"], r["filename"], r["verified"]) for r in rows) == [
        ("alice@example.com", "alice.txt", True),
        ("carol", "carol.txt", True),
    ]
    code, outcomes = recv_json(bob, tmp_path / "out")
    assert code == 0, outcomes
    assert received_names(outcomes) == ["alice.txt", "carol.txt"]
    # And the next run knows both, each under its own sender.
    code, again = recv_json(bob, tmp_path / "out")
    assert code == 0 and [o["status"] for o in again] == ["already-received"] * 2


# --- #13.4: amplification --------------------------------------------------------------


@dataclass
class RegistryCounts:
    """Calls into the registry client, by method, and blob bytes downloaded by digest."""

    calls: Counter[str] = field(default_factory=Counter)
    blob_bytes: Counter[str] = field(default_factory=Counter)
    manifests: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryCounts]:
    """Count what every RegistryClient in this process asks the registry for."""
    counts = RegistryCounts()

    def wrap(name: str) -> None:
        original = getattr(RegistryClient, name)

        def counting(self: RegistryClient, *args: Any, **kwargs: Any) -> Any:
            counts.calls[name] += 1
            result = original(self, *args, **kwargs)
            if name == "fetch_small_blob":
                counts.blob_bytes[args[0]] += len(result)
            if name == "fetch_manifest":
                counts.manifests[args[0]] += 1
            return result

        monkeypatch.setattr(RegistryClient, name, counting)

    for name in ("fetch_manifest", "fetch_small_blob", "fetch_blob", "referrers", "list_tags"):
        wrap(name)
    yield counts


def test_a_crowd_of_junk_bundles_costs_a_bounded_download(
    alice_bob: tuple[Party, Party], tmp_path: Path, counted: RegistryCounts
) -> None:
    """30 junk bundle manifests naming one 1 MiB blob, one of them listed 2,000 times.

    A real message with a few junk bundles beside its own still verifies.
    """
    alice, bob = alice_bob
    mallory = make_party(tmp_path, "mallory", bob.repo)
    forge = forge_as(mallory)
    raw = _message(forge, bob.name)
    digest = push_unsigned(forge.client, raw, p.message_tag(bob.name, *_fresh_ids()))
    subject = m.Descriptor(p.OCI_MANIFEST, digest, len(raw))
    junk = json.dumps({"junk": "j" * (1024 * 1024 - 20)}).encode()
    first = crowd_bundles(forge.client, subject, junk, 30)
    repeat_in_fallback_index(forge.client, digest, first, 2000)
    counted.calls.clear()
    counted.manifests.clear()

    code, outcomes = recv_json(bob, tmp_path / "out")

    assert code == VERIFICATION, outcomes
    # Bundle manifests (by digest or bundle- tag), plus at most the fallback index itself.
    assert sum(n for ref, n in counted.manifests.items() if not ref.startswith("inbox-")) <= 9
    assert sum(counted.blob_bytes.values()) <= 1024 * 1024  # the junk blob, once
    assert counted.calls["fetch_small_blob"] <= 1

    real = send_file(alice, tmp_path, "real.txt", bob.name)
    real_raw, _ = forge.client.fetch_manifest(real["digest"])
    crowd_bundles(
        forge.client, m.Descriptor(p.OCI_MANIFEST, real["digest"], len(real_raw)), junk, 5
    )
    code, outcomes = recv_json(bob, tmp_path / "out")
    assert code == 0, outcomes
    assert received_names(outcomes) == ["real.txt"]


def test_rejections_are_remembered_until_trust_changes(
    alice_bob: tuple[Party, Party], tmp_path: Path, counted: RegistryCounts
) -> None:
    """The second recv fetches at most the tags' manifests; a new trust entry retries them."""
    _, bob = alice_bob
    mallory = make_party(tmp_path, "mallory", bob.repo)
    forge = forge_as(mallory)
    for n in range(3):
        forge.message(bob.name, f"spam {n}\n".encode(), **{p.A_FILENAME: f"spam{n}.txt"})
    forge.message(bob.name, **{p.A_FILENAME: "../escape"})  # a protocol error, for ever
    out = tmp_path / "out"

    code, first = recv_json(bob, out)
    assert code in (VERIFICATION, PROTOCOL)  # the first rejection's, by tag order
    assert sorted(o["status"] for o in first) == ["rejected"] * 4

    counted.calls.clear()
    code, second = recv_json(bob, out)
    assert code == 0, second
    assert sorted(o["status"] for o in second) == ["rejected-before"] * 4
    # The embedded store names each tag's digest in one read: the ledger answers.
    fetches = 0 if bob.repo.startswith("oci-layout:") else 4
    assert counted.calls == Counter({"list_tags": 1, "fetch_manifest": fetches})

    introduce(mallory, bob)  # trust.json changed: signer rejections are retried
    code, third = recv_json(bob, out)
    assert code == 0, third
    assert sorted(o["status"] for o in third) == ["received"] * 3 + ["rejected-before"]
    assert sorted(f.name for f in out.iterdir()) == ["spam0.txt", "spam1.txt", "spam2.txt"]


# --- #16.8: a rejection is reported once -------------------------------------------------


def test_recv_reports_a_rejection_once(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    _, bob = alice_bob
    mallory = make_party(tmp_path, "mallory", bob.repo)
    forge_as(mallory).message(bob.name)
    out = tmp_path / "out"

    first = bob.cli("recv", "--out", str(out))
    assert first.code == VERIFICATION
    assert first.out.count("REJECTED") == 1
    assert "reject" not in first.err.lower(), first.err

    second = bob.cli("recv", "--out", str(out))
    assert second.code == 0, second.out + second.err
    assert "REJECTED" not in second.out and "reject" not in second.err.lower()
    assert "1 rejected before" in second.out

    listed = bob.cli("recv", "--out", str(out), "-v")
    assert listed.code == 0 and listed.out.startswith("rejected before inbox-"), listed.out
    assert "reject" not in listed.err.lower(), listed.err


def test_sync_once_reports_a_rejection_once(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    _, bob = alice_bob
    mallory = make_party(tmp_path, "mallory", bob.repo)
    forge_as(mallory).message(bob.name)
    args = ("sync", "--once", "--outbox", str(tmp_path / "outbox"), "--inbox", str(tmp_path / "in"))

    first = bob.cli(*args)
    assert first.code == VERIFICATION, first.out + first.err
    assert first.out.count("REJECTED") == 1
    assert "reject" not in first.err.lower(), first.err

    second = bob.cli(*args)
    assert second.code == 0, second.out + second.err
    assert "REJECTED" not in second.out and "reject" not in second.err.lower()
    assert os.listdir(tmp_path / "in") == []
