"""A ``recv`` (or ``sync`` poll) that finds nothing new fetches no manifest again.

On the embedded store one read of the index names every tag's digest; a digest
the ledger received (verified) or rejected (under the current trust policy)
is answered from the ledger. Before, every poll fetched and parsed every inbox
manifest: 4.4 s of CPU at 10,000 messages, on every change of the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockercomms.core._internal.registry.client import RegistryClient
from tests.conftest import Party
from tests.forge import Forge


@pytest.fixture
def inbox_fetches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every inbox manifest fetched from now on (by tag)."""
    fetched: list[str] = []
    real = RegistryClient.fetch_manifest

    def counting(self: RegistryClient, reference: str, *args: object, **kwargs: object) -> object:
        if reference.startswith("inbox-"):
            fetched.append(reference)
        return real(self, reference, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RegistryClient, "fetch_manifest", counting)
    yield fetched


def recv_json(party: Party, out: Path) -> list[dict[str, object]]:
    result = party.cli("recv", "--out", str(out), "--json")
    found: list[dict[str, object]] = json.loads(result.out)
    return found


def test_nothing_new_is_answered_from_the_ledger(
    embedded_pair: tuple[Party, Party], tmp_path: Path, inbox_fetches: list[str]
) -> None:
    alice, bob = embedded_pair
    note = tmp_path / "plan.txt"
    note.write_text("sealed, so the manifest names it neutrally\n")
    alice.ok("send", str(note), "-r", bob.name)
    with bob.workspace().client() as client:
        unsigned = Forge(client, bob.workspace().signer(), alice.name)
        unsigned.message(bob.name, sign=lambda digest: b'{"not": "a bundle"}')
    out = tmp_path / "out"
    first = {o["status"]: o for o in recv_json(bob, out)}
    assert set(first) == {"received", "rejected"}
    assert len(inbox_fetches) == 2

    inbox_fetches.clear()
    again = {o["status"]: o for o in recv_json(bob, out)}
    assert inbox_fetches == []
    assert set(again) == {"already-received", "rejected-before"}
    kept = again["already-received"]
    assert (kept["filename"], kept["sender"]) == ("plan.txt", alice.name)
    assert kept["path"] == str(out / "plan.txt") and kept["digest"] == first["received"]["digest"]

    # A policy change re-checks the rejection: that one is fetched again, only that one.
    bob.ok("config", "set", "require_sealed", "true")
    recv_json(bob, out)
    assert len(inbox_fetches) == 1
