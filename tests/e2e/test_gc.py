"""``dockercomms gc``: my expired messages leave the registry, and nothing else does.

Runs on both backends (the embedded registry and a real distribution server with
``delete: enabled: true``), through the CLI where the user's view matters and
through :class:`GarbageCollector` with an injected clock where time does.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dockercomms.cli import main as cli_main
from dockercomms.core import garbage
from dockercomms.core import protocol as p
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core.errors import NotFoundError, RegistryUnavailableError
from dockercomms.core.garbage import Deletion, GarbageCollector, load_journal
from tests.conftest import CliResult, Party, introduce, make_party, patched_env
from tests.forge import Forge
from tests.servers.registry_server import running_registry
from tests.unit.test_embedded_damage import bytes_read


def run(party: Party, *args: str) -> CliResult:
    """``dockercomms ARGS`` as ``party``, with ``gc`` registered even before main has it."""
    out, err = io.StringIO(), io.StringIO()
    with (
        patched_env(party.env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli_main.main(list(args))
    return CliResult(code, out.getvalue(), err.getvalue())


def gc_json(party: Party, *args: str) -> dict[str, Any]:
    """``dockercomms gc --json ARGS``, required to exit 0."""
    result = run(party, "gc", "--json", *args)
    assert result.code == 0, result.err
    report: dict[str, Any] = json.loads(result.out)
    return report


def send(party: Party, tmp_path: Path, name: str, content: bytes, to: str, *extra: str) -> str:
    """Send a file with the CLI; its manifest digest."""
    path = tmp_path / f"{uuid.uuid4().hex[:6]}-{name}"
    path.write_bytes(content)
    out = party.ok("send", str(path), "--recipient", to, "--json", *extra)
    digest: str = json.loads(out)["digest"]
    return digest


def traces(client: RegistryClient, digest: str) -> list[str]:
    """Every tag that belongs to ``digest``: its inbox tag, bundles, receipts, fallback index."""
    hex_digest = digest.split(":")[1]
    found = []
    for tag in client.list_tags():
        if tag == f"sha256-{hex_digest}" or f"-{hex_digest[:12]}-" in tag:
            found.append(tag)
        elif tag.startswith("inbox-"):
            with contextlib.suppress(NotFoundError):
                if client.fetch_manifest(tag)[1] == digest:
                    found.append(tag)
    return found


def exists(client: RegistryClient, digest: str) -> bool:
    """The manifest can still be fetched by digest."""
    try:
        client.fetch_manifest(digest)
    except NotFoundError:
        return False
    return True


@pytest.mark.slow
def test_gc_deletes_my_expired_messages_and_nothing_else(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    # Plaintext, so the two share a chunk (sealing is random: sealed chunks never do).
    expiring = send(
        alice, tmp_path, "short.txt", b"same bytes\n", bob.name, "--ttl-seconds", "1", "--plaintext"
    )
    same_bytes = send(alice, tmp_path, "long.txt", b"same bytes\n", bob.name, "--plaintext")
    other = send(alice, tmp_path, "other.txt", b"other bytes\n", bob.name)
    bobs = send(
        bob, tmp_path, "from-bob.txt", b"bob's\n", alice.name, "--ttl-seconds", "1", "--plaintext"
    )
    inbox = tmp_path / "bob-inbox"
    inbox.mkdir()
    assert bob.cli("recv", "--out", str(inbox)).code == 0  # receipts for alice's three
    time.sleep(2.1)  # both short ones expire (gc allows no clock skew)

    workspace = alice.workspace()
    with workspace.client() as client:
        before = traces(client, expiring)
        assert any(t.startswith("receipt-") for t in before), before
        chunk = json.loads(client.fetch_manifest(expiring)[0])["layers"][0]["digest"]

        dry = gc_json(alice, "--dry-run")
        assert [e["digest"] for e in dry["expired"]] == [expiring]
        assert dry["deleted"] == [] and traces(client, expiring) == before
        kinds = [d["kind"] for d in dry["planned"]]
        assert kinds[0] == "message" and {"receipt", "bundle", "blob"} <= set(kinds)

        report = gc_json(alice)
        assert [e["digest"] for e in report["expired"]] == [expiring]
        assert report["deleted"] == dry["planned"] and report["errors"] == []
        assert report["shared_blobs"] == 1, "long.txt has the same chunk"
        assert not exists(client, expiring) and traces(client, expiring) == []
        assert all(exists(client, d) for d in (same_bytes, other, bobs)), "not expired or not mine"
        assert client.has_blob(chunk)
    assert bob.cli("verify", "--digest", same_bytes, "--chunks").code == 0

    again = gc_json(alice)
    assert again["expired"] == [] and again["deleted"] == []
    text = run(bob, "gc")
    assert text.code == 0 and "from-bob.txt to alice@example.com (expired" in text.out
    with workspace.client() as client:
        assert not exists(client, bobs)


def test_expired_messages_that_only_claim_to_be_mine_stay(
    embedded_pair: tuple[Party, Party],
) -> None:
    alice, bob = embedded_pair
    old = p.format_timestamp(datetime.now(UTC) - timedelta(hours=2))
    with bob.workspace().client() as client:
        forge = Forge(client, bob.workspace().signer(), alice.name)
        claims = {p.A_CREATED_AT: old, p.A_TTL: "60"}
        signed_by_bob = forge.message(bob.name, **claims)
        unsigned = forge.message(bob.name, sign=lambda digest: b'{"not": "a bundle"}', **claims)
    report = gc_json(alice)
    assert report["expired"] == [] and report["deleted"] == []
    assert len(report["not_mine"]) == 2
    with alice.workspace().client() as client:
        assert exists(client, signed_by_bob) and exists(client, unsigned)
    assert "left alone (claims to be mine, not signed by me)" in run(alice, "gc").out


def test_expiry_is_strict_and_without_clock_skew(embedded_pair: tuple[Party, Party]) -> None:
    alice, bob = embedded_pair
    path = alice.home / "note.txt"
    path.write_text("an hour\n")
    digest = json.loads(
        alice.ok("send", str(path), "-r", bob.name, "--ttl-seconds", "3600", "--json")
    )["digest"]
    workspace = alice.workspace()
    with workspace.client() as client:
        message = workspace.receiver(client).fetch_message(digest, check_recipient=False)

    def at(moment: datetime) -> garbage.GcReport:
        return GarbageCollector(workspace, clock=lambda: moment).run_once()

    assert at(message.expires_at - timedelta(seconds=1)).expired == []
    assert at(message.expires_at).expired == [], "expires_at itself is not past"
    report = at(message.expires_at + timedelta(seconds=1))
    # Sealed (the manifest names it "<id8>.sealed"): gc names it as I sent it.
    assert message.encrypted and message.filename != "note.txt"
    assert [(e.digest, e.filename) for e in report.expired] == [(digest, "note.txt")]
    with workspace.client() as client:
        assert not exists(client, digest)


@pytest.mark.slow
def test_a_registry_that_refuses_deletion_is_a_warning(tmp_path: Path) -> None:
    overrides = {"storage": {"delete": {"enabled": False}}}
    with running_registry(tmp_path / "registry", config_overrides=overrides) as server:
        repo = f"{server.host}/tests/{uuid.uuid4().hex[:12]}"
        alice = make_party(tmp_path, "alice", repo)
        bob = make_party(tmp_path, "bob", repo)
        introduce(alice, bob)
        digest = send(alice, tmp_path, "a.txt", b"a\n", bob.name, "--ttl-seconds", "1")
        time.sleep(2.1)
        result = run(alice, "gc")
        assert result.code == 0, result.err
        assert "the registry does not allow deletion (HTTP 405" in result.err
        report = gc_json(alice)
        assert report["unsupported"].startswith("HTTP 405") and report["deleted"] == []
        with alice.workspace().client() as client:
            assert exists(client, digest)
        assert not GarbageCollector(alice.workspace()).journal_path.exists()


def test_an_interrupted_run_is_finished_from_its_journal(
    embedded_pair: tuple[Party, Party], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = embedded_pair
    path = alice.home / "note.txt"
    path.write_text("soon gone\n")
    digest = json.loads(alice.ok("send", str(path), "-r", bob.name, "--json"))["digest"]
    inbox = alice.home.parent / "bob-inbox"
    inbox.mkdir()
    assert bob.cli("recv", "--out", str(inbox)).code == 0
    workspace = alice.workspace()
    later = datetime.now(UTC) + timedelta(days=30)
    collector = GarbageCollector(workspace, clock=lambda: later)

    real_delete = garbage._delete
    calls = 0

    def flaky(client: RegistryClient, deletion: Deletion) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RegistryUnavailableError("connection reset by peer")
        return real_delete(client, deletion)

    monkeypatch.setattr(garbage, "_delete", flaky)
    first = collector.run_once()
    monkeypatch.undo()
    assert [d.kind for d in first.deleted] == ["message"]
    assert first.errors and "connection reset" in first.errors[0]
    pending = load_journal(collector.journal_path)
    assert pending == first.planned[1:]

    # The message is gone, so a scan alone would never find its bundles again.
    second = collector.run_once()
    assert second.deleted == pending and second.errors == []
    assert not collector.journal_path.exists()
    with workspace.client() as client:
        assert traces(client, digest) == []
        assert not any(client.has_blob(d.digest) for d in pending if d.kind == "blob")


def test_an_unreadable_journal_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = tmp_path / "gc-journal.json"
    journal.write_text(json.dumps({"version": 1, "pending": [{"kind": "rm -rf"}]}))
    assert load_journal(journal) == []
    assert "ignoring unreadable gc journal" in caplog.text
    entry = Deletion("bundle", "sha256:" + "a" * 64, "sha256:" + "b" * 64, "bundle")
    garbage.save_journal(journal, [entry])
    assert load_journal(journal) == [entry]
    garbage.save_journal(journal, [])
    assert not journal.exists()


def test_a_hostile_journal_is_ignored_in_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "gc-journal.json"
    journal.write_bytes(b'{"version": 1, "pending": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert load_journal(journal) == []
    assert "nested too deeply" in caplog.text

    journal.unlink()
    with open(journal, "wb") as file:
        file.truncate(2 * 1024**3)  # sparse: reading it whole would cost gigabytes
    before = bytes_read()
    assert load_journal(journal) == []
    assert bytes_read() - before < 1024 * 1024


def test_a_registrys_refusal_is_shown_bounded_and_escaped() -> None:
    refusal = {"errors": [{"code": "UNSUPPORTED", "message": "no\x1b[2J deletes\nhere"}]}
    assert garbage._error_text(json.dumps(refusal).encode()) == (
        "UNSUPPORTED: no\\x1b[2J deletes\\x0ahere"
    )
    assert garbage._error_text(b"[" * 4096) == "[" * 200 + "…"
    assert garbage._error_text(b"\x1b]0;owned\x07 not json") == "\\x1b]0;owned\\x07 not json"
