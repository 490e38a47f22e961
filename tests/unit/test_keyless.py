"""Keyless signing and verification against the local Sigstore stack (no network).

``sigstore_stack`` comes from ``tests.servers.sigstore_stack.fixtures`` (registered by conftest).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sigstore import dsse
from sigstore.models import ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityToken
from sigstore.sign import SigningContext

from dockercomms.core._internal.signing.keyless import (
    KeylessIdentity,
    cache_trusted_root,
    certificate_identity,
    load_cached_trusted_root,
    load_trust_config,
    obtain_identity_token,
    sign_digest_keyless,
    verify_keyless_bundle,
)
from dockercomms.core._internal.signing.statement import statement_bytes
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    SignatureError,
    UntrustedSignerError,
)
from dockercomms.core.protocol import sha256_digest
from tests.servers.sigstore_stack import LocalSigstore

SIGNER = "alice@dockercomms.test"
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = sha256_digest(MANIFEST)
OTHER_DIGEST = sha256_digest(b"another manifest")

Tamper = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def trust(sigstore_stack: LocalSigstore) -> ClientTrustConfig:
    return ClientTrustConfig.from_json(sigstore_stack.client_trust_config_json())


@pytest.fixture(scope="module")
def root(trust: ClientTrustConfig) -> TrustedRoot:
    return trust.trusted_root


@pytest.fixture(scope="module")
def bundle(sigstore_stack: LocalSigstore, trust: ClientTrustConfig) -> bytes:
    """One DSSE bundle for DIGEST signed by SIGNER via the primary issuer."""
    token = sigstore_stack.token(email=SIGNER)
    return sign_digest_keyless(DIGEST, trust_config=trust, identity_token=token)


def _verify(
    bundle: bytes, root: TrustedRoot, stack: LocalSigstore, **overrides: str
) -> KeylessIdentity:
    arguments = {"identity": SIGNER, "issuer": stack.issuer_url, **overrides}
    digest = arguments.pop("digest", DIGEST)
    return verify_keyless_bundle(bundle, digest, trusted_root=root, **arguments)


def _edit(bundle: bytes, change: Tamper) -> bytes:
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode()


def _flip_last_byte(encoded: str) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_sign_then_verify(sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes) -> None:
    document = json.loads(bundle)
    assert document["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = document["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == statement_bytes(DIGEST)
    assert document["verificationMaterial"]["tlogEntries"][0]["kindVersion"]["kind"] == "dsse"

    signer = _verify(bundle, root, sigstore_stack)

    assert signer == KeylessIdentity(SIGNER, sigstore_stack.issuer_url)


def test_subject_uri_identity(sigstore_stack: LocalSigstore, trust: ClientTrustConfig) -> None:
    workload = "https://ci.dockercomms.test/pipelines/deploy"
    token = sigstore_stack.token(subject=workload)
    signed = sign_digest_keyless(DIGEST, trust_config=trust, identity_token=token)

    signer = _verify(signed, trust.trusted_root, sigstore_stack, identity=workload)

    assert signer.identity == workload


def test_wrong_identity_is_untrusted_signer(
    sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes
) -> None:
    with pytest.raises(UntrustedSignerError) as caught:
        _verify(bundle, root, sigstore_stack, identity="mallory@dockercomms.test")

    message = str(caught.value)
    assert "mallory@dockercomms.test" in message  # what was expected
    assert SIGNER in message  # what was found


def test_wrong_issuer_is_untrusted_signer(
    sigstore_stack: LocalSigstore, trust: ClientTrustConfig, root: TrustedRoot
) -> None:
    # Same email, but vouched for by the other issuer Fulcio also trusts.
    token = sigstore_stack.token(email=SIGNER, issuer_url=sigstore_stack.alt_issuer_url)
    signed = sign_digest_keyless(DIGEST, trust_config=trust, identity_token=token)
    assert _verify(signed, root, sigstore_stack, issuer=sigstore_stack.alt_issuer_url)

    with pytest.raises(UntrustedSignerError) as caught:
        _verify(signed, root, sigstore_stack)

    assert sigstore_stack.alt_issuer_url in str(caught.value)
    assert sigstore_stack.issuer_url in str(caught.value)


def test_untrusted_fulcio_ca(sigstore_stack: LocalSigstore, bundle: bytes) -> None:
    rogue = ClientTrustConfig.from_json(sigstore_stack.rogue_ca_trust_config_json())

    with pytest.raises(SignatureError) as caught:
        _verify(bundle, rogue.trusted_root, sigstore_stack)

    assert not isinstance(caught.value, UntrustedSignerError)


def _tamper_signature(document: dict[str, Any]) -> None:
    signature = document["dsseEnvelope"]["signatures"][0]
    signature["sig"] = _flip_last_byte(signature["sig"])


def _tamper_integrated_time(document: dict[str, Any]) -> None:
    entry = document["verificationMaterial"]["tlogEntries"][0]
    # Later, not earlier: an earlier time would fail the certificate validity check
    # first, and this case is about the signed entry timestamp.
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)


def _tamper_body(document: dict[str, Any]) -> None:
    entry = document["verificationMaterial"]["tlogEntries"][0]
    body = json.loads(base64.b64decode(entry["canonicalizedBody"]))
    body["spec"]["envelopeHash"]["value"] = "0" * 64
    entry["canonicalizedBody"] = base64.b64encode(json.dumps(body).encode()).decode()


def _tamper_inclusion_proof(document: dict[str, Any]) -> None:
    entry = document["verificationMaterial"]["tlogEntries"][0]
    entry["inclusionProof"]["rootHash"] = _flip_last_byte(entry["inclusionProof"]["rootHash"])


def _tamper_payload(document: dict[str, Any]) -> None:
    envelope = document["dsseEnvelope"]
    envelope["payload"] = base64.b64encode(statement_bytes(DIGEST) + b" ").decode()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_tamper_signature, "DSSE: invalid signature"),
        (_tamper_integrated_time, "SET: invalid inclusion promise"),
        (_tamper_body, "inclusion proof"),
        (_tamper_inclusion_proof, "inclusion proof"),
        (_tamper_payload, "DSSE: invalid signature"),
    ],
)
def test_tampered_bundle(
    sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes, tamper: Tamper, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason) as caught:
        _verify(_edit(bundle, tamper), root, sigstore_stack)

    assert DIGEST in str(caught.value)


def test_bundle_for_another_digest(
    sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes
) -> None:
    with pytest.raises(SignatureError) as caught:
        _verify(bundle, root, sigstore_stack, digest=OTHER_DIGEST)

    assert not isinstance(caught.value, UntrustedSignerError)
    assert OTHER_DIGEST in str(caught.value) and DIGEST in str(caught.value)


def test_attestation_is_not_a_signature(
    sigstore_stack: LocalSigstore, trust: ClientTrustConfig, root: TrustedRoot
) -> None:
    # A validly signed in-toto statement about the digest, but an SBOM, not a signature.
    statement = json.loads(statement_bytes(DIGEST))
    statement["predicateType"] = "https://spdx.dev/Document"
    context = SigningContext.from_trust_config(trust)
    token = IdentityToken(sigstore_stack.token(email=SIGNER))
    with context.signer(token) as signer:
        signed = signer.sign_dsse(dsse.Statement(json.dumps(statement).encode()))

    with pytest.raises(SignatureError, match="predicateType"):
        _verify(signed.to_json().encode(), root, sigstore_stack)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not json", b"[]", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'],
)
def test_garbage_bundle(sigstore_stack: LocalSigstore, root: TrustedRoot, garbage: bytes) -> None:
    with pytest.raises(SignatureError):
        _verify(garbage, root, sigstore_stack)
    assert certificate_identity(garbage) is None


def test_key_pair_bundle_is_not_keyless(
    sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes
) -> None:
    def to_key_pair_shape(document: dict[str, Any]) -> None:
        document["verificationMaterial"] = {"publicKey": {"hint": "aGludA=="}}

    key_pair = _edit(bundle, to_key_pair_shape)

    with pytest.raises(SignatureError):
        _verify(key_pair, root, sigstore_stack)
    assert certificate_identity(key_pair) is None


def test_cli_message_signature_bundle(
    sigstore_stack: LocalSigstore, root: TrustedRoot, tmp_path: Path
) -> None:
    # `sigstore sign FILE` signs sha256(FILE); for the manifest bytes that is DIGEST.
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(MANIFEST)
    out = tmp_path / "manifest.sigstore.json"
    config = sigstore_stack.write_trust_config(tmp_path / "trust.json")
    command = [
        sys.executable,
        "-m",
        "sigstore",
        "--trust-config",
        str(config),
        "sign",
        "--identity-token",
        sigstore_stack.token(email=SIGNER),
        "--bundle",
        str(out),
        str(manifest),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    cli_bundle = out.read_bytes()
    message = json.loads(cli_bundle)["messageSignature"]
    assert base64.b64decode(message["messageDigest"]["digest"]).hex() == DIGEST.split(":")[1]

    assert _verify(cli_bundle, root, sigstore_stack) == KeylessIdentity(
        SIGNER, sigstore_stack.issuer_url
    )
    with pytest.raises(SignatureError):
        _verify(cli_bundle, root, sigstore_stack, digest=OTHER_DIGEST)
    with pytest.raises(UntrustedSignerError):
        _verify(cli_bundle, root, sigstore_stack, identity="mallory@dockercomms.test")


def test_timestamp_authority_alone_establishes_time(
    sigstore_stack: LocalSigstore, root: TrustedRoot, bundle: bytes
) -> None:
    document = json.loads(bundle)
    stamps = document["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    assert len(stamps) == 1

    # Without the SET, the RFC 3161 timestamp is the only verified time left.
    def drop_inclusion_promise(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        del entry["inclusionPromise"]

    tsa_only = _edit(bundle, drop_inclusion_promise)
    assert _verify(tsa_only, root, sigstore_stack)

    # A root that trusts no TSA must not accept a bundle carrying timestamps.
    no_tsa = ClientTrustConfig.from_json(sigstore_stack.no_tsa_trust_config_json())
    with pytest.raises(SignatureError):
        _verify(bundle, no_tsa.trusted_root, sigstore_stack)


def test_certificate_identity_is_the_claim(sigstore_stack: LocalSigstore, bundle: bytes) -> None:
    assert certificate_identity(bundle) == KeylessIdentity(SIGNER, sigstore_stack.issuer_url)


def test_cached_trusted_root_verifies_offline(
    sigstore_stack: LocalSigstore, trust: ClientTrustConfig, bundle: bytes, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert load_cached_trusted_root(cache) is None

    written = cache_trusted_root(trust, cache)
    cached = load_cached_trusted_root(cache)

    assert written.parent == cache
    assert cached is not None
    assert _verify(bundle, cached, sigstore_stack)

    written.write_text("{}")
    with pytest.raises(ConfigError):
        load_cached_trusted_root(cache)


def test_load_trust_config(sigstore_stack: LocalSigstore, bundle: bytes, tmp_path: Path) -> None:
    path = sigstore_stack.write_trust_config(tmp_path / "trust.json")

    loaded = load_trust_config(str(path))

    assert _verify(bundle, loaded.trusted_root, sigstore_stack)
    with pytest.raises(ConfigError):
        load_trust_config(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text('{"mediaType": "nope"}')
    with pytest.raises(ConfigError):
        load_trust_config(str(tmp_path / "broken.json"))


def test_signing_refuses_bad_tokens(
    sigstore_stack: LocalSigstore, trust: ClientTrustConfig
) -> None:
    with pytest.raises(ConfigError):
        sign_digest_keyless(DIGEST, trust_config=trust, identity_token="not-a-jwt")
    expired = sigstore_stack.token(email=SIGNER, lifetime=-60)
    with pytest.raises(ConfigError):
        sign_digest_keyless(DIGEST, trust_config=trust, identity_token=expired)
    # Fulcio only trusts its configured issuers; a forged issuer is refused there.
    forged = sigstore_stack.token(email=SIGNER, issuer_url="http://127.0.0.1:9/evil")
    with pytest.raises(DockerCommsError, match="keyless signing"):
        sign_digest_keyless(DIGEST, trust_config=trust, identity_token=forged)


_AMBIENT_CI_VARIABLES = (
    "SIGSTORE_ID_TOKEN",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "GOOGLE_SERVICE_ACCOUNT_NAME",
)


def test_obtain_identity_token_order(
    sigstore_stack: LocalSigstore, trust: ClientTrustConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _AMBIENT_CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="SIGSTORE_ID_TOKEN"):
        obtain_identity_token(None, trust_config=trust, interactive=False)

    monkeypatch.setenv("SIGSTORE_ID_TOKEN", "from-env")
    assert obtain_identity_token(None, trust_config=trust, interactive=False) == "from-env"
    assert obtain_identity_token("explicit", trust_config=trust, interactive=False) == "explicit"


def test_stack_without_tsa_uses_the_signed_entry_timestamp() -> None:
    with LocalSigstore(with_tsa=False) as stack:
        trust = ClientTrustConfig.from_json(stack.client_trust_config_json())
        issuer = stack.issuer_url
        token = stack.token(email=SIGNER)
        signed = sign_digest_keyless(DIGEST, trust_config=trust, identity_token=token)

    material = json.loads(signed)["verificationMaterial"]
    assert not material.get("timestampVerificationData", {}).get("rfc3161Timestamps")
    # Verification is offline: the stack is already shut down.
    signer = verify_keyless_bundle(
        signed, DIGEST, trusted_root=trust.trusted_root, identity=SIGNER, issuer=issuer
    )
    assert signer == KeylessIdentity(SIGNER, issuer)
