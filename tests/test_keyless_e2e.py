"""Keyless (Sigstore) send -> recv through the CLI, against the local Sigstore stack.

Alice signs with an OIDC token (Fulcio certificate, Rekor entry, TSA timestamp);
Bob signs with a key and trusts Alice by identity AND issuer. Every rejection must
exit 2 and write nothing.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dockercomms.core.signing.keyless import sign_digest_keyless
from tests.conftest import Party
from tests.forge import Forge
from tests.sigstore_stack import LocalSigstore

ALICE_EMAIL = "alice@example.com"


def keyless_party(tmp_path: Path, name: str, repo: str, trust_config: Path) -> Party:
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
    )
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
    alice = keyless_party(tmp_path, "alice", backend, trust_config)
    bob = key_party(tmp_path, "bob", backend, trust_config)
    bob.ok(
        "trust", "add", "alice", "--identity", ALICE_EMAIL, "--issuer", sigstore_stack.issuer_url
    )
    return alice, bob


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
    alice = keyless_party(tmp_path, "alice", repo, trust_config)
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
    alice = keyless_party(tmp_path, "alice", repo, trust_config)
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
    from dockercomms.core.signing.keyless import load_trust_config

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
