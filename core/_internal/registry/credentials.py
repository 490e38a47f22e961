"""Where registry credentials come from: flags, then environment, then the docker config.

Caveats first:

* Lookup is lazy and per registry host: nothing is read (and no credential helper
  runs) until a registry actually asks for authentication.
* ``DOCKER_CONFIG`` names the *directory* holding ``config.json`` and replaces
  ``~/.docker`` (as the docker CLI does). oras-py ignores it and always merges
  ``~/.docker/config.json``, so the file is read here instead of with
  ``oras.auth.utils.load_configs``.
* oras-py also flattens helper answers into ``user:secret`` and drops
  ``identitytoken``; here a helper's ``<token>`` user name and a config entry's
  ``identitytoken`` become :attr:`Credentials.identity_token`, an OAuth refresh token
  that only a bearer token service can use.
* Within the docker config, ``credHelpers`` for the host wins over ``credsStore``,
  which wins over inline ``auths``; inline entries are still used when a store has
  nothing (docker itself would stop at the store).
* Secrets never appear in ``repr`` or in any message; user names and sources do, so
  an error can say what was tried.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oras.auth.utils
import oras.utils

from dockercomms.core.errors import AuthError, ConfigError

log = logging.getLogger(__name__)

USER_ENV = "DOCKERCOMMS_REGISTRY_USER"
PASSWORD_ENV = "DOCKERCOMMS_REGISTRY_PASSWORD"
DOCKER_CONFIG_ENV = "DOCKER_CONFIG"
#: What credential helpers answer as the user name when the secret is a refresh token.
IDENTITY_TOKEN_USER = "<token>"
#: A helper that has not answered by then is treated as broken, not waited on forever.
HELPER_TIMEOUT = 30.0
#: Docker Hub's credentials live under this legacy key in every docker config.
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    """A user's secret for one registry.

    Attributes:
        username: account name (``<token>`` when only an identity token is known).
        password: the password, or empty when ``identity_token`` is set.
        identity_token: OAuth refresh token for the token service's
            ``grant_type=refresh_token``; useless against basic-auth registries.
        source: where these came from, for error messages (never the secret).
    """

    username: str
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = ""

    @property
    def has_password(self) -> bool:
        """Whether a user name and password can be presented (basic auth)."""
        return bool(self.username) and self.identity_token is None

    def basic_header(self) -> str:
        """The ``Authorization`` value for basic auth."""
        encoded: str = oras.auth.utils.get_basic_auth(self.username, self.password)
        return f"Basic {encoded}"


@dataclass(frozen=True)
class CredentialLookup:
    """The outcome of looking for credentials for one host.

    Attributes:
        credentials: what was found, or None (anonymous).
        tried: each place looked at, in order, with what was found there.
    """

    credentials: Credentials | None
    tried: tuple[str, ...]

    def describe(self) -> str:
        """Human summary of what was tried, for error messages."""
        return "; ".join(self.tried)


@dataclass(frozen=True)
class CredentialSource:
    """Finds credentials for a registry host, by the documented precedence.

    Attributes:
        explicit: credentials from ``--username`` / ``--password-stdin``.
        environ: environment to read (``os.environ`` at lookup time when None).
        helper_timeout: seconds a ``docker-credential-*`` helper may take.
    """

    explicit: Credentials | None = None
    environ: Mapping[str, str] | None = None
    helper_timeout: float = HELPER_TIMEOUT

    def lookup(self, host: str) -> CredentialLookup:
        """Credentials for ``host`` (``host[:port]``) and the list of places tried."""
        tried: list[str] = []
        if self.explicit is not None:
            tried.append(f"{self.explicit.source} (user {self.explicit.username!r})")
            return CredentialLookup(self.explicit, tuple(tried))
        tried.append("--username/--password-stdin (not given)")
        env = os.environ if self.environ is None else self.environ
        from_env = _from_environment(env)
        if from_env is not None:
            tried.append(f"{from_env.source} (user {from_env.username!r})")
            return CredentialLookup(from_env, tuple(tried))
        tried.append(f"{USER_ENV}/{PASSWORD_ENV} (not set)")
        found = _from_docker_config(docker_config_path(env), host, tried, self.helper_timeout)
        return CredentialLookup(found, tuple(tried))


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if environ is None else environ
    directory = env.get(DOCKER_CONFIG_ENV)
    if directory:
        return Path(directory).expanduser() / "config.json"
    return Path.home() / ".docker" / "config.json"


def _from_environment(env: Mapping[str, str]) -> Credentials | None:
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user is None and password is None:
        return None
    if not user or password is None:
        missing = USER_ENV if not user else PASSWORD_ENV
        raise ConfigError(f"{missing} must be set together with the other one")
    return Credentials(user, password, source=f"{USER_ENV}/{PASSWORD_ENV}")


def _config_keys(host: str) -> Iterator[str]:
    """Host spellings a docker config may use for ``host`` (localhost aliases too)."""
    yield from oras.utils.iter_localhosts(host)
    if host in _DOCKER_HUB_HOSTS:
        yield _DOCKER_HUB_KEY


def _normalise_key(key: str) -> str:
    """``https://host:port/v2/`` -> ``host:port``, as the docker CLI compares them."""
    if key == _DOCKER_HUB_KEY:
        return key
    rest = key.split("://", 1)[1] if "://" in key else key
    return rest.split("/", 1)[0]


def _find(table: Mapping[str, Any], host: str) -> tuple[str, Any] | None:
    """The entry of ``table`` whose key names ``host``, with the key as written."""
    normalised = {_normalise_key(k): (k, v) for k, v in table.items()}
    for key in _config_keys(host):
        if key in normalised:
            return normalised[key]
    return None


def _from_docker_config(
    path: Path, host: str, tried: list[str], helper_timeout: float
) -> Credentials | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        tried.append(f"docker config {path} (not found)")
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read docker config {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"docker config {path} is not a JSON object")
    helpers = doc.get("credHelpers") or {}
    auths = doc.get("auths") or {}
    if not isinstance(helpers, dict) or not isinstance(auths, dict):
        raise ConfigError(f"docker config {path}: credHelpers and auths must be objects")
    helper = _find(helpers, host)
    if helper is not None and isinstance(helper[1], str):
        found = _run_helper(helper[1], helper[0], helper_timeout, tried)
        if found is not None:
            return found
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        found = _run_helper(store, _store_key(auths, host), helper_timeout, tried)
        if found is not None:
            return found
    entry = _find(auths, host)
    if entry is None or not isinstance(entry[1], dict):
        tried.append(f"docker config {path} (no auths entry for {host})")
        return None
    found = _from_auths_entry(entry[1], f"docker config {path} (auths {entry[0]!r})")
    if found is None:
        tried.append(f"docker config {path} (auths entry for {host} holds no credentials)")
        return None
    tried.append(f"{found.source} (user {found.username!r})")
    return found


def _store_key(auths: Mapping[str, Any], host: str) -> str:
    """The server URL to ask a credential store for: as ``docker login`` stored it."""
    entry = _find(auths, host)
    return entry[0] if entry is not None else host


def _from_auths_entry(entry: Mapping[str, Any], source: str) -> Credentials | None:
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: 'auth' is not base64 of user:password") from exc
        username, _, password = decoded.partition(":")
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(username or IDENTITY_TOKEN_USER, "", token, source)
    if isinstance(username, str) and username and isinstance(password, str) and password:
        return Credentials(username, password, source=source)
    return None


def _run_helper(name: str, server: str, timeout: float, tried: list[str]) -> Credentials | None:
    """Ask ``docker-credential-<name> get`` for ``server``; None when it has nothing."""
    binary = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [binary, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        tried.append(f"{binary} (not on PATH)")
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"credential helper {binary} failed for {server}: {exc}") from exc
    if proc.returncode != 0:
        said = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
        if "credentials not found" in said.lower():
            tried.append(f"{binary} (no credentials for {server})")
            return None
        raise AuthError(
            f"credential helper {binary} failed for {server} (exit {proc.returncode}): "
            f"{said.splitlines()[0][:200] if said else 'no output'}"
        )
    try:
        answer = json.loads(proc.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError(f"credential helper {binary} answered without Username/Secret") from exc
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        raise AuthError(f"credential helper {binary} answered without Username/Secret")
    source = f"{binary} ({server})"
    tried.append(f"{source} (user {username!r})")
    if username == IDENTITY_TOKEN_USER:
        return Credentials(username, "", secret, source)
    return Credentials(username, secret, source=source)
