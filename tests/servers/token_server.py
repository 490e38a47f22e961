"""A scope-strict Docker token server for tests (the "token" auth of distribution).

Caveats first:

* Plain HTTP on 127.0.0.1 only, one request per connection (HTTP/1.0 semantics), so
  ``shutdown()`` never waits on an idle keep-alive client.
* Scope-strict on purpose: a token grants exactly the requested actions that the caller
  may have, nothing more. A client that reuses one token for a different scope (the
  oras-py single-token bug, oras-project/oras-py#187) therefore fails here, as it does
  against a real registry such as Docker Hub or Harbor.
* Anonymous callers get a token with an empty ``access`` list unless ``anonymous_pull``
  is set; then they get ``pull`` only. Wrong credentials get ``401``.
* Tokens are ES256 JWTs. By default the header carries ``x5c`` (the signing certificate,
  base64 DER), which distribution 2.8 checks against ``auth.token.rootcertbundle``. With
  ``use_kid=True`` the header carries ``kid`` in libtrust format instead; distribution
  looks that up among the public keys of the same bundle.

Protocol (https://distribution.github.io/distribution/spec/auth/token/):

* ``GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]`` with optional
  Basic credentials -> ``{"token", "access_token", "expires_in", "issued_at"}``.
* ``POST /token`` with a form body ``grant_type=password&username=&password=&service=
  &scope=`` (the OAuth2 password grant) -> ``{"access_token", ...}``. Refresh tokens are
  not issued.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.background_server import ServedInThread

DEFAULT_ACTIONS = frozenset({"pull", "push", "delete"})


@dataclass(frozen=True)
class Scope:
    """One parsed ``type:name:actions`` scope string.

    Attributes:
        type: resource type, ``repository`` or ``registry`` (for ``registry:catalog:*``).
        name: repository name (may contain ``/``; never ``:``, but a host-qualified
            name with a port is still split correctly because actions come last).
        actions: requested actions, in the order the client listed them.
    """

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse a scope string; raise ``ValueError`` if it has fewer than 3 parts."""
        type_, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not type_ or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(type_, name, tuple(a for a in actions.split(",") if a))


@dataclass(frozen=True)
class TokenRequest:
    """What one call to the token endpoint asked for and got.

    Attributes:
        method: ``GET`` or ``POST``.
        user: the Basic/form user name, ``None`` for an anonymous request.
        service: the ``service`` parameter (``None`` if the client omitted it).
        scopes: the raw ``scope`` parameters, in order.
        status: HTTP status returned (200, 400 or 401).
        granted: the ``access`` claim of the issued token (empty when refused).
    """

    method: str
    user: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int
    granted: tuple[Mapping[str, object], ...]


def _self_signed(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _error(code: str, message: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": message}]}


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Return the libtrust key ID distribution uses to look up ``kid``.

    base32(sha256(DER SubjectPublicKeyInfo)[:30]) in 12 groups of 4 joined by ``:``.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


class _TokenHTTPServer(ThreadingHTTPServer):
    # Handler threads are joined by server_close(); one request per connection keeps
    # them short-lived.
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: TokenServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _TokenHandler)


class _TokenHandler(BaseHTTPRequestHandler):
    server: _TokenHTTPServer
    protocol_version = "HTTP/1.0"
    timeout = 10

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean; requests are recorded in ``TokenServer.requests``."""

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        if split.path != "/token":
            self._send_json(HTTPStatus.NOT_FOUND, {"errors": [{"code": "NOT_FOUND"}]})
            return
        params = parse_qs(split.query, keep_blank_values=True)
        user, password = self._basic_credentials()
        self._issue("GET", params, user, password)

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        if split.path != "/token":
            self._send_json(HTTPStatus.NOT_FOUND, {"errors": [{"code": "NOT_FOUND"}]})
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        if form.get("grant_type", [""])[0] != "password":
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "unsupported_grant_type"})
            return
        user = form.get("username", [None])[0]
        password = form.get("password", [None])[0]
        self._issue("POST", form, user, password)

    def _basic_credentials(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        user, _, password = decoded.partition(":")
        return user, password

    def _issue(
        self,
        method: str,
        params: Mapping[str, list[str]],
        user: str | None,
        password: str | None,
    ) -> None:
        owner = self.server.owner
        service = params.get("service", [None])[0]
        raw_scopes = tuple(s for value in params.get("scope", []) for s in value.split(" ") if s)
        status, body, granted = owner.issue(service, raw_scopes, user, password)
        owner.record(TokenRequest(method, user, service, raw_scopes, status, granted))
        extra = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {}
        self._send_json(status, body, extra)

    def _send_json(self, status: int, body: object, extra: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@dataclass
class TokenServer:
    """Docker token server on 127.0.0.1 with one user, run in a thread.

    Attributes:
        username: the only user; ``password`` is random unless given.
        anonymous_pull: grant ``pull`` to callers without credentials.
        user_actions: actions the user may get on any repository (``permissions``
            overrides per repository).
        permissions: repository name -> actions for the user; when set, repositories not
            listed get nothing.
        service: expected ``service`` parameter and the ``aud`` claim.
        issuer: ``iss`` claim; must equal the registry's ``auth.token.issuer``.
        ttl: token lifetime in seconds (distribution adds 60 s of leeway to ``exp``).
        use_kid: identify the signing key by libtrust ``kid`` instead of ``x5c``.
        requests: every token request, in arrival order.
        requested_scopes: every scope string requested, in arrival order.
    """

    username: str = "tester"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    anonymous_pull: bool = False
    user_actions: frozenset[str] = DEFAULT_ACTIONS
    permissions: Mapping[str, Iterable[str]] | None = None
    service: str = "dockercomms-test-registry"
    issuer: str = "dockercomms-test-token-server"
    ttl: int = 300
    use_kid: bool = False
    requests: list[TokenRequest] = field(default_factory=list, init=False)
    requested_scopes: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed(self._key, self.issuer)
        self._lock = threading.Lock()
        self._served = ServedInThread("token-server", lambda: _TokenHTTPServer(self))

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Bind a random port and serve in a background thread; return ``self``."""
        self._served.start()
        return self

    def shutdown(self) -> None:
        """Stop serving, close the socket and join every thread. Idempotent."""
        self._served.stop()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- addresses and key material -----------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only valid while started)."""
        return f"http://{self._served.host}"

    @property
    def realm(self) -> str:
        """The token endpoint, for the registry's ``auth.token.realm``."""
        return f"{self.url}/token"

    @property
    def certificate_pem(self) -> bytes:
        """The signing certificate, for the registry's ``auth.token.rootcertbundle``."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_id(self) -> str:
        """libtrust key ID of the signing key (the ``kid`` distribution accepts)."""
        return libtrust_key_id(self._key.public_key())

    # -- token logic -----------------------------------------------------------------

    def record(self, request: TokenRequest) -> None:
        """Append a request to the log (called by the handler threads)."""
        with self._lock:
            self.requests.append(request)
            self.requested_scopes.extend(request.scopes)

    def requested_actions(self, name: str, type_: str = "repository") -> list[frozenset[str]]:
        """Action sets requested for one resource, in order.

        Compare sets, not scope strings: distribution 2.8 lists the actions in its
        challenge in random order (``pull,push`` or ``push,pull``).
        """
        with self._lock:
            scopes = [Scope.parse(raw) for raw in self.requested_scopes]
        return [frozenset(s.actions) for s in scopes if s.type == type_ and s.name == name]

    def clear(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()
            self.requested_scopes.clear()

    def allowed_actions(self, user: str | None, scope: Scope) -> frozenset[str]:
        """Actions ``user`` (``None`` = anonymous) may hold on the scope's resource."""
        if user is None:
            if scope.type == "repository" and self.anonymous_pull:
                return frozenset({"pull"})
            return frozenset()
        if scope.type == "registry":
            return frozenset({"*"}) if scope.name == "catalog" else frozenset()
        if scope.type != "repository":
            return frozenset()
        if self.permissions is None:
            return self.user_actions
        return frozenset(self.permissions.get(scope.name, ()))

    def issue(
        self,
        service: str | None,
        raw_scopes: Iterable[str],
        user: str | None,
        password: str | None,
    ) -> tuple[int, dict[str, object], tuple[Mapping[str, object], ...]]:
        """Decide one token request: ``(status, JSON body, granted access)``."""
        if service is not None and service != self.service:
            return 400, _error("INVALID", f"unknown service {service!r}"), ()
        if user is not None and (user != self.username or password != self.password):
            return 401, _error("UNAUTHORIZED", "invalid credentials"), ()
        access: list[dict[str, object]] = []
        for raw in raw_scopes:
            try:
                scope = Scope.parse(raw)
            except ValueError as exc:
                return 400, _error("INVALID", str(exc)), ()
            allowed = self.allowed_actions(user, scope)
            actions = [a for a in dict.fromkeys(scope.actions) if a in allowed]
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        token = self.make_token(user or "", access)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        body: dict[str, object] = {
            "token": token,
            "access_token": token,
            "expires_in": self.ttl,
            "issued_at": now.isoformat().replace("+00:00", "Z"),
        }
        return 200, body, tuple(access)

    def make_token(
        self,
        subject: str,
        access: list[dict[str, object]],
        *,
        ttl: int | None = None,
        audience: str | None = None,
    ) -> str:
        """Sign a token directly (tests use it to forge expired or foreign tokens)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service if audience is None else audience,
            "exp": now + (self.ttl if ttl is None else ttl),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers: dict[str, object] = {"typ": "JWT"}
        if self.use_kid:
            headers["kid"] = self.key_id
        else:
            der = self._cert.public_bytes(serialization.Encoding.DER)
            headers["x5c"] = [base64.b64encode(der).decode()]
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)
