"""Sealed sending (SPEC 9, #11 items 2-3), proved with tools independent of our receive side.

What a send pushed is read back from the registry with the plain client and opened
with the stock ``age`` binary (tests/age_cli.py): each chunk layer decrypts to the
SPEC 2 compressed tar whose one file hashes to ``chunk_sha256[i]`` of the
``sealed`` annotation, which ``age -d`` opens too. Age keys are given to the
parties here directly (trust file contacts), so these tests do not depend on how
cards are exchanged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from dockercomms.core import protocol as p
from dockercomms.core.age_keys import create_identity_file, load_identity_file
from dockercomms.core.errors import NoAgeRecipientError
from dockercomms.core.trust import Contact, TrustPolicy
from tests import age_cli
from tests.conftest import Party, introduce, make_party

CHUNK = 4096
SEALED_ZSTD = "application/vnd.dockercomms.chunk.v1.tar+zstd+age"


def age_key(party: Party) -> str:
    """The party's age recipient (its identity file made if ``init`` did not)."""
    path = party.workspace().paths.age_identity_file
    if not path.exists():
        create_identity_file(path)
    return load_identity_file(path).recipient


def seal_to(truster: Party, *others: Party) -> None:
    """``truster`` knows each of ``others``' age recipient (as a card import would set it)."""
    trust_file = truster.workspace().paths.trust_file
    policy = TrustPolicy.load(trust_file)
    for other in others:
        policy.set_contact(Contact(other.name, age_recipient=age_key(other), source="manual"))
    policy.save(trust_file)


def set_group(party: Party, name: str, *members: str) -> None:
    trust_file = party.workspace().paths.trust_file
    policy = TrustPolicy.load(trust_file)
    policy.groups[name] = members
    policy.save(trust_file)


@pytest.fixture
def world(tmp_path: Path, backend: str) -> dict[str, Party]:
    """alice, bob, carol (age keys known to alice) and dave (trusted, no age key known)."""
    parties = {name: make_party(tmp_path, name, backend) for name in ("alice", "bob", "carol")}
    introduce(*parties.values())
    # dave publishes no card and alice trusts his signing key only (key export --pem):
    # nothing tells alice his age key.
    dave = parties["dave"] = make_party(tmp_path, "dave", backend, "--no-publish")
    pem = tmp_path / "dave.pem"
    pem.write_text(dave.ok("key", "export", "--pem"))
    parties["alice"].ok("trust", "add", "dave", "--key", str(pem))
    age_key(parties["alice"])
    seal_to(parties["alice"], parties["bob"], parties["carol"])
    return parties


def write(path: Path, size: int) -> Path:
    path.write_bytes(bytes((i * 131 + i // 7) % 251 for i in range(size)))
    return path


def send(party: Party, path: Path, *args: str) -> dict[str, object]:
    out = party.ok("send", str(path), "--chunk-bytes", str(CHUNK), "--json", *args)
    sent: dict[str, object] = json.loads(out)
    return sent


def manifest_of(party: Party, tag: str) -> dict[str, object]:
    with party.workspace().client() as client:
        raw, _ = client.fetch_manifest(tag)
    doc: dict[str, object] = json.loads(raw)
    return doc


def blob(party: Party, digest: str) -> bytes:
    with party.workspace().client() as client:
        return client.fetch_small_blob(digest, max_bytes=1 << 20)


def identity_file(party: Party) -> Path:
    return party.workspace().paths.age_identity_file


def age_refuses(sealed: bytes, identity: Path) -> str:
    done = subprocess.run(
        [age_cli.tool("age"), "-d", "-i", str(identity)],
        input=sealed,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    return done.stderr.decode(errors="replace")


def chunk_bytes_of(compressed_tar: bytes, index: int) -> bytes:
    """The one file of a SPEC 2 chunk layer, read with the standard library's tarfile."""
    plain = zstandard.ZstdDecompressor().stream_reader(compressed_tar).read()
    with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [f"chunk_{index}.bin"]
        data = archive.extractfile(members[0])
        assert data is not None
        return data.read()


def test_sealed_to_several_recipients_uploads_once_and_opens_with_stock_age(
    world: dict[str, Party], tmp_path: Path
) -> None:
    alice, bob, carol, dave = (world[n] for n in ("alice", "bob", "carol", "dave"))
    source = write(tmp_path / "secret plans.pdf", 3 * CHUNK + 100)
    sent = send(alice, source, "-r", "bob", "-r", "carol")
    assert sent["sealed"] is True
    deliveries = sent["deliveries"]
    assert isinstance(deliveries, list)
    assert [d["recipient"] for d in deliveries] == ["bob", "carol"]

    manifests = [manifest_of(alice, d["tag"]) for d in deliveries]
    layers = [m["layers"] for m in manifests]
    assert layers[0] == layers[1], "one upload: both manifests reference the same blobs"
    notes = [m["annotations"] for m in manifests]
    assert isinstance(notes[0], dict) and isinstance(notes[1], dict)
    assert [n[p.A_RECIPIENT] for n in notes] == ["bob", "carol"]
    assert notes[0]["dockercomms.sealed"] == notes[1]["dockercomms.sealed"]
    for n in notes:
        assert n["dockercomms.encryption"] == "age"
        assert n[p.A_FILENAME] == str(sent["message_id"]).replace("-", "")[:8] + ".sealed"
        assert "secret" not in json.dumps(n)
    assert deliveries[0]["tag"].startswith(p.inbox_prefix("bob"))
    assert deliveries[1]["tag"].startswith(p.inbox_prefix("carol"))

    sealed = base64.b64decode(str(notes[0]["dockercomms.sealed"]), validate=True)
    facts = json.loads(age_cli.decrypt(sealed, identity_file(bob)))
    assert facts["filename"] == "secret plans.pdf"
    assert facts["total_bytes"] == source.stat().st_size
    assert len(facts["chunk_sha256"]) == 4

    content = source.read_bytes()
    assert isinstance(layers[0], list)
    for index, layer in enumerate(layers[0]):
        assert layer["mediaType"] == SEALED_ZSTD
        ciphertext = blob(alice, layer["digest"])
        # Every reader of the message opens every chunk: recipients and the sender.
        opened = [age_cli.decrypt(ciphertext, identity_file(x)) for x in (bob, carol, alice)]
        plain = chunk_bytes_of(opened[0], index)
        assert hashlib.sha256(plain).hexdigest() == facts["chunk_sha256"][index]
        assert plain == content[index * CHUNK : (index + 1) * CHUNK]
        assert all(chunk_bytes_of(o, index) == plain for o in opened[1:])
    # dave can list the tags but opens nothing.
    assert "no identity matched" in age_refuses(sealed, identity_file_for(dave)).lower()


def identity_file_for(party: Party) -> Path:
    age_key(party)
    return identity_file(party)


def test_unknown_age_key_is_a_clear_error_and_nothing_is_pushed(
    world: dict[str, Party], tmp_path: Path
) -> None:
    alice = world["alice"]
    source = write(tmp_path / "a.bin", 100)
    result = alice.cli("send", str(source), "-r", "bob", "-r", "dave")
    assert result.code == NoAgeRecipientError.exit_code == 1
    assert "no age recipient is known for 'dave'" in result.err
    assert "trust add dave --card FILE" in result.err
    assert "'bob'" not in result.err
    with alice.workspace().client() as client:
        assert client.list_tags("inbox-") == []  # (the tags there are everyone's cards)


def test_group_sends_to_every_member_but_me(world: dict[str, Party], tmp_path: Path) -> None:
    alice = world["alice"]
    set_group(alice, "team", "bob", "alice", "carol")
    sent = send(alice, write(tmp_path / "team.txt", 10), "-r", "team")
    assert sent["sealed"] is True
    deliveries = sent["deliveries"]
    assert isinstance(deliveries, list)
    assert [d["recipient"] for d in deliveries] == ["bob", "carol"]


def test_plaintext_when_asked_or_allowed(world: dict[str, Party], tmp_path: Path) -> None:
    alice = world["alice"]
    source = write(tmp_path / "open.txt", 10)
    sent = send(alice, source, "-r", "bob", "--plaintext")
    assert sent["sealed"] is False
    notes = manifest_of(alice, str(sent["tag"]))["annotations"]
    assert isinstance(notes, dict)
    assert notes[p.A_FILENAME] == "open.txt" and "dockercomms.sealed" not in notes
    alice.ok("config", "set", "send_plaintext", "true")
    sent = send(alice, source, "-r", "dave")
    assert sent["sealed"] is False
    # Still sealed whenever every key is known.
    assert send(alice, source, "-r", "bob")["sealed"] is True
