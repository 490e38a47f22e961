"""A test Fulcio: exchanges a verified OIDC token + CSR for a short-lived leaf.

It checks what real Fulcio checks that matters to a verifier: the token's issuer
is allowed and its signature verifies against that issuer's JWKS (fetched over
HTTP, as Fulcio does), the CSR proves possession of its key. The leaf carries
the Sigstore profile sigstore-python requires (critical SAN, KeyUsage, EKU
codeSigning, AKI, issuer extension 1.1) and, last, a precert SCT.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import der, pki
from .ctlog import CTLog
from .oidc import AUDIENCE
from .server import Request, Response, Service

LEAF_LIFETIME = timedelta(minutes=10)
OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")

# The stack is on 127.0.0.1; never route it through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Fulcio:
    """Issues leaves from ``ca`` for tokens of the issuers in ``allowed_issuers``."""

    name = "fulcio"

    def __init__(self, ca: pki.CertificateAuthority, ctlog: CTLog, allowed_issuers: Iterable[str]):
        self.ca = ca
        self.ctlog = ctlog
        self.allowed_issuers = set(allowed_issuers)
        self._jwks: dict[str, jwt.PyJWKSet] = {}
        self._lock = threading.Lock()
        self._service: Service | None = None

    @property
    def url(self) -> str:
        if self._service is None:
            raise RuntimeError("Fulcio is not running")
        return self._service.url

    def start(self) -> Fulcio:
        self._service = Service(self)
        return self

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/api/v2/signingCert":
            return Response.error(404, f"no route {request.method} {request.path}")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return Response.error(401, "missing bearer token")
        try:
            claims = self._verify_token(auth.removeprefix("Bearer ").strip())
        except (jwt.PyJWTError, OSError, ValueError, KeyError) as exc:
            return Response.error(401, f"identity token rejected: {exc}")
        try:
            document = request.json()
            if not isinstance(document, dict):
                raise TypeError("request body is not a JSON object")
            csr_pem = base64.b64decode(document["certificateSigningRequest"])
            csr = x509.load_pem_x509_csr(csr_pem)
        except Exception as exc:
            return Response.error(400, f"bad certificate request: {exc}")
        if not csr.is_signature_valid:
            return Response.error(400, "CSR signature invalid: no proof of possession")
        leaf = self.issue(csr.public_key(), claims)
        chain = [pki.pem(cert) for cert in (leaf, *self.ca.chain)]
        return Response.json(
            201, {"signedCertificateEmbeddedSct": {"chain": {"certificates": chain}}}
        )

    def _verify_token(self, token: str) -> dict[str, Any]:
        unverified = jwt.decode(token, options={"verify_signature": False})
        issuer = unverified.get("iss")
        if issuer not in self.allowed_issuers:
            raise ValueError(f"issuer {issuer!r} is not allowed by this Fulcio")
        header = jwt.get_unverified_header(token)
        key = self._key_for(issuer, header.get("kid"))
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience=AUDIENCE,
            issuer=issuer,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
        return claims

    def _key_for(self, issuer: str, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            jwks = self._jwks.get(issuer)
        if jwks is None:
            discovery = _fetch_json(f"{issuer}/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer:
                raise ValueError(f"discovery for {issuer} names {discovery.get('issuer')!r}")
            jwks = jwt.PyJWKSet.from_dict(_fetch_json(str(discovery["jwks_uri"])))
            with self._lock:
                self._jwks[issuer] = jwks
        for key in jwks.keys:
            if kid is None or key.key_id == kid:
                return key
        raise ValueError(f"no key {kid!r} in JWKS of {issuer}")

    def issue(self, public_key: Any, claims: dict[str, Any]) -> x509.Certificate:
        """Build the leaf twice: once to get the precert TBS, once with its SCT."""
        issuer_url = str(claims["iss"])
        if claims.get("email") and claims.get("email_verified"):
            san: x509.GeneralName = x509.RFC822Name(str(claims["email"]))
        else:
            san = x509.UniformResourceIdentifier(str(claims["sub"]))
        now = datetime.fromtimestamp(int(time.time()), UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca.intermediate.subject)
            .public_key(public_key)
            .serial_number(pki.serial())
            .not_valid_before(now)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca.intermediate_key.public_key()
                ),
                False,
            )
            # The subject is empty, so RFC 5280 requires the SAN to be critical.
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            # 1.1 holds the raw URL bytes (what Identity(issuer=) compares), 1.8 DER.
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_OID, issuer_url.encode()), False)
            .add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V2_OID, der.utf8_string(issuer_url)),
                False,
            )
        )
        key = self.ca.intermediate_key
        precert = builder.sign(key, hashes.SHA384())
        sct = self.ctlog.sct_extension(
            precert.tbs_certificate_bytes, self.ca.intermediate, int(now.timestamp()) * 1000
        )
        leaf = builder.add_extension(sct, critical=False).sign(key, hashes.SHA384())
        return leaf


def _fetch_json(url: str) -> dict[str, Any]:
    with _opener.open(url, timeout=5) as response:
        document = json.loads(response.read())
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return document
