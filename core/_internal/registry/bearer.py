"""Registry challenges and the Docker token protocol (one token per repository and scope).

Caveats first:

* oras-py keeps one bearer token for everything and re-sends it after a 401, which
  fails on scope-strict registries (oras-project/oras-py#187). Tokens here are
  fetched for exactly the scope a request needs and cached under that scope.
* ``oras.auth.utils.parse_auth_header`` keeps only realm/service/scope and no
  scheme, and cannot read escaped quotes, so challenges are parsed here; the
  ``error`` parameter is what tells an expired token from a missing permission.
  The parse is linear (the stdlib's quoted-string aware comma split, then plain
  string methods; no backtracking regex) and refuses a header over
  :data:`MAX_CHALLENGE_CHARS` unread: the header comes from the registry.
* The token service gets the registry's deadlines and retry policy, its answer
  is read under :data:`MAX_TOKEN_ANSWER_BYTES`, credentials go only to the
  realm's origin (never to a redirect elsewhere; the refresh-token ``POST`` is
  never redirected), and an HTTPS registry's realm must be HTTPS.
* With a password the token is fetched by ``GET`` with basic auth (what the docker
  CLI does); with an identity token by the OAuth2 ``refresh_token`` grant (``POST``).
* Lifetimes come from ``expires_in`` (60 s when absent or shorter, as the spec
  says), measured from when the answer arrived, minus a margin so a token never
  expires between ``headers_for`` and the registry's check.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from urllib.request import parse_http_list

import requests

from dockercomms.core._internal.registry.body import BodyBrokeOffError, read_capped, read_prefix
from dockercomms.core._internal.registry.credentials import Credentials
from dockercomms.core._internal.registry.retry import (
    TEMPORARY_STATUSES,
    Attempts,
    RetryPolicy,
    classify,
    retry_after_seconds,
)
from dockercomms.core._internal.registry.transport import BoundedSession, Origin, send
from dockercomms.core.errors import (
    AuthError,
    ProtocolError,
    RegistryError,
    RegistryUnavailableError,
)
from dockercomms.core.untrusted import parse_json, parse_json_object, shown

#: Token lifetime when the service does not say (and the minimum the spec allows).
DEFAULT_LIFETIME = 60.0
#: Sent as ``client_id`` on OAuth2 grants, as the spec asks.
CLIENT_ID = "dockercomms"
#: Longest ``WWW-Authenticate`` value read (all challenges); real ones are < 1 KiB.
MAX_CHALLENGE_CHARS = 8192
#: Largest token service answer read (a JWT with its certificate is a few KiB).
MAX_TOKEN_ANSWER_BYTES = 64 * 1024
#: How much of a token service's error body is read for its message.
ERROR_BODY_BYTES = 4096

_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge.

    Attributes:
        scheme: lower-cased auth scheme (``basic``, ``bearer``).
        params: the auth-params, keys lower-cased, values unquoted.
    """

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str:
        """The token endpoint (bearer) or protection space name (basic)."""
        return self.params.get("realm", "")

    @property
    def service(self) -> str | None:
        """The ``service`` the token is for."""
        return self.params.get("service")

    @property
    def error(self) -> str | None:
        """``invalid_token`` (expired, unreadable) or ``insufficient_scope``."""
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value, in order (RFC 9110 11.6.1).

    Linear in the length of ``header``; raises ValueError for a value longer
    than :data:`MAX_CHALLENGE_CHARS`. Elements that fit no rule are skipped.
    """
    if len(header) > MAX_CHALLENGE_CHARS:
        raise ValueError(
            f"a WWW-Authenticate header of {len(header)} characters; "
            f"at most {MAX_CHALLENGE_CHARS} are read"
        )
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    # Split on the commas outside quoted strings; quoted-pairs are resolved.
    for element in parse_http_list(header):
        name, equals, value = element.partition("=")
        if equals and scheme is not None and _is_token(name.strip()):
            params[name.strip().lower()] = _unquoted(value.strip())
            continue
        # "scheme" or "scheme param=value" (or "scheme token68"): a new challenge.
        words = element.split(None, 1)
        if not words or not _is_token(words[0]):
            continue
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
        scheme, params = words[0].lower(), {}
        if len(words) == 2:
            name, equals, value = words[1].partition("=")
            if equals and _is_token(name.strip()):
                params[name.strip().lower()] = _unquoted(value.strip())
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return challenges


def _is_token(text: str) -> bool:
    return bool(text) and all(ch in _TCHAR for ch in text)


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def preferred_challenge(response: requests.Response) -> Challenge | None:
    """The challenge we can answer: bearer first, then basic; None if neither.

    Raises :class:`RegistryError` when the header is too long to be read.
    """
    try:
        found = parse_challenges(response.headers.get("WWW-Authenticate", ""))
    except ValueError as exc:
        raise RegistryError(f"registry {urlsplit(response.url).netloc} sent {exc}") from None
    for wanted in ("bearer", "basic"):
        for challenge in found:
            if challenge.scheme == wanted:
                return challenge
    return None


@dataclass(frozen=True)
class BearerToken:
    """A token for one scope.

    Attributes:
        value: the opaque token.
        scope: what it was requested for.
        obtained_at: ``time.monotonic()`` when it arrived.
        use_until: ``time.monotonic()`` after which it is not sent any more.
        anonymous: obtained without credentials.
    """

    value: str
    scope: str
    obtained_at: float
    use_until: float
    anonymous: bool

    @property
    def header(self) -> str:
        """The ``Authorization`` value."""
        return f"Bearer {self.value}"

    def fresh(self, now: float | None = None) -> bool:
        """Whether the token may still be sent."""
        return (time.monotonic() if now is None else now) < self.use_until


def usable_lifetime(expires_in: float) -> float:
    """Seconds to use a token valid for ``expires_in``: a quarter (max 30 s) held back."""
    lifetime = max(expires_in, DEFAULT_LIFETIME)
    return lifetime - min(30.0, lifetime / 4)


@dataclass(frozen=True)
class TokenService:
    """A registry's token endpoint, as its challenge described it.

    Attributes:
        registry: ``host[:port]`` of the registry (for messages).
        realm: token endpoint URL (untrusted: the registry named it).
        service: the ``service`` parameter, if the challenge gave one.
        verify: ``verify=`` for requests (the registry's trust store applies).
        policy: timeouts and retries for the token request.
        https_only: the registry is HTTPS, so the realm must be too.
    """

    registry: str
    realm: str
    service: str | None
    verify: bool | str
    policy: RetryPolicy
    https_only: bool = True

    def fetch(self, scope: str, credentials: Credentials | None) -> BearerToken:
        """A token for ``scope``: with credentials if given, else anonymous."""
        try:
            Origin.of(self.realm)
        except ValueError:
            raise AuthError(
                f"registry {self.registry} named an unusable token realm {shown(self.realm)}"
            ) from None
        params = {"scope": scope}
        if self.service is not None:
            params["service"] = self.service
        if credentials is not None and credentials.identity_token is not None:
            form = params | {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": CLIENT_ID,
            }
            # A POST is never redirected (transport.send), so the refresh token
            # in its body reaches the realm and nothing else.
            body = self._ask("POST", self.realm, who=credentials, data=form)
        elif credentials is not None:
            basic = {"Authorization": credentials.basic_header()}
            body = self._ask("GET", self._with_query(params), who=credentials, auth=basic)
        else:
            body = self._ask("GET", self._with_query(params), who=None)
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"token service {shown(self.realm)} answered without a token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else DEFAULT_LIFETIME
        now = time.monotonic()
        return BearerToken(value, scope, now, now + usable_lifetime(lifetime), credentials is None)

    def _with_query(self, params: Mapping[str, str]) -> str:
        parts = urlsplit(self.realm)
        query = (parts.query + "&" if parts.query else "") + urlencode(params)
        return urlunsplit(parts._replace(query=query))

    def _ask(
        self,
        method: str,
        url: str,
        *,
        who: Credentials | None,
        data: Any = None,
        auth: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The token service's JSON answer, after the registry's retry policy."""
        what = "get a token"
        attempts = Attempts(self.policy, f"{what} for registry {self.registry}")
        answered = False
        credentials: Callable[[], Mapping[str, str]] | None = None
        if auth is not None:
            headers = dict(auth)

            def credentials() -> Mapping[str, str]:
                return headers

        with BoundedSession() as session:
            while True:
                attempts.start()
                try:
                    response = send(
                        session,
                        method,
                        url,
                        what=what,
                        trusted=Origin.of(self.realm),
                        answer_seconds=self.policy.answer_seconds(),
                        timeout=self.policy.timeout,
                        verify=self.verify,
                        credentials=credentials,
                        data=data,
                        https_only=self.https_only or None,
                    )
                    answered = True
                    if response.status_code == 200:
                        return self._json(response)
                except (requests.RequestException, BodyBrokeOffError) as exc:
                    failure = (
                        exc.failure
                        if isinstance(exc, BodyBrokeOffError)
                        else classify(exc, self.policy)
                    )
                    if failure.worth_retrying(answered) and attempts.again(failure.reason):
                        continue
                    text = failure.sentence(
                        f"{what} for registry {self.registry}",
                        url,
                        attempts.number,
                        attempts.elapsed,
                        server="token service",
                    )
                    raise RegistryUnavailableError(text) from None
                if response.status_code in TEMPORARY_STATUSES:
                    if attempts.again(
                        f"got HTTP {response.status_code}",
                        retry_after=retry_after_seconds(response),
                        before_waiting=response.close,
                    ):
                        continue
                    response.close()
                    raise RegistryUnavailableError(
                        f"token service {shown(self.realm)} answered HTTP {response.status_code}"
                    )
                raise self._refused(response, who)

    def _json(self, response: requests.Response) -> dict[str, Any]:
        where = f"token service {shown(self.realm)}"
        try:
            raw = read_capped(response, MAX_TOKEN_ANSWER_BYTES, where, self.policy)
            return parse_json_object(raw, "its answer", max_bytes=MAX_TOKEN_ANSWER_BYTES)
        except ProtocolError as exc:
            raise AuthError(f"{where} answered with something unusable: {exc}") from None

    def _refused(self, response: requests.Response, who: Credentials | None) -> AuthError:
        status = response.status_code
        detail = _detail(read_prefix(response, ERROR_BODY_BYTES, self.policy))
        realm = shown(self.realm)
        if who is None:
            return AuthError(
                f"token service {realm} of registry {self.registry} refused an anonymous "
                f"token (HTTP {status}{': ' + detail if detail else ''})"
            )
        how = "identity token" if who.identity_token is not None else "password"
        return AuthError(
            f"token service {realm} of registry {self.registry} rejected the {how} of "
            f"user {who.username!r} from {who.source} "
            f"(HTTP {status}{': ' + detail if detail else ''})"
        )


def _detail(raw: bytes) -> str:
    """A short reason from an OAuth2 or OCI error body (never echoes a request)."""
    try:
        body = parse_json(raw, "token service error", max_bytes=ERROR_BODY_BYTES)
    except ProtocolError:
        return ""
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("error"), str):
        return shown(body["error"])
    errors = body.get("errors")
    if isinstance(errors, list):
        return shown(
            "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
        )
    return ""
