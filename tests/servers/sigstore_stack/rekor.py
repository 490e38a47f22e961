"""A test Rekor v1: hashedrekord and dsse 0.0.1 entries, with SET and checkpoint.

Each accepted entry is stored in its canonical form (RFC 8785 JSON), appended to
an RFC 6962 tree, and returned with an inclusion proof for the tree that ends at
that entry, a signed checkpoint for that tree, and a signed entry timestamp.

The canonical bodies are what real Rekor stores, because sigstore-python
rebuilds them from the bundle and compares (verification step 8):

* hashedrekord: the proposed entry, unchanged.
* dsse: ``proposedContent`` is replaced by ``envelopeHash``, ``payloadHash`` and
  ``signatures`` (``{signature: b64 sig, verifier: b64 PEM cert}``); the
  verifier checks the payload hash and the signature list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from dockercomms.core._internal.signing.statement import pae

from . import merkle
from .ctlog import spki
from .server import Request, Response, Service

CHECKPOINT_SIGNER = "rekor.dockercomms.test"


class EntryRejected(ValueError):
    """The proposed entry is malformed or its signature does not verify."""


class Rekor:
    """An append-only log with its own P-256 key."""

    name = "rekor"

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_der = spki(self.key.public_key())
        self.log_id = hashlib.sha256(self.public_key_der).digest()
        self.tree_id = secrets.randbelow(2**62)
        self._leaves: list[bytes] = []
        self._lock = threading.Lock()
        self._service: Service | None = None

    @property
    def url(self) -> str:
        if self._service is None:
            raise RuntimeError("Rekor is not running")
        return self._service.url

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._leaves)

    def start(self) -> Rekor:
        self._service = Service(self)
        return self

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/api/v1/log/entries":
            return Response.error(404, f"no route {request.method} {request.path}")
        try:
            proposed = request.json()
            body = canonical_body(proposed)
        except (EntryRejected, ValueError, KeyError, TypeError) as exc:
            return Response.error(400, f"entry rejected: {exc}")
        uuid, entry = self.append(body)
        return Response.json(201, {uuid: entry})

    def append(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """Log ``body`` and return (uuid, Rekor v1 LogEntry) for it."""
        leaf = merkle.leaf_hash(body)
        with self._lock:
            self._leaves.append(leaf)
            index = len(self._leaves) - 1
            tree = list(self._leaves)
        integrated_time = int(time.time())
        encoded_body = base64.b64encode(body).decode()
        log_id_hex = self.log_id.hex()
        root = merkle.root(tree)
        promise = rfc8785.dumps(
            {
                "body": encoded_body,
                "integratedTime": integrated_time,
                "logID": log_id_hex,
                "logIndex": index,
            }
        )
        entry = {
            "body": encoded_body,
            "integratedTime": integrated_time,
            "logID": log_id_hex,
            "logIndex": index,
            "verification": {
                "signedEntryTimestamp": base64.b64encode(self._sign(promise)).decode(),
                "inclusionProof": {
                    "logIndex": index,
                    "treeSize": len(tree),
                    "rootHash": root.hex(),
                    "hashes": [h.hex() for h in merkle.inclusion_path(index, tree)],
                    "checkpoint": self.checkpoint(len(tree), root),
                },
            },
        }
        return leaf.hex(), entry

    def checkpoint(self, size: int, root: bytes) -> str:
        """A signed note: header, one blank line, one ``— name b64(hint||sig)`` line."""
        header = (
            f"{CHECKPOINT_SIGNER} - {self.tree_id}\n{size}\n{base64.b64encode(root).decode()}\n"
        )
        signature = self.log_id[:4] + self._sign(header.encode())
        return f"{header}\n\u2014 {CHECKPOINT_SIGNER} {base64.b64encode(signature).decode()}\n"

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def canonical_body(proposed: object) -> bytes:
    """Check a proposed entry and return the canonical body Rekor would store."""
    if not isinstance(proposed, dict) or proposed.get("apiVersion") != "0.0.1":
        raise EntryRejected("only apiVersion 0.0.1 entries are supported")
    kind = proposed.get("kind")
    if kind == "hashedrekord":
        return _hashedrekord(proposed)
    if kind == "dsse":
        return _dsse(proposed)
    raise EntryRejected(f"unsupported entry kind {kind!r}")


def _hashedrekord(proposed: dict[str, Any]) -> bytes:
    spec = proposed["spec"]
    digest_spec = spec["data"]["hash"]
    if digest_spec["algorithm"] != "sha256":
        raise EntryRejected("hashedrekord: only sha256 digests")
    digest = bytes.fromhex(digest_spec["value"])
    signature = base64.b64decode(spec["signature"]["content"], validate=True)
    certificate = _certificate(spec["signature"]["publicKey"]["content"])
    try:
        _ec_key(certificate).verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except Exception as exc:
        raise EntryRejected("hashedrekord: signature does not verify") from exc
    return rfc8785.dumps(proposed)


def _dsse(proposed: dict[str, Any]) -> bytes:
    content = proposed["spec"]["proposedContent"]
    envelope_text: str = content["envelope"]
    verifiers: list[str] = content["verifiers"]
    if len(verifiers) != 1:
        raise EntryRejected("dsse: exactly one verifier expected")
    key = _ec_key(_certificate(verifiers[0]))
    envelope = json.loads(envelope_text)
    payload_type: str = envelope["payloadType"]
    payload = base64.b64decode(envelope["payload"], validate=True)
    signed = pae(payload_type, payload)
    signatures = []
    for item in envelope["signatures"]:
        signature = base64.b64decode(item["sig"], validate=True)
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except Exception as exc:
            raise EntryRejected("dsse: envelope signature does not verify") from exc
        signatures.append(
            {"signature": base64.b64encode(signature).decode(), "verifier": verifiers[0]}
        )
    if not signatures:
        raise EntryRejected("dsse: envelope has no signatures")
    stored: dict[str, Any] = {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {
                "algorithm": "sha256",
                "value": hashlib.sha256(envelope_text.encode()).hexdigest(),
            },
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": sorted(signatures, key=lambda s: s["signature"]),
        },
    }
    return rfc8785.dumps(stored)


def _certificate(b64_pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64_pem, validate=True))


def _ec_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EntryRejected("only EC signing keys are supported")
    return key
