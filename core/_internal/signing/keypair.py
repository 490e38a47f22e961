"""Key-pair signing: ECDSA P-256 over the DSSE PAE, in a Sigstore v0.3 bundle (SPEC 3).

Caveats first:

* sigstore-python cannot verify public-key bundles (it requires a certificate), so
  verification here uses ``cryptography`` directly.
* There is no transparency log and no signing-time evidence: trust is exactly
  "this pinned key signed this digest". Rotation and revocation are out of band
  (``trust remove``).
* The bundle's key ``hint`` is unauthenticated; it only selects which pinned key
  to try. A hint naming no pinned key is an untrusted signer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from dockercomms.core import protocol
from dockercomms.core._internal.signing.statement import pae, signed_digest, statement_bytes
from dockercomms.core.errors import ConfigError, SignatureError, UntrustedSignerError

_Check = Callable[[ec.EllipticCurvePublicKey], bool]

BUNDLE_MEDIA_TYPES = (
    protocol.BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
)


def key_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """base64 sha256 of the DER SubjectPublicKeyInfo: the bundle's ``publicKey.hint``."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return base64.b64encode(digest.finalize()).decode("ascii")


def generate_key(private_path: Path) -> ec.EllipticCurvePrivateKey:
    """Create a P-256 key at ``private_path`` (0600, never overwriting) plus ``.pub``."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"a key already exists at {private_path}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    public_path(private_path).write_bytes(public_pem(key.public_key()))
    return key


def public_path(private_path: Path) -> Path:
    """Where the public half of a key file lives."""
    return private_path.with_name(private_path.name + ".pub")


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo, the format ``trust add --key`` reads."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load our signing key, refusing anything but P-256 and group/world-readable files."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(f"signing key {path} is readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # cryptography's text is a FAQ link; what the user needs is which file.
        raise ConfigError(
            f"signing key {path} is not an unencrypted PEM private key (damaged?)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{path} is not an ECDSA P-256 private key")
    return key


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM public key, refusing anything but P-256."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            "not a PEM public key (a '-----BEGIN PUBLIC KEY-----' block, "
            "as 'dockercomms key export' prints)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError("only ECDSA P-256 public keys are supported")
    return key


class KeyPairSigner:
    """Signs manifest digests with a local P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.hint = key_hint(key.public_key())

    def sign_digest(self, manifest_digest: str) -> bytes:
        """Bundle JSON: DSSE in-toto statement over ``manifest_digest``."""
        payload = statement_bytes(manifest_digest)
        signature = self._key.sign(
            pae(protocol.DSSE_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256())
        )
        bundle = {
            "mediaType": protocol.BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.hint}},
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode("ascii"),
                "payloadType": protocol.DSSE_PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
            },
        }
        return json.dumps(bundle, separators=(",", ":")).encode()


@dataclass(frozen=True)
class PinnedKey:
    """A trusted public key and the sender name it speaks for."""

    name: str
    key: ec.EllipticCurvePublicKey

    @property
    def hint(self) -> str:
        """The key's bundle hint (also shown as its fingerprint)."""
        return key_hint(self.key)


def is_key_bundle(bundle: dict[str, Any]) -> bool:
    """True when the bundle carries a public-key hint rather than a certificate."""
    material = bundle.get("verificationMaterial")
    return isinstance(material, dict) and "publicKey" in material


def verify_key_bundle(
    bundle: dict[str, Any], manifest_digest: str, keys: list[PinnedKey]
) -> PinnedKey:
    """Verify a public-key bundle over ``manifest_digest``; return the key that signed.

    Steps:
    1. The bundle is a v0.3 bundle with a public-key hint and no certificate.
    2. The hint selects pinned keys (none: untrusted signer).
    3. DSSE: the signature over the PAE verifies, the payload is a cosign sign/v1
       in-toto statement with exactly one subject, and that subject's digest equals
       the manifest digest (constant time).
       messageSignature: messageDigest equals the manifest digest (constant time)
       and the signature over that prehashed digest verifies.
    """
    # 1.
    if bundle.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise SignatureError(f"unsupported bundle media type {bundle.get('mediaType')!r}")
    material = bundle["verificationMaterial"]
    if "certificate" in material or "x509CertificateChain" in material:
        raise SignatureError("bundle has both a public key hint and a certificate")
    hint = (material.get("publicKey") or {}).get("hint")
    # 2.
    candidates = [k for k in keys if hint is None or k.hint == hint]
    if not candidates:
        raise UntrustedSignerError(
            f"bundle is signed by key {hint!r}, which is not in the trust policy"
        )
    # 3.
    if "dsseEnvelope" in bundle:
        check = _dsse_checker(bundle["dsseEnvelope"], manifest_digest)
    elif "messageSignature" in bundle:
        check = _message_signature_checker(bundle["messageSignature"], manifest_digest)
    else:
        raise SignatureError("bundle has neither a DSSE envelope nor a message signature")
    for candidate in candidates:
        if check(candidate.key):
            return candidate
    raise SignatureError("signature does not verify with the pinned key")


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"bundle {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"bundle {what} is not base64") from exc


def _dsse_checker(envelope: object, manifest_digest: str) -> _Check:
    if not isinstance(envelope, dict):
        raise SignatureError("DSSE envelope is malformed")
    payload = _b64(envelope.get("payload"), "DSSE payload")
    payload_type = envelope.get("payloadType")
    signatures = envelope.get("signatures")
    if (
        not isinstance(payload_type, str)
        or not isinstance(signatures, list)
        or len(signatures) != 1
    ):
        raise SignatureError("DSSE envelope must carry exactly one signature")
    signature = _b64(signatures[0].get("sig") if isinstance(signatures[0], dict) else None, "sig")
    try:
        claimed = signed_digest(payload_type, payload)
    except ValueError as exc:
        raise SignatureError(f"DSSE payload: {exc}") from exc
    if not hmac.compare_digest(claimed.encode(), manifest_digest.encode()):
        raise SignatureError(f"bundle signs {claimed}, not {manifest_digest}")
    signed = pae(payload_type, payload)

    def check(key: ec.EllipticCurvePublicKey) -> bool:
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return check


def _message_signature_checker(message: object, manifest_digest: str) -> _Check:
    if not isinstance(message, dict):
        raise SignatureError("messageSignature is malformed")
    digest_info = message.get("messageDigest") or {}
    if not isinstance(digest_info, dict) or digest_info.get("algorithm") != "SHA2_256":
        raise SignatureError("messageSignature must carry a SHA2_256 message digest")
    claimed = _b64(digest_info.get("digest"), "message digest")
    expected = bytes.fromhex(manifest_digest.split(":", 1)[1])
    if not hmac.compare_digest(claimed, expected):
        raise SignatureError("bundle's message digest is not the manifest digest")
    signature = _b64(message.get("signature"), "signature")

    def check(key: ec.EllipticCurvePublicKey) -> bool:
        try:
            key.verify(signature, expected, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return False
        return True

    return check
