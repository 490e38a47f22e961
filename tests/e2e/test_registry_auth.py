"""Registry auth and TLS through the CLI, against a real distribution server.

Each auth test puts a fault proxy (with no faults armed) between the CLI and the
registry, only to see every request: basic credentials and bearer tokens must go out
before any body does, so no PATCH or PUT is ever answered 401.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from dockercomms.core._internal.registry.bearer import parse_challenges, usable_lifetime
from dockercomms.core._internal.registry.credentials import (
    PASSWORD_ENV,
    USER_ENV,
    Credentials,
    CredentialSource,
)
from dockercomms.core.errors import ConfigError
from tests.conftest import CliResult, Party, introduce, make_party
from tests.servers.fault_proxy import FaultProxy, SeenRequest
from tests.servers.registry_server import RegistryServer, running_registry
from tests.servers.token_server import TokenServer, _TokenHandler

PULL = frozenset({"pull"})
PULL_PUSH = frozenset({"pull", "push"})
CHUNK = 64 * 1024
REFRESH_TOKEN = "refresh-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own credentials and CA settings out of every test."""
    for name in (USER_ENV, PASSWORD_ENV, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-docker-config"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("htpasswd"), auth="htpasswd") as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with (
        TokenServer() as tokens,
        running_registry(
            tmp_path_factory.mktemp("token"), auth="token", token_server=tokens
        ) as server,
    ):
        yield server


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("tls"), tls=True) as server:
        yield server


def _proxy(server: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.host) as proxy:
        yield proxy
    assert proxy.errors == []


@pytest.fixture
def basic_proxy(basic_registry: RegistryServer) -> Iterator[FaultProxy]:
    yield from _proxy(basic_registry)


@pytest.fixture
def token_proxy(token_registry: RegistryServer) -> Iterator[FaultProxy]:
    assert token_registry.token_server is not None
    token_registry.token_server.clear()
    yield from _proxy(token_registry)


def _pair(tmp_path: Path, repo_base: str) -> tuple[Party, Party, str]:
    name = f"tests/{uuid.uuid4().hex[:12]}"
    alice = make_party(tmp_path, "alice@example.com", f"{repo_base}/{name}")
    bob = make_party(tmp_path, "bob", f"{repo_base}/{name}")
    introduce(alice, bob)
    return alice, bob, name


def _file(tmp_path: Path, size: int = 3 * CHUNK + 100) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(size))
    return path


def _send(alice: Party, path: Path, *extra: str) -> CliResult:
    return alice.cli("send", str(path), "--recipient", "bob", "--chunk-bytes", str(CHUNK), *extra)


def _recv(bob: Party, out: Path, *extra: str) -> list[dict[str, object]]:
    outcomes: list[dict[str, object]] = json.loads(
        bob.ok("recv", "--out", str(out), "--json", *extra)
    )
    return outcomes


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def _env_credentials(server: RegistryServer, password: str | None = None) -> dict[str, str]:
    assert server.username is not None and server.password is not None
    return {USER_ENV: server.username, PASSWORD_ENV: password or server.password}


def _assert_authenticated_before_bodies(seen: list[SeenRequest]) -> None:
    """Only the session's first request is challenged; no body ever meets a 401."""
    assert seen, "no request reached the registry"
    challenged = [s for s in seen if s.status == 401]
    assert challenged == [seen[0]], challenged
    assert seen[0].method in ("GET", "HEAD")
    bodies = [s for s in seen if s.method in ("PATCH", "PUT")]
    assert bodies and all(s.status in (201, 202) for s in bodies), bodies


def _assert_received(outcomes: list[dict[str, object]], source: Path) -> None:
    assert [o["status"] for o in outcomes] == ["received"], outcomes
    assert Path(str(outcomes[0]["path"])).read_bytes() == source.read_bytes()


# -- basic auth -----------------------------------------------------------------------


def test_basic_auth_flags_and_env_are_sent_preemptively(
    basic_registry: RegistryServer,
    basic_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob, _ = _pair(tmp_path, basic_proxy.host)
    basic_proxy.clear()  # init's attempt to publish each card, without credentials
    source = _file(tmp_path)
    assert basic_registry.username is not None and basic_registry.password is not None

    _stdin(monkeypatch, basic_registry.password + "\n")
    sent = _send(alice, source, "--username", basic_registry.username, "--password-stdin")
    assert sent.code == 0, sent.err
    _assert_authenticated_before_bodies(basic_proxy.requests_seen)
    # One chunk per PATCH: nothing was sent twice.
    assert sum(s.method == "PATCH" for s in basic_proxy.requests_seen) == 4

    basic_proxy.clear()
    bob.extra_env.update(_env_credentials(basic_registry))
    _assert_received(_recv(bob, tmp_path / "out"), source)
    _assert_authenticated_before_bodies(basic_proxy.requests_seen)


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_wrong_password_exits_3_naming_registry_and_source(
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: RegistryServer = request.getfixturevalue(f"{mode}_registry")
    alice, _, _ = _pair(tmp_path, server.host)
    secret = "not-the-password-" + uuid.uuid4().hex
    alice.extra_env.update(_env_credentials(server, secret))
    result = _send(alice, _file(tmp_path))
    assert result.code == 3, result.err
    assert server.host in result.err
    assert "'tester'" in result.err and USER_ENV in result.err
    assert "rejected" in result.err
    assert secret not in result.err + result.out

    # The same through --password-stdin: the message names the flag as the source.
    _stdin(monkeypatch, secret)
    result = _send(alice, _file(tmp_path), "--username", "tester", "--password-stdin")
    assert result.code == 3 and "--password-stdin" in result.err
    assert secret not in result.err + result.out


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_no_credentials_exits_3_listing_what_was_tried(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: RegistryServer = request.getfixturevalue(f"{mode}_registry")
    alice, _, _ = _pair(tmp_path, server.host)
    result = _send(alice, _file(tmp_path))
    assert result.code == 3, result.err
    assert server.host in result.err
    assert "no credentials found" in result.err or "none found" in result.err
    assert USER_ENV in result.err
    assert str(tmp_path / "empty-docker-config" / "config.json") in result.err


# -- bearer tokens ------------------------------------------------------------------------


def test_token_auth_requests_scopes_per_command(
    token_registry: RegistryServer, token_proxy: FaultProxy, tmp_path: Path
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    alice, bob, name = _pair(tmp_path, token_proxy.host)
    tokens.clear()  # init's attempt to publish each card, without credentials
    token_proxy.clear()
    source = _file(tmp_path)

    alice.extra_env.update(_env_credentials(token_registry))
    sent = _send(alice, source)
    assert sent.code == 0, sent.err
    # Each scope's token is fetched once and then reused for every request needing it.
    assert sorted(tokens.requested_actions(name), key=len) == [PULL, PULL_PUSH]
    assert all(r.user == "tester" and r.status == 200 for r in tokens.requests)
    _assert_authenticated_before_bodies(token_proxy.requests_seen)

    # recv without receipts needs nothing but pull.
    tokens.clear()
    token_proxy.clear()
    bob.extra_env.update(_env_credentials(token_registry))
    _assert_received(_recv(bob, tmp_path / "out", "--no-write-receipt"), source)
    assert tokens.requested_actions(name) == [PULL]
    seen = token_proxy.requests_seen
    assert [s for s in seen if s.status == 401] == [seen[0]]


def _allow_refresh_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teach the test token server the OAuth2 refresh_token grant for REFRESH_TOKEN."""
    password_grant = _TokenHandler.do_POST

    def do_post(handler: _TokenHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        form = parse_qs(body.decode(), keep_blank_values=True)
        if form.get("grant_type") != ["refresh_token"]:
            handler.rfile = io.BufferedReader(io.BytesIO(body))  # type: ignore[assignment]
            password_grant(handler)
            return
        owner = handler.server.owner
        valid = form.get("refresh_token") == [REFRESH_TOKEN] and form.get("client_id")
        password = owner.password if valid else "refused"
        handler._issue("POST", form, owner.username, password)

    monkeypatch.setattr(_TokenHandler, "do_POST", do_post)


def _write_helper(directory: Path, answers: dict[str, str]) -> Path:
    """A ``docker-credential-test`` that logs the server it is asked about."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "helper.log"
    script = directory / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read -r server\n"
        f'printf "%s\\n" "$server" >> "{log}"\n'
        f"printf '%s\\n' '{json.dumps(answers)}'\n"
    )
    script.chmod(0o755)
    return log


def _docker_config(directory: Path, doc: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


def test_credential_helpers_and_identity_tokens(
    token_registry: RegistryServer,
    token_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = token_registry.token_server
    assert tokens is not None and token_registry.password is not None
    _allow_refresh_grant(monkeypatch)
    alice, bob, name = _pair(tmp_path, token_proxy.host)
    host = token_proxy.host
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"

    # alice: credHelpers names the helper for this host; it returns a password.
    log = _write_helper(tmp_path / "bin", {"Username": "tester", "Secret": token_registry.password})
    config = _docker_config(tmp_path / "alice-docker", {"credHelpers": {host: "test"}})
    alice.extra_env.update({"DOCKER_CONFIG": str(config), "PATH": path})
    source = _file(tmp_path)
    sent = _send(alice, source)
    assert sent.code == 0, sent.err
    assert log.read_text().split() == [host]
    assert {r.method for r in tokens.requests} == {"GET"}

    # bob: credsStore answers "<token>": an identity token, used with the refresh grant.
    tokens.clear()
    bin_bob = tmp_path / "bin-bob"
    log = _write_helper(bin_bob, {"Username": "<token>", "Secret": REFRESH_TOKEN})
    config = _docker_config(
        tmp_path / "bob-docker", {"credsStore": "test", "auths": {f"http://{host}/v2/": {}}}
    )
    bob.extra_env.update({"DOCKER_CONFIG": str(config), "PATH": f"{bin_bob}:{os.environ['PATH']}"})
    _assert_received(_recv(bob, tmp_path / "out", "--no-write-receipt"), source)
    assert log.read_text().split() == [f"http://{host}/v2/"]
    assert [(r.method, r.user, r.status) for r in tokens.requests] == [("POST", "tester", 200)]
    assert tokens.requested_actions(name) == [PULL]

    # An identitytoken in the auths of the docker config works the same way.
    tokens.clear()
    config = _docker_config(
        tmp_path / "bob-docker-2", {"auths": {host: {"identitytoken": REFRESH_TOKEN}}}
    )
    bob.extra_env.update({"DOCKER_CONFIG": str(config)})
    assert bob.ok("ls").strip() != ""
    assert [(r.method, r.status) for r in tokens.requests] == [("POST", 200)]


def test_docker_config_dir_is_honoured(
    basic_registry: RegistryServer,
    basic_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert basic_registry.username is not None and basic_registry.password is not None
    host = basic_proxy.host
    alice, bob, _ = _pair(tmp_path, host)
    basic_proxy.clear()  # init's attempt to publish each card, without credentials
    # A decoy ~/.docker/config.json with a wrong password: DOCKER_CONFIG must win.
    home = tmp_path / "home"
    decoy = base64.b64encode(b"tester:wrong-password").decode()
    _docker_config(home / ".docker", {"auths": {host: {"auth": decoy}}})
    monkeypatch.setenv("HOME", str(home))
    good = base64.b64encode(f"tester:{basic_registry.password}".encode()).decode()
    config = _docker_config(tmp_path / "docker", {"auths": {f"http://{host}": {"auth": good}}})
    alice.extra_env["DOCKER_CONFIG"] = str(config)
    source = _file(tmp_path)
    sent = _send(alice, source)
    assert sent.code == 0, sent.err
    _assert_authenticated_before_bodies(basic_proxy.requests_seen)

    # Without DOCKER_CONFIG, ~/.docker/config.json is read: its wrong password -> exit 3.
    monkeypatch.delenv("DOCKER_CONFIG")
    result = bob.cli("recv", "--out", str(tmp_path / "out"))
    assert result.code == 3, result.err
    assert str(home / ".docker" / "config.json") in result.err
    assert "wrong-password" not in result.err

    # username/password fields (not "auth") are read too.
    fields = {"username": "tester", "password": basic_registry.password}
    bob.extra_env["DOCKER_CONFIG"] = str(
        _docker_config(tmp_path / "docker-2", {"auths": {host: fields}})
    )
    _assert_received(_recv(bob, tmp_path / "out"), source)


def test_credential_precedence_flags_then_env_then_docker_config(tmp_path: Path) -> None:
    host = "registry.example:5000"
    auth = base64.b64encode(b"from-config:secret:with:colons").decode()
    _docker_config(tmp_path, {"auths": {f"https://{host}/v1/": {"auth": auth}}})
    env = {"DOCKER_CONFIG": str(tmp_path), USER_ENV: "from-env", PASSWORD_ENV: "pw"}
    flags = Credentials("from-flags", "pw", source="--username/--password-stdin")

    found = CredentialSource(flags, env).lookup(host)
    assert found.credentials == flags
    found = CredentialSource(None, env).lookup(host)
    assert found.credentials is not None and found.credentials.username == "from-env"
    del env[USER_ENV], env[PASSWORD_ENV]
    found = CredentialSource(None, env).lookup(host)
    assert found.credentials is not None
    assert (found.credentials.username, found.credentials.password) == (
        "from-config",
        "secret:with:colons",
    )
    assert "secret" not in repr(found) and "secret" not in found.describe()
    # localhost and 127.0.0.1 name the same registry.
    _docker_config(tmp_path, {"auths": {"localhost:5000": {"auth": auth}}})
    assert CredentialSource(None, env).lookup("127.0.0.1:5000").credentials is not None
    assert CredentialSource(None, env).lookup("127.0.0.1:5001").credentials is None

    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        CredentialSource(None, {USER_ENV: "half"}).lookup(host)


def test_challenge_parsing() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a/b:pull,push",error="insufficient_scope", '
        'Basic realm="say \\"hi\\""'
    )
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer" and bearer.realm == "https://auth.example/token"
    assert bearer.params["scope"] == "repository:a/b:pull,push"
    assert bearer.service == "reg" and bearer.error == "insufficient_scope"
    assert basic.scheme == "basic" and basic.realm == 'say "hi"'
    assert parse_challenges("") == []
    # Lifetimes: 60 s when absent or shorter, and a margin held back.
    assert usable_lifetime(0) == usable_lifetime(60) == 45
    assert usable_lifetime(300) == 270


# -- TLS --------------------------------------------------------------------------------


def test_tls_with_ca_file_and_a_clear_error_without(
    tls_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_registry.ca_file is not None
    ca = str(tls_registry.ca_file)
    alice, bob, _ = _pair(tmp_path, f"https://{tls_registry.host}")
    source = _file(tmp_path)

    result = _send(alice, source)
    assert result.code == 1, result.err
    assert "certificate" in result.err and "TLS" in result.err

    sent = _send(alice, source, "--ca-file", ca)
    assert sent.code == 0, sent.err
    _assert_received(_recv(bob, tmp_path / "out", "--ca-file", ca), source)

    # The default trust store is the system's: SSL_CERT_FILE replaces it for OpenSSL.
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    assert json.loads(bob.ok("ls", "--json"))[0]["verified"] is True

    missing = bob.cli("ls", "--ca-file", str(tmp_path / "nope.pem"))
    assert missing.code == 1 and "--ca-file" in missing.err
