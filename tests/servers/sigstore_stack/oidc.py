"""A test OpenID Connect issuer that mints ES256 identity tokens on request.

sigstore-python never checks a token's signature (Fulcio does), so the issuer
only needs discovery and JWKS for the test Fulcio, plus ``token()`` for tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from .server import Request, Response, Service

AUDIENCE = "sigstore"
DEFAULT_EMAIL = "signer@dockercomms.test"


class OIDCIssuer:
    """One issuer: a P-256 signing key and the HTTP routes that publish it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = hashlib.sha256(name.encode()).hexdigest()[:16]
        self._service: Service | None = None

    @property
    def url(self) -> str:
        if self._service is None:
            raise RuntimeError(f"OIDC issuer {self.name} is not running")
        return self._service.url

    def start(self) -> OIDCIssuer:
        self._service = Service(self)
        return self

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    def token(
        self,
        *,
        email: str | None = None,
        subject: str | None = None,
        issuer_url: str | None = None,
        lifetime: int = 300,
        audience: str = AUDIENCE,
    ) -> str:
        """An ES256 JWT signed by this issuer's key.

        With neither ``email`` nor ``subject`` the token names ``DEFAULT_EMAIL``.
        A token with an email gets ``email_verified`` and Fulcio puts the email in
        the SAN; otherwise the SAN is the ``sub`` URI. ``issuer_url`` overrides the
        ``iss`` claim while still signing with this key: a forged token.
        """
        if email is None and subject is None:
            email = DEFAULT_EMAIL
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": issuer_url or self.url,
            "sub": subject or f"user-{hashlib.sha256(str(email).encode()).hexdigest()[:12]}",
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        if email is not None:
            claims["email"] = email
            claims["email_verified"] = True
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})

    def jwks(self) -> dict[str, object]:
        key = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key.update({"kid": self._kid, "alg": "ES256", "use": "sig"})
        return {"keys": [key]}

    def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/.well-known/openid-configuration":
            return Response.json(
                200,
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.url}/jwks",
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                },
            )
        if request.method == "GET" and request.path == "/jwks":
            return Response.json(200, self.jwks())
        if request.method == "POST" and request.path == "/token":
            fields = _form_or_json(request)
            token = self.token(email=fields.get("email"), subject=fields.get("subject"))
            return Response.json(
                200, {"access_token": token, "id_token": token, "token_type": "Bearer"}
            )
        return Response.error(404, f"no route {request.method} {request.path}")


def _form_or_json(request: Request) -> dict[str, str]:
    if not request.body:
        return {}
    if request.headers.get("content-type", "").startswith("application/json"):
        document = json.loads(request.body)
        return {k: str(v) for k, v in document.items()} if isinstance(document, dict) else {}
    return {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
