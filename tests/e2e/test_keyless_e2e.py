"""Keyless (Sigstore) send -> recv through the CLI, against the local Sigstore stack.

Alice signs with an OIDC token (Fulcio certificate, Rekor entry, TSA timestamp);
Bob signs with a key and trusts Alice by identity AND issuer. Every rejection must
exit 2 and write nothing.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockercomms.core._internal.signing.keyless import sign_digest_keyless
from tests.conftest import Party
from tests.forge import Forge
from tests.servers.sigstore_stack import LocalSigstore

ALICE_EMAIL = "alice@example.com"
CAROL_EMAIL = "carol@private.example"


def keyless_party(
    tmp_path: Path,
    name: str,
    repo: str,
    trust_config: Path,
    issuer: str,
    *,
    email: str = ALICE_EMAIL,
) -> Party:
    """A keyless identity ``name`` that signs (and trusts itself) as ``email`` via ``issuer``."""
    party = Party(name, tmp_path / f"home-{name}", repo, tmp_path / "xdg-data")
    party.ok(
        "init",
        "--identity",
        name,
        "--repo",
        repo,
        "--signing",
        "keyless",
        "--sigstore-trust",
        str(trust_config),
        "--cert-identity",
        email,
        "--issuer",
        issuer,
    )
    # These tests are about keyless signatures: to a peer whose age key it does not
    # know, this party sends plaintext rather than refusing (give_card makes it seal).
    party.ok("config", "set", "send_plaintext", "true")
    return party


def key_party(tmp_path: Path, name: str, repo: str, trust_config: Path) -> Party:
    party = Party(name, tmp_path / f"home-{name}", repo, tmp_path / "xdg-data")
    party.ok("init", "--identity", name, "--repo", repo, "--sigstore-trust", str(trust_config))
    return party


@pytest.fixture
def trust_config(tmp_path: Path, sigstore_stack: LocalSigstore) -> Path:
    return sigstore_stack.write_trust_config(tmp_path / "trust-config.json")


@pytest.fixture
def keyless_pair(
    tmp_path: Path, backend: str, trust_config: Path, sigstore_stack: LocalSigstore
) -> tuple[Party, Party]:
    alice = keyless_party(tmp_path, "alice", backend, trust_config, sigstore_stack.issuer_url)
    bob = key_party(tmp_path, "bob", backend, trust_config)
    bob.ok(
        "trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", sigstore_stack.issuer_url
    )
    give_card(bob, alice)
    return alice, bob


def give_card(owner: Party, to: Party) -> None:
    """``to`` trusts ``owner``'s contact card (signing key and age key: sends are sealed)."""
    card = owner.home / "card.txt"
    card.write_text(owner.ok("key", "export"))
    to.ok("trust", "add", owner.name, "--card", str(card))


def send_keyless(
    alice: Party, stack: LocalSigstore, path: Path, *, email: str = ALICE_EMAIL
) -> str:
    token = stack.token(email=email)
    out = alice.ok("send", str(path), "--recipient", "bob", "--identity-token", token, "--json")
    digest: str = json.loads(out)["digest"]
    return digest


def refused(bob: Party, out: Path) -> dict[str, object]:
    result = bob.cli("recv", "--out", str(out), "--json")
    assert result.code == 2, result.out + result.err
    assert not out.exists() or list(out.iterdir()) == []
    rejected: dict[str, object] = json.loads(result.out)[0]
    return rejected


def test_keyless_round_trip(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    alice, bob = keyless_pair
    source = tmp_path / "signed.txt"
    source.write_bytes(b"signed by who, not by which key\n" * 1000)
    digest = send_keyless(alice, sigstore_stack, source)
    outcomes = json.loads(bob.ok("recv", "--out", str(tmp_path / "out"), "--json"))
    assert [o["status"] for o in outcomes] == ["received"]
    assert outcomes[0]["signer"] == ALICE_EMAIL
    assert (tmp_path / "out" / "signed.txt").read_bytes() == source.read_bytes()
    verified = json.loads(bob.ok("verify", "--digest", digest, "--json"))
    assert verified["signer"]["kind"] == "keyless"
    assert verified["signer"]["issuer"] == sigstore_stack.issuer_url


def test_env_token_source(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    alice, bob = keyless_pair
    alice.extra_env["SIGSTORE_ID_TOKEN"] = sigstore_stack.token(email=ALICE_EMAIL)
    (tmp_path / "env.txt").write_text("token from the environment\n")
    alice.ok("send", str(tmp_path / "env.txt"), "--recipient", "bob")
    assert bob.cli("recv", "--out", str(tmp_path / "out")).code == 0


def test_no_token_is_a_clear_config_error(
    keyless_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, _ = keyless_pair
    (tmp_path / "x.txt").write_text("x")
    result = alice.cli("send", str(tmp_path / "x.txt"), "--recipient", "bob")
    assert result.code == 1
    assert "token" in result.err.lower()


def test_wrong_identity_is_refused(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    alice, bob = keyless_pair
    (tmp_path / "w.txt").write_text("w")
    send_keyless(alice, sigstore_stack, tmp_path / "w.txt", email="mallory@example.com")
    assert refused(bob, tmp_path / "out")["error_type"] == "UntrustedSignerError"


def test_wrong_issuer_is_refused(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    repo = f"oci-layout:{tmp_path / 'layout'}"
    alice = keyless_party(tmp_path, "alice", repo, trust_config, sigstore_stack.issuer_url)
    bob = key_party(tmp_path, "bob", repo, trust_config)
    bob.ok(
        "trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", sigstore_stack.issuer_url
    )
    token = sigstore_stack.token(email=ALICE_EMAIL, issuer_url=sigstore_stack.alt_issuer_url)
    (tmp_path / "i.txt").write_text("i")
    alice.ok("send", str(tmp_path / "i.txt"), "--recipient", "bob", "--identity-token", token)
    assert refused(bob, tmp_path / "out")["error_type"] == "UntrustedSignerError"


def test_untrusted_fulcio_ca_is_refused(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    repo = f"oci-layout:{tmp_path / 'layout'}"
    rogue = tmp_path / "rogue.json"
    rogue.write_text(sigstore_stack.rogue_ca_trust_config_json())
    alice = keyless_party(tmp_path, "alice", repo, trust_config, sigstore_stack.issuer_url)
    bob = key_party(tmp_path, "bob", repo, rogue)
    bob.ok(
        "trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", sigstore_stack.issuer_url
    )
    (tmp_path / "ca.txt").write_text("ca")
    send_keyless(alice, sigstore_stack, tmp_path / "ca.txt")
    assert refused(bob, tmp_path / "out")["error_type"] == "SignatureError"


def test_sender_annotation_not_the_certificate_identity(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    alice, bob = keyless_pair
    bob.ok(
        "trust",
        "add",
        "carol",
        "--identity",
        "carol@example.com",
        "--issuer",
        sigstore_stack.issuer_url,
    )
    (tmp_path / "s.txt").write_text("s")
    # Alice's identity says "alice" in the annotation, but the certificate is Carol's.
    send_keyless(alice, sigstore_stack, tmp_path / "s.txt", email="carol@example.com")
    assert refused(bob, tmp_path / "out")["error_type"] == "SenderMismatchError"


def _forge_keyless(alice: Party, stack: LocalSigstore, trust_config: Path) -> tuple[Forge, object]:
    from dockercomms.core._internal.signing.keyless import load_trust_config

    workspace = alice.workspace()
    config = load_trust_config(str(trust_config))
    forge = Forge(workspace.client(), workspace.signer(), "alice")
    return forge, config


@pytest.mark.parametrize("part", ["signature", "log-entry"])
def test_tampered_keyless_bundle_is_refused(
    keyless_pair: tuple[Party, Party],
    sigstore_stack: LocalSigstore,
    trust_config: Path,
    tmp_path: Path,
    part: str,
) -> None:
    alice, bob = keyless_pair
    forge, config = _forge_keyless(alice, sigstore_stack, trust_config)
    token = sigstore_stack.token(email=ALICE_EMAIL)

    def tampered(digest: str) -> bytes:
        bundle = json.loads(sign_digest_keyless(digest, trust_config=config, identity_token=token))  # type: ignore[arg-type]
        if part == "signature":
            envelope = bundle["dsseEnvelope"]
            raw = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
            raw[-1] ^= 0x01
            envelope["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
        else:
            entry = bundle["verificationMaterial"]["tlogEntries"][0]
            entry["logIndex"] = str(int(entry["logIndex"]) + 1)
        return json.dumps(bundle).encode()

    forge.message("bob", sign=tampered)
    assert refused(bob, tmp_path / "out")["error_type"] == "SignatureError"


def test_sigstore_cli_bundle_is_accepted(
    keyless_pair: tuple[Party, Party],
    sigstore_stack: LocalSigstore,
    trust_config: Path,
    tmp_path: Path,
) -> None:
    """A plain messageSignature bundle made by the sigstore CLI over the manifest bytes."""
    alice, bob = keyless_pair
    forge, _ = _forge_keyless(alice, sigstore_stack, trust_config)
    token = sigstore_stack.token(email=ALICE_EMAIL)

    def cli_bundle(digest: str) -> bytes:
        raw, _ = forge.client.fetch_manifest(digest)
        manifest_file = tmp_path / "manifest.json"
        manifest_file.write_bytes(raw)
        bundle_file = tmp_path / "manifest.sigstore.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sigstore",
                "--trust-config",
                str(trust_config),
                "sign",
                "--identity-token",
                token,
                "--bundle",
                str(bundle_file),
                str(manifest_file),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return bundle_file.read_bytes()

    digest = forge.message("bob", b"from the sigstore CLI\n", sign=cli_bundle)
    assert json.loads(bob.ok("verify", "--digest", digest, "--json"))["verified"]
    outcomes = json.loads(bob.ok("recv", "--out", str(tmp_path / "out"), "--json"))
    assert [o["status"] for o in outcomes] == ["received"]


def test_trusted_root_is_cached_for_offline_use(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    alice, bob = keyless_pair
    (tmp_path / "c.txt").write_text("c")
    send_keyless(alice, sigstore_stack, tmp_path / "c.txt")
    bob.ok("recv", "--out", str(tmp_path / "out"))
    assert any((bob.home / "cache" / "sigstore").iterdir())


def test_mixed_trust_file(
    keyless_pair: tuple[Party, Party], sigstore_stack: LocalSigstore, tmp_path: Path
) -> None:
    _, bob = keyless_pair
    listing = bob.ok("trust", "list")
    assert "alice\tkeyless\talice@example.com via" in listing
    assert "bob\tkey\t" in listing


# --- the receiver's own Sigstore set-up (#16.11-#16.14) -----------------------------


@pytest.fixture(scope="module")
def second_stack() -> Iterator[LocalSigstore]:
    """Another Sigstore instance: a private deployment next to the "public" one."""
    stack = LocalSigstore(with_tsa=False).start()
    try:
        yield stack
    finally:
        stack.shutdown()


def embedded_pair(
    tmp_path: Path, stack: LocalSigstore, alice_config: Path, bob_config: Path
) -> tuple[Party, Party]:
    """Keyless alice and key-pair bob (trusting alice) on the embedded registry."""
    repo = f"oci-layout:{tmp_path / 'layout'}"
    alice = keyless_party(tmp_path, "alice", repo, alice_config, stack.issuer_url)
    bob = key_party(tmp_path, "bob", repo, bob_config)
    bob.ok("trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", stack.issuer_url)
    give_card(bob, alice)
    return alice, bob


def test_own_trust_config_problem_is_not_a_rejection(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    """Bob's trust config moved before he ever cached its root: his fault, not Alice's."""
    bob_config = Path(shutil.copy(trust_config, tmp_path / "bob-trust.json"))
    alice, bob = embedded_pair(tmp_path, sigstore_stack, trust_config, bob_config)
    (tmp_path / "m.txt").write_text("m")
    digest = send_keyless(alice, sigstore_stack, tmp_path / "m.txt")
    moved = bob_config.rename(tmp_path / "moved.json")

    result = bob.cli("recv", "--out", str(tmp_path / "out"), "--json")
    assert result.code == 1, result.err
    (outcome,) = json.loads(result.out)
    assert (outcome["status"], outcome["error_type"]) == ("deferred", "ConfigError")
    assert str(bob_config) in outcome["error"] and "config set" in outcome["error"]
    checked = bob.cli("verify", "--digest", digest)
    assert checked.code == 1 and str(bob_config) in checked.err

    moved.rename(bob_config)
    outcomes = json.loads(bob.ok("recv", "--out", str(tmp_path / "out"), "--json"))
    assert [o["status"] for o in outcomes] == ["received"]


def test_a_cached_root_verifies_with_the_trust_config_gone(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    bob_config = Path(shutil.copy(trust_config, tmp_path / "bob-trust.json"))
    alice, bob = embedded_pair(tmp_path, sigstore_stack, trust_config, bob_config)
    (tmp_path / "first.txt").write_text("first")
    send_keyless(alice, sigstore_stack, tmp_path / "first.txt")
    bob.ok("recv", "--out", str(tmp_path / "out"))
    bob_config.unlink()

    (tmp_path / "second.txt").write_text("second")
    send_keyless(alice, sigstore_stack, tmp_path / "second.txt")
    result = bob.cli("recv", "--out", str(tmp_path / "out"), "--json")
    assert result.code == 0, result.out + result.err
    fresh = [o for o in json.loads(result.out) if o["status"] != "already-received"]
    assert [(o["filename"], o["status"]) for o in fresh] == [("second.txt", "received")]
    assert "cached" in result.err and str(bob_config) in result.err


def test_a_relative_trust_config_is_stored_absolute(
    tmp_path: Path, sigstore_stack: LocalSigstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sigstore_stack.write_trust_config(tmp_path / "relative.json")
    bob = key_party(tmp_path, "bob", f"oci-layout:{tmp_path / 'layout'}", Path("relative.json"))
    settings = tomllib.loads((bob.home / "config.toml").read_text())
    assert settings["sigstore_trust"] == str(tmp_path / "relative.json")


def test_init_force_keeps_what_it_was_not_asked_to_change(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    repo = f"oci-layout:{tmp_path / 'layout'}"
    alice = keyless_party(tmp_path, "alice", repo, trust_config, sigstore_stack.issuer_url)
    other = sigstore_stack.write_trust_config(tmp_path / "other.json")
    alice.ok("init", "--identity", "alice", "--force", "--sigstore-trust", str(other))
    settings = tomllib.loads((alice.home / "config.toml").read_text())
    assert (settings["signing"], settings["sigstore_trust"]) == ("keyless", str(other))


def test_keyless_init_trusts_its_own_identity(
    tmp_path: Path, trust_config: Path, sigstore_stack: LocalSigstore
) -> None:
    repo = f"oci-layout:{tmp_path / 'layout'}"
    alice = keyless_party(tmp_path, "alice", repo, trust_config, sigstore_stack.issuer_url)
    expected = f"alice\tkeyless\t{ALICE_EMAIL} via {sigstore_stack.issuer_url}"
    assert expected in alice.ok("trust", "list")
    (tmp_path / "own.txt").write_text("my own")
    digest = send_keyless(alice, sigstore_stack, tmp_path / "own.txt")
    verified = json.loads(alice.ok("verify", "--digest", digest, "--json"))
    assert verified["signer"]["name"] == "alice"

    erin = Party("erin", tmp_path / "home-erin", repo, tmp_path / "xdg-data")
    args = ("init", "--identity", "erin", "--signing", "keyless")
    result = erin.cli(*args, "--sigstore-trust", str(trust_config))
    assert result.code == 1 and "--issuer" in result.err


def test_senders_on_two_sigstore_instances(
    tmp_path: Path,
    trust_config: Path,
    sigstore_stack: LocalSigstore,
    second_stack: LocalSigstore,
) -> None:
    """Alice signs on one instance, Carol on another; Bob trusts each on her own."""
    alice, bob = embedded_pair(tmp_path, sigstore_stack, trust_config, trust_config)
    private = second_stack.write_trust_config(tmp_path / "private.json")
    carol = keyless_party(
        tmp_path, "carol", alice.repo, private, second_stack.issuer_url, email=CAROL_EMAIL
    )
    # A bare trusted root is all a receiver needs; it cannot sign.
    root = tmp_path / "private-root.json"
    root.write_text(second_stack.trusted_root_json())
    dave = Party("dave", tmp_path / "home-dave", alice.repo, tmp_path / "xdg-data")
    refused_init = dave.cli(
        "init", "--identity", "dave", "--signing", "keyless", "--sigstore-trust", str(root)
    )
    assert refused_init.code == 1 and "signing" in refused_init.err

    carol_trust = ("--identity", CAROL_EMAIL, "--issuer", second_stack.issuer_url)
    bob.ok("trust", "add", "carol", *carol_trust)  # on Bob's own instance: wrong
    (tmp_path / "a.txt").write_text("from alice")
    (tmp_path / "c.txt").write_text("from carol")
    send_keyless(alice, sigstore_stack, tmp_path / "a.txt")
    send_keyless(carol, second_stack, tmp_path / "c.txt", email=CAROL_EMAIL)

    result = bob.cli("recv", "--out", str(tmp_path / "out"), "--json")
    assert result.code == 2
    status = {o["sender"]: (o["status"], o.get("error_type")) for o in json.loads(result.out)}
    assert status == {"alice": ("received", None), "carol": ("rejected", "SignatureError")}

    bob.ok("trust", "remove", "carol")
    bob.ok("trust", "add", "carol", *carol_trust, "--sigstore-trust", str(root))
    outcomes = json.loads(bob.ok("recv", "--out", str(tmp_path / "out"), "--json"))
    fresh = [(o["sender"], o["status"]) for o in outcomes if o["status"] != "already-received"]
    assert fresh == [("carol", "received")]
    assert str(root) in bob.ok("trust", "list")
