"""The ClientTrustConfig JSON (trusted root + signing config) describing a stack.

Every ``validFor.start`` is in the past: sigstore-python silently drops services
and keys whose validity starts in the future.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from . import pki

CLIENT_TRUST_CONFIG = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
TRUSTED_ROOT = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
SIGNING_CONFIG = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
OPERATOR = "dockercomms-test"


@dataclass(frozen=True)
class StackDescription:
    """Everything the trust config names: URLs, keys and certificate chains."""

    not_before: datetime
    oidc_url: str
    fulcio_url: str
    fulcio_chain: list[x509.Certificate]
    rekor_url: str
    rekor_key_der: bytes
    rekor_log_id: bytes
    ctlog_key_der: bytes
    ctlog_log_id: bytes
    tsa_url: str | None
    tsa_chain: list[x509.Certificate] | None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(url: str, key_der: bytes, log_id: bytes, start: str) -> dict[str, object]:
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": _b64(key_der),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": start},
        },
        "logId": {"keyId": _b64(log_id)},
    }


def _authority(
    label: str, uri: str, chain: list[x509.Certificate], start: str
) -> dict[str, object]:
    return {
        "subject": {"organization": OPERATOR, "commonName": label},
        "uri": uri,
        "certChain": {"certificates": [{"rawBytes": _b64(pki.der(c))} for c in chain]},
        "validFor": {"start": start},
    }


def _service(url: str, start: str) -> dict[str, object]:
    return {"url": url, "majorApiVersion": 1, "operator": OPERATOR, "validFor": {"start": start}}


def trusted_root(stack: StackDescription) -> dict[str, object]:
    start = _time(stack.not_before)
    tsas = []
    if stack.tsa_url and stack.tsa_chain:
        tsas.append(_authority("tsa", stack.tsa_url, stack.tsa_chain, start))
    return {
        "mediaType": TRUSTED_ROOT,
        "tlogs": [_log(stack.rekor_url, stack.rekor_key_der, stack.rekor_log_id, start)],
        "certificateAuthorities": [
            _authority("fulcio", stack.fulcio_url, stack.fulcio_chain, start)
        ],
        # The CT log is in-process; nothing ever contacts this URL.
        "ctlogs": [_log("http://127.0.0.1:9/ct", stack.ctlog_key_der, stack.ctlog_log_id, start)],
        "timestampAuthorities": tsas,
    }


def signing_config(stack: StackDescription) -> dict[str, object]:
    start = _time(stack.not_before)
    return {
        "mediaType": SIGNING_CONFIG,
        "caUrls": [_service(stack.fulcio_url, start)],
        "oidcUrls": [_service(stack.oidc_url, start)],
        "rekorTlogUrls": [_service(stack.rekor_url, start)],
        "tsaUrls": [_service(stack.tsa_url, start)] if stack.tsa_url else [],
        "rekorTlogConfig": {"selector": "ANY"},
        "tsaConfig": {"selector": "ANY"},
    }


def client_trust_config(stack: StackDescription) -> dict[str, object]:
    return {
        "mediaType": CLIENT_TRUST_CONFIG,
        "trustedRoot": trusted_root(stack),
        "signingConfig": signing_config(stack),
    }
