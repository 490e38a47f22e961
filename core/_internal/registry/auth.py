"""How client and registry authenticate each other: credentials one way, CAs the other.

Caveats first:

* The client asks :meth:`Authenticator.headers_for` before each request and hands
  every 401 to :meth:`Authenticator.handle_challenge`. A challenge is learnt once per
  registry host; from then on basic credentials and cached bearer tokens go out
  pre-emptively, so a body is never sent unauthenticated and then again.
* Nothing is pinged up front: the first request of a session that meets a 401 is
  always replayable without a body (a HEAD, GET or the upload's POST), and the
  upload's PATCH and PUT only follow a POST with the same scope.
* Bearer tokens are per repository *and* scope (``pull`` vs ``pull,push``); once
  the token realm is known, a new scope gets its token before its first request.
* A 401 for credentials we just presented is final: :class:`AuthError` (exit 3)
  names the registry, the user, where the credentials came from, and, when none were
  found, every place that was looked at. Secrets are never part of a message.
* HTTPS is verified against the operating system's CA store (``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` apply), not the ``certifi`` bundle requests would pick.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests

from dockercomms.core._internal.registry.bearer import (
    BearerToken,
    Challenge,
    TokenService,
    preferred_challenge,
)
from dockercomms.core._internal.registry.credentials import CredentialLookup, CredentialSource
from dockercomms.core._internal.registry.retry import RetryPolicy
from dockercomms.core.errors import AuthError

log = logging.getLogger(__name__)

#: A token refused this soon after it was issued lacks permission; it has not expired.
REFUSAL_GRACE = 10.0


@dataclass(frozen=True)
class RegistryEndpoint:
    """What an authenticator needs to know about the registry a client talks to.

    Attributes:
        host: ``host[:port]``; empty for the embedded registry.
        scheme: ``https`` or ``http``.
        verify: ``verify=`` for requests, also used for the token service.
        policy: timeouts and retries, also used for the token service.
    """

    host: str
    scheme: str = "https"
    verify: bool | str = True
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class AuthSource(Protocol):
    """Where a new client gets its authenticator: what a command hands the clients it makes.

    One source serves every client a command creates (``RegistryAuth`` shares what
    it learns per registry host between them).
    """

    def prepare(self, endpoint: RegistryEndpoint) -> Authenticator:
        """The authenticator a new client for ``endpoint`` uses (no network I/O)."""
        ...


class Authenticator(AuthSource, Protocol):
    """What :class:`~dockercomms.core._internal.registry.client.RegistryClient` needs from auth."""

    def headers_for(self, scope: str) -> dict[str, str]:
        """Headers to send with a request needing ``scope`` (may be empty)."""
        ...

    def handle_challenge(self, response: requests.Response, scope: str) -> bool:
        """React to a 401: True if a retry may succeed; raise when it cannot."""
        ...


class Anonymous:
    """No credentials: the embedded registry and open registries."""

    def prepare(self, endpoint: RegistryEndpoint) -> Authenticator:
        """Nothing to bind."""
        return self

    def headers_for(self, scope: str) -> dict[str, str]:
        """No headers."""
        return {}

    def handle_challenge(self, response: requests.Response, scope: str) -> bool:
        """Nothing to offer, so a 401 stays a 401."""
        return False


class RegistryAuth:
    """Credentials from flags, environment or docker config; basic or bearer on demand.

    One instance serves every client a command creates (the syncer makes many), so
    learnt challenges and tokens are kept per registry host and shared, under a lock
    (chunks upload from two threads).
    """

    def __init__(self, source: CredentialSource | None = None) -> None:
        self.source = source or CredentialSource()
        self._hosts: dict[str, _HostState] = {}
        self._lock = threading.Lock()

    def prepare(self, endpoint: RegistryEndpoint) -> Authenticator:
        """A view of this host's shared state with the client's TLS and timeouts."""
        with self._lock:
            state = self._hosts.setdefault(endpoint.host, _HostState())
        return _HostAuth(self.source, state, endpoint)


@dataclass
class _HostState:
    """What one registry host taught us.

    Attributes:
        scheme: ``basic`` or ``bearer`` once a challenge was seen, else None.
        basic: the basic ``Authorization`` value, once in use.
        token_service: where bearer tokens come from, once known.
        tokens: scope -> the token to send.
        lookup: the credential lookup, done at most once.
    """

    scheme: str | None = None
    basic: str | None = None
    token_service: TokenService | None = None
    tokens: dict[str, BearerToken] = field(default_factory=dict)
    lookup: CredentialLookup | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)


class _HostAuth:
    """:class:`RegistryAuth` bound to one client's endpoint."""

    def __init__(
        self, source: CredentialSource, state: _HostState, endpoint: RegistryEndpoint
    ) -> None:
        self._source = source
        self._state = state
        self._endpoint = endpoint

    def prepare(self, endpoint: RegistryEndpoint) -> Authenticator:
        """Rebinding keeps the shared state."""
        return _HostAuth(self._source, self._state, endpoint)

    def headers_for(self, scope: str) -> dict[str, str]:
        """The cached basic header, or this scope's bearer token (fetched if due)."""
        state = self._state
        with state.lock:
            if state.scheme == "basic" and state.basic is not None:
                return {"Authorization": state.basic}
            if state.scheme == "bearer":
                return {"Authorization": self._token(scope).header}
        return {}

    def handle_challenge(self, response: requests.Response, scope: str) -> bool:
        """Learn the scheme, or find out that what we sent was refused (then raise)."""
        challenge = preferred_challenge(response)
        if challenge is None:
            return False
        request = response.request
        sent = request.headers.get("Authorization") if request is not None else None
        try:
            with self._state.lock:
                if challenge.scheme == "basic":
                    return self._basic(sent)
                return self._bearer(challenge, sent, scope)
        except AuthError:
            response.close()
            raise

    # --- basic ----------------------------------------------------------------------

    def _basic(self, sent: str | None) -> bool:
        lookup = self._lookup()
        credentials = lookup.credentials
        host = self._endpoint.host
        if credentials is None:
            raise AuthError(
                f"registry {host} requires a user name and password; none found "
                f"(tried: {lookup.describe()})"
            )
        if not credentials.has_password:
            raise AuthError(
                f"registry {host} uses basic auth, which cannot use the identity token "
                f"from {credentials.source}; give a user name and password"
            )
        header = credentials.basic_header()
        if sent == header:
            raise AuthError(
                f"registry {host} rejected the password of user {credentials.username!r} "
                f"from {credentials.source} (basic auth)"
            )
        if self._state.scheme != "basic" and not _private_link(self._endpoint):
            log.warning("sending the password for %s over plain HTTP", host)
        self._state.scheme, self._state.basic = "basic", header
        return True

    # --- bearer ---------------------------------------------------------------------

    def _bearer(self, challenge: Challenge, sent: str | None, scope: str) -> bool:
        state = self._state
        service = TokenService(
            self._endpoint.host,
            challenge.realm,
            challenge.service,
            self._endpoint.verify,
            self._endpoint.policy,
            https_only=self._endpoint.scheme == "https",
        )
        known = state.token_service
        if known is None or (known.realm, known.service) != (service.realm, service.service):
            state.tokens.clear()
        state.token_service = service
        state.scheme = "bearer"
        token = state.tokens.get(scope)
        if token is not None and sent == token.header:
            del state.tokens[scope]
            recent = time.monotonic() - token.obtained_at < REFUSAL_GRACE
            if challenge.error == "insufficient_scope" or recent:
                raise self._refused(token)
        self._token(scope)
        return True

    def _token(self, scope: str) -> BearerToken:
        state = self._state
        token = state.tokens.get(scope)
        if token is not None and token.fresh():
            return token
        assert state.token_service is not None
        lookup = self._lookup()
        try:
            token = state.token_service.fetch(scope, lookup.credentials)
        except AuthError as exc:
            if lookup.credentials is None:
                raise AuthError(
                    f"{exc}; no credentials found (tried: {lookup.describe()})"
                ) from None
            raise
        state.tokens[scope] = token
        return token

    def _refused(self, token: BearerToken) -> AuthError:
        host = self._endpoint.host
        lookup = self._lookup()
        if token.anonymous or lookup.credentials is None:
            return AuthError(
                f"registry {host} refused anonymous access ({token.scope}); "
                f"no credentials found (tried: {lookup.describe()})"
            )
        credentials = lookup.credentials
        return AuthError(
            f"registry {host} refused user {credentials.username!r} (from "
            f"{credentials.source}) access for {token.scope}"
        )

    def _lookup(self) -> CredentialLookup:
        state = self._state
        if state.lookup is None:
            state.lookup = self._source.lookup(self._endpoint.host)
        return state.lookup


def _private_link(endpoint: RegistryEndpoint) -> bool:
    """HTTPS, or plain HTTP that never leaves this machine."""
    if endpoint.scheme == "https":
        return True
    hostname = urlsplit(f"//{endpoint.host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def system_trust_store() -> bool | str:
    """``verify=`` meaning the operating system's CAs (True, i.e. certifi, if none)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return True
