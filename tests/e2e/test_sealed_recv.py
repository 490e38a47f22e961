"""Receiving sealed messages (SPEC 9): opened only after the signature verified, checked per chunk.

The messages are assembled from the spec (``tests.sealed_forge``), with pyrage or
the stock ``age`` binary, and signed with the parties' real keys; ``recv``,
``ls`` and ``verify --chunks`` run in-process as the user would run them. Every
refusal must leave the output folder empty, hidden temp files included.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal import sealed_message as sm
from dockercomms.core._internal.sealing import VERSION_LINE
from dockercomms.core.errors import NotSealedError
from dockercomms.core.trust import Contact, TrustPolicy
from tests import age_cli
from tests.conftest import Party, introduce, make_party
from tests.sealed_forge import age_keys, sealer

VERIFICATION = 2
PROTOCOL = 4
#: Three chunks of 64 KiB and a short one.
DATA = os.urandom(3 * 65536 + 1000)
CHUNK = 65536


def recv(party: Party, out: Path, expected_code: int = 0) -> list[dict[str, object]]:
    result = party.cli("recv", "--out", str(out), "--json")
    assert result.code == expected_code, result.out + result.err
    return list(json.loads(result.out))


def refused(party: Party, out: Path, expected_code: int, error_type: str) -> dict[str, object]:
    """``recv`` exits ``expected_code`` with one ``error_type`` rejection; ``out`` stays empty."""
    outcomes = recv(party, out, expected_code)
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
    rejected = [o for o in outcomes if o["status"] == "rejected"]
    assert [o["error_type"] for o in rejected] == [error_type], outcomes
    return rejected[0]


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> age_cli.CountingDecrypt:
    """Counts every age decryption pyrage starts (work done before a refusal)."""
    wrapper = age_cli.CountingDecrypt()
    monkeypatch.setattr(pyrage, "decrypt_io", wrapper)
    return wrapper


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def sealed_pair(embedded_pair: tuple[Party, Party]) -> Iterator[tuple[Party, Party, str]]:
    """Alice and bob on the embedded store, bob with an age key; bob's ``age1…``."""
    alice, bob = embedded_pair
    age_keys(alice)
    yield alice, bob, age_keys(bob).recipient


# --- round trips --------------------------------------------------------------------


def test_one_and_three_recipients_open_it_and_a_non_recipient_cannot(
    tmp_path: Path, backend: str
) -> None:
    alice, bob, carol, dave, eve = (
        make_party(tmp_path, name, backend) for name in ("alice", "bob", "carol", "dave", "eve")
    )
    for receiver in (bob, carol, dave, eve):
        introduce(alice, receiver)
    keys = {party.name: age_keys(party).recipient for party in (alice, bob, carol, dave, eve)}
    forge = sealer(alice)

    alone = forge.send(DATA, ["bob"], [keys["bob"], keys["alice"]], chunk_bytes=CHUNK)
    three = forge.send(
        b"for the three of you\n",
        ["bob", "carol", "dave"],
        [keys["bob"], keys["carol"], keys["dave"], keys["alice"]],
        filename="minutes.txt",
    )
    # Addressed to eve, but sealed to the three others: listed, never opened.
    misaddressed = forge.build(b"not for eve\n", [keys["bob"], keys["alice"]])
    forge.push(misaddressed, "eve")

    listed = json.loads(bob.ok("ls", "--json"))
    assert {(r["filename"], r["sealed"], r["verified"]) for r in listed} == {
        ("report.pdf", True, True),
        ("minutes.txt", True, True),
    }
    assert "sealed" in bob.ok("ls")
    got = recv(bob, tmp_path / "bob")
    assert {o["filename"] for o in got} == {"report.pdf", "minutes.txt"}
    assert (tmp_path / "bob" / "report.pdf").read_bytes() == DATA
    for party in (bob, carol, dave):
        recv(party, tmp_path / party.name)
        assert (tmp_path / party.name / "minutes.txt").read_bytes() == b"for the three of you\n"

    # eve sees the message listed under its neutral name, and cannot open it.
    (row,) = json.loads(eve.ok("ls", "--json"))
    assert row["sealed"] is True and row["verified"] is False
    assert row["filename"] == sm.neutral_filename(misaddressed.message_id)
    assert "sealed to someone else" in row["error"]
    rejection = refused(eve, tmp_path / "eve", VERIFICATION, "NotARecipientError")
    assert rejection["filename"] == sm.neutral_filename(misaddressed.message_id)
    # And a message to others, by digest: the signature verifies, the content does not open.
    result = eve.cli("verify", "--digest", three.digests["bob"], "--chunks")
    assert result.code == VERIFICATION, result.out + result.err
    assert "sealed to someone else" in result.err
    assert alone.digests["bob"] not in eve.ok("ls")


def test_verify_chunks_opens_and_checks_every_chunk(
    sealed_pair: tuple[Party, Party, str],
) -> None:
    alice, bob, bob_age = sealed_pair
    built = sealer(alice).send(DATA, [bob.name], [bob_age], chunk_bytes=CHUNK)
    result = json.loads(bob.ok("verify", "--digest", built.digests[bob.name], "--chunks", "--json"))
    assert result["sealed"] is True and result["chunks_verified"] is True
    assert result["filename"] == "report.pdf"
    text = bob.ok("verify", "--digest", built.digests[bob.name], "--chunks")
    assert "(sealed, every chunk checked)" in text


def test_a_message_sealed_by_the_stock_age_tool_is_received(
    sealed_pair: tuple[Party, Party, str], out: Path
) -> None:
    alice, bob, bob_age = sealed_pair
    sealer(alice, stock_age=True).send(DATA, [bob.name], [bob_age], chunk_bytes=CHUNK)
    (outcome,) = recv(bob, out)
    assert outcome["status"] == "received" and outcome["sealed"] is True
    assert (out / "report.pdf").read_bytes() == DATA


def test_the_stock_age_tool_opens_a_layer_and_the_annotation_from_the_registry(
    sealed_pair: tuple[Party, Party, str],
) -> None:
    alice, bob, bob_age = sealed_pair
    built = sealer(alice).send(DATA, [bob.name], [bob_age], chunk_bytes=CHUNK)
    identity_file = bob.workspace().paths.age_identity_file
    client = bob.workspace().client()
    raw, _ = client.fetch_manifest(built.digests[bob.name])
    doc = m.parse_json(raw, "manifest")
    layer = doc["layers"][1]
    assert layer["mediaType"] == sm.SEALED_CHUNK_MEDIA_TYPES["zstd"]
    fetched = io.BytesIO()
    client.fetch_blob(layer["digest"], fetched, expected_size=layer["size"])
    assert age_cli.decrypt(fetched.getvalue(), identity_file) == built.plain_layers[1]
    sealed = base64.b64decode(doc["annotations"][sm.A_SEALED])
    assert json.loads(age_cli.decrypt(sealed, identity_file))["filename"] == "report.pdf"


def test_plaintext_still_arrives_and_says_so(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path, out: Path
) -> None:
    alice, bob, _ = sealed_pair
    note = tmp_path / "note.txt"
    note.write_bytes(b"plain\n")
    alice.ok("send", str(note), "-r", bob.name, "--plaintext")
    (row,) = json.loads(bob.ok("ls", "--json"))
    assert row["sealed"] is False and row["verified"] is True
    assert "plain" in bob.ok("ls")
    (outcome,) = recv(bob, out)
    assert outcome["sealed"] is False and (out / "note.txt").read_bytes() == b"plain\n"


# --- hostile ------------------------------------------------------------------------


def test_sealed_to_someone_else(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path, out: Path
) -> None:
    alice, bob, _ = sealed_pair
    carol = make_party(tmp_path, "carol", alice.repo)
    sealer(alice).send(DATA, [bob.name], [age_keys(carol).recipient], chunk_bytes=CHUNK)
    rejection = refused(bob, out, VERIFICATION, "NotARecipientError")
    assert "sealed to someone else" in str(rejection["error"])
    # Remembered under the trust policy: the next run does not try again.
    assert recv(bob, out, 0)[0]["status"] == "rejected-before"


def test_an_annotation_swapped_in_by_the_registry_fails_the_signature_first(
    sealed_pair: tuple[Party, Party, str], out: Path, counting: age_cli.CountingDecrypt
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    first = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    other = forge.build(b"y" * len(DATA), [bob_age], filename="other.bin", chunk_bytes=CHUNK)
    honest = m.build_message(forge.annotations(first, bob.name, chunk_bytes=CHUNK), first.layers)
    bundle = forge.forge.signer.sign_digest(p.sha256_digest(honest))
    forge.push(
        first,
        bob.name,
        chunk_bytes=CHUNK,
        sign=lambda _: bundle,
        **{sm.A_SEALED: other.sealed_value},
    )
    refused(bob, out, VERIFICATION, "SignatureError")
    assert counting.calls == 0


def test_an_annotation_swapped_from_another_message_and_signed_fails_the_chunk_check(
    sealed_pair: tuple[Party, Party, str], out: Path
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    first = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    other = forge.build(os.urandom(len(DATA)), [bob_age], filename="x.bin", chunk_bytes=CHUNK)
    forge.push(first, bob.name, chunk_bytes=CHUNK, **{sm.A_SEALED: other.sealed_value})
    rejection = refused(bob, out, VERIFICATION, "PlaintextMismatchError")
    assert "chunk 0 hashes to" in str(rejection["error"])
    # The signed ciphertext opened to other bytes: remembered whatever the trust.
    with bob.workspace().ledger() as ledger:
        assert ledger.rejection(first.digests[bob.name], "any policy") is not None


def test_a_plaintext_hash_mismatch_writes_nothing(
    sealed_pair: tuple[Party, Party, str], out: Path
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    built = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    digests = list(built.facts.chunk_sha256)
    digests[2] = "0" * 64
    lying = sm.SealedFacts(built.facts.filename, built.facts.total_bytes, tuple(digests))
    built.sealed_value = base64.b64encode(forge.seal(lying.to_json(), [bob_age])).decode()
    forge.push(built, bob.name, chunk_bytes=CHUNK)
    rejection = refused(bob, out, VERIFICATION, "PlaintextMismatchError")
    assert "chunk 2 hashes to" in str(rejection["error"])


def test_a_layer_swapped_for_another_messages_valid_ciphertext(
    sealed_pair: tuple[Party, Party, str], out: Path
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    first = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    other = forge.build(os.urandom(len(DATA)), [bob_age], chunk_bytes=CHUNK)
    layers = [first.layers[0], other.layers[1], *first.layers[2:]]
    forge.push(first, bob.name, chunk_bytes=CHUNK, layers=layers)
    rejection = refused(bob, out, VERIFICATION, "PlaintextMismatchError")
    assert "chunk 1 hashes to" in str(rejection["error"])


def test_a_truncated_age_stream(sealed_pair: tuple[Party, Party, str], out: Path) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    built = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    cut = forge.layer(built.layer_blobs[1][:-100], 1)
    forge.push(built, bob.name, chunk_bytes=CHUNK, layers=[built.layers[0], cut, *built.layers[2:]])
    rejection = refused(bob, out, PROTOCOL, "SealedTruncatedError")
    assert "chunk 1" in str(rejection["error"])


def hostile_header(stanzas: int, stanza_body: bytes = b"") -> bytes:
    """An age file whose header holds ``stanzas`` short stanzas (bodies ``stanza_body``).

    10,000 of them fit in 60 KiB, under the header's size cap: the count decides.
    """
    stanza = b"-> a\n" + stanza_body + b"\n"
    return VERSION_LINE + stanza * stanzas + b"--- " + b"A" * 43 + b"\n" + b"\0" * 16 + b"\0" * 32


@pytest.mark.parametrize(
    ("header", "what"),
    [
        (hostile_header(10_000), "recipient stanzas"),
        (hostile_header(1, b"A" * 1024 * 1024), "age header larger"),
    ],
    ids=["10000-stanzas", "1MiB-header"],
)
def test_a_hostile_age_header_in_a_chunk_is_refused_before_any_work(
    sealed_pair: tuple[Party, Party, str],
    out: Path,
    counting: age_cli.CountingDecrypt,
    header: bytes,
    what: str,
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    data = os.urandom(2 * 1024 * 1024)  # room in the layer's size bound for the header
    built = forge.build(data, [bob_age])
    hostile = forge.layer(header, 0)
    forge.push(built, bob.name, layers=[hostile])
    rejection = refused(bob, out, PROTOCOL, "LimitExceededError")
    assert what in str(rejection["error"])
    assert counting.calls == 1  # the annotation only; the chunk never reached pyrage


def test_a_hostile_age_header_in_the_annotation_is_refused_before_any_work(
    sealed_pair: tuple[Party, Party, str], out: Path, counting: age_cli.CountingDecrypt
) -> None:
    alice, bob, bob_age = sealed_pair
    forge = sealer(alice)
    built = forge.build(DATA, [bob_age], chunk_bytes=CHUNK)
    built.sealed_value = base64.b64encode(hostile_header(5_000)).decode()
    forge.push(built, bob.name, chunk_bytes=CHUNK)
    rejection = refused(bob, out, PROTOCOL, "LimitExceededError")
    assert "recipient stanzas" in str(rejection["error"])
    assert counting.calls == 0


def test_a_bad_signature_is_never_decrypted(
    sealed_pair: tuple[Party, Party, str],
    tmp_path: Path,
    out: Path,
    counting: age_cli.CountingDecrypt,
) -> None:
    """A ciphertext that would fail loudly, under a bad signature: the signature is reported."""
    alice, bob, _ = sealed_pair
    mallory = make_party(tmp_path, "mallory", alice.repo)
    forge = sealer(alice)
    built = forge.build(DATA, [age_keys(mallory).recipient], chunk_bytes=CHUNK)  # not bob's
    garbage = forge.layer(b"age-encryption.org/v1\nnot an age file at all", 0)
    layers = [garbage, *built.layers[1:]]
    forge.push(
        built,
        bob.name,
        chunk_bytes=CHUNK,
        layers=layers,
        sign=sealer(mallory).forge.signer.sign_digest,
    )
    rejection = refused(bob, out, VERIFICATION, "UntrustedSignerError")
    assert "sealed" not in str(rejection["error"])
    assert bob.cli("verify", "--digest", built.digests[bob.name], "--chunks").code == VERIFICATION
    assert json.loads(bob.ok("ls", "--json"))[0]["error"].find("sealed") < 0
    assert counting.calls == 0


# --- require_sealed -----------------------------------------------------------------


def test_require_sealed_from_everyone_by_config(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path, out: Path
) -> None:
    alice, bob, bob_age = sealed_pair
    note = tmp_path / "note.txt"
    note.write_bytes(b"plain\n")
    alice.ok("send", str(note), "-r", bob.name, "--plaintext")
    sealer(alice).send(DATA, [bob.name], [bob_age], chunk_bytes=CHUNK)
    bob.ok("config", "set", "require_sealed", "true")
    outcomes = recv(bob, out, VERIFICATION)
    by_status = {o["status"]: o for o in outcomes}
    assert by_status["received"]["filename"] == "report.pdf"
    assert by_status["rejected"]["error_type"] == "NotSealedError"
    assert sorted(os.listdir(out)) == ["report.pdf"]
    listed = {r["filename"]: r for r in json.loads(bob.ok("ls", "--json"))}
    assert listed["note.txt"]["verified"] is False
    bob.ok("config", "set", "require_sealed", "false")
    assert "received" in {o["status"] for o in recv(bob, out)}
    assert (out / "note.txt").read_bytes() == b"plain\n"


def test_config_require_sealed_reaches_a_running_receiver_at_once(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path
) -> None:
    """A mount or syncer holds one workspace for days: ``config set`` must reach it."""
    alice, bob, _ = sealed_pair
    note = tmp_path / "note.txt"
    note.write_bytes(b"plain\n")
    digest = json.loads(alice.ok("send", str(note), "-r", bob.name, "--plaintext", "--json"))[
        "digest"
    ]
    workspace = bob.workspace()  # loaded once, as a running mount has it
    with workspace.client() as client:
        message = workspace.receiver(client).fetch_message(digest)
        assert workspace.receiver(client).verify_message(message).message.filename == "note.txt"
        bob.ok("config", "set", "require_sealed", "true")
        with pytest.raises(NotSealedError):
            workspace.receiver(client).verify_message(message)
        bob.ok("config", "set", "require_sealed", "false")
        workspace.receiver(client).verify_message(message)


def test_require_sealed_for_one_sender_is_remembered_until_the_policy_changes(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path, out: Path
) -> None:
    alice, bob, _ = sealed_pair
    trust_file = bob.workspace().paths.trust_file
    policy = TrustPolicy.load(trust_file)
    policy.set_contact(Contact(alice.name, require_sealed=True))
    policy.save(trust_file)
    note = tmp_path / "note.txt"
    note.write_bytes(b"plain\n")
    alice.ok("send", str(note), "-r", bob.name, "--plaintext")
    refused(bob, out, VERIFICATION, "NotSealedError")
    assert recv(bob, out)[0]["status"] == "rejected-before"
    policy.set_contact(Contact(alice.name, require_sealed=False))
    policy.save(trust_file)
    (outcome,) = recv(bob, out)
    assert outcome["status"] == "received"


# --- where decrypted bytes go -------------------------------------------------------


def test_a_sealed_chunk_too_big_for_memory_is_opened_only_in_private_places(
    sealed_pair: tuple[Party, Party, str], out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spilled chunks are decrypted in place: in the output folder or my private cache only."""
    import tempfile

    from dockercomms.core._internal import receive

    alice, bob, bob_age = sealed_pair
    built = sealer(alice).send(DATA, [bob.name], [bob_age], chunk_bytes=CHUNK)
    spilled: list[str | None] = []
    real = tempfile.TemporaryFile

    def recording(*args: object, **kwargs: object) -> object:
        spilled.append(str(kwargs.get("dir")))
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(receive, "SPOOL_IN_MEMORY", 1024)
    monkeypatch.setattr(receive.tempfile, "TemporaryFile", recording)
    recv(bob, out)
    assert (out / "report.pdf").read_bytes() == DATA
    assert spilled and set(spilled) == {str(out)}
    spilled.clear()
    bob.ok("verify", "--digest", built.digests[bob.name], "--chunks")
    cache = bob.workspace().paths.chunk_cache_dir
    assert spilled and set(spilled) == {str(cache)}
    assert cache.stat().st_mode & 0o777 == 0o700


def test_require_sealed_does_not_refuse_my_own_plaintext(
    sealed_pair: tuple[Party, Party, str], tmp_path: Path, out: Path
) -> None:
    """``sent/`` reads my messages back from the registry; a note to myself is mine too."""
    _, bob, _ = sealed_pair
    bob.ok("trust", "add", bob.name, "--key", str(bob.public_key()))
    bob.ok("config", "set", "require_sealed", "true")
    note = tmp_path / "to-self.txt"
    note.write_bytes(b"mine\n")
    digest = json.loads(bob.ok("send", str(note), "-r", bob.name, "--json", "--plaintext"))[
        "digest"
    ]
    assert json.loads(bob.ok("verify", "--digest", digest, "--json"))["sealed"] is False
    (outcome,) = recv(bob, out)
    assert outcome["status"] == "received"


def test_an_identity_without_an_age_key_is_told_how_to_get_one(
    embedded_pair: tuple[Party, Party], tmp_path: Path, out: Path
) -> None:
    alice, bob = embedded_pair
    key = bob.workspace().paths.age_identity_file
    key.unlink(missing_ok=True)  # an identity made before sealing existed
    carol = make_party(tmp_path, "carol", alice.repo)
    sealer(alice).send(DATA, [bob.name], [age_keys(carol).recipient], chunk_bytes=CHUNK)
    rejection = refused(bob, out, VERIFICATION, "NotARecipientError")
    assert "no age identity" in str(rejection["error"]) and "dockercomms init" in str(
        rejection["error"]
    )
