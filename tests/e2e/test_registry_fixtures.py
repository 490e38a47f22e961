"""Smoke tests for the registry test fixtures, using plain ``requests``.

They pin down what the fixtures promise: each auth mode serves ``/v2/``, the token
server is scope-strict, TLS needs the test CA, each proxy fault is observable, and the
registry process is gone after the context exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import registry_server
from tests.servers.fault_proxy import FaultProxy, SeenRequest
from tests.servers.registry_server import RegistryServer, running_registry
from tests.servers.token_server import TokenServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT = 10


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _challenge(resp: requests.Response) -> dict[str, str]:
    scheme, _, params = resp.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Bearer", resp.headers["WWW-Authenticate"]
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def _token(
    session: requests.Session,
    challenge: dict[str, str],
    scope: str,
    auth: tuple[str, str] | None,
) -> str:
    params = {"service": challenge["service"], "scope": scope}
    with session.get(challenge["realm"], params=params, auth=auth, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["token"]
        assert resp.json()["access_token"] == token
        assert resp.json()["expires_in"] == 300
        return token


def _upload(
    session: requests.Session,
    base: str,
    repo: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    verify: str | bool = True,
) -> str:
    """Monolithic POST + PUT upload; return the digest."""
    digest = _digest(data)
    with session.post(
        f"{base}/v2/{repo}/blobs/uploads/", headers=headers, verify=verify, timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 202, resp.text
        location = resp.headers["Location"]
    with session.put(
        location,
        params={"digest": digest},
        data=data,
        headers={**(headers or {}), "Content-Type": "application/octet-stream"},
        verify=verify,
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status_code == 201, resp.text
        assert resp.headers["Docker-Content-Digest"] == digest
    return digest


def _manifest(config: bytes, layer: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


# -- registry modes ----------------------------------------------------------------------


def test_no_auth_serves_v2_and_stops(tmp_path: Path) -> None:
    with running_registry(tmp_path) as registry, requests.Session() as session:
        assert registry.url == f"http://{registry.host}"
        assert registry.ca_file is None and registry.auth is None
        with session.get(f"{registry.url}/v2/", timeout=TIMEOUT) as resp:
            assert resp.status_code == 200
            assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        digest = _upload(session, registry.url, "smoke/plain", b"persisted")
        pid = registry.pid
        assert registry.is_running()
    _assert_gone(pid)
    assert not registry.is_running()

    # Same workdir -> same storage, on a fresh port.
    with running_registry(tmp_path) as again, requests.Session() as session:
        url = f"{again.url}/v2/smoke/plain/blobs/{digest}"
        with session.get(url, timeout=TIMEOUT) as resp:
            assert resp.status_code == 200
            assert resp.content == b"persisted"
        again.stop()
        again.stop()  # idempotent
        _assert_gone(again.pid)


def test_start_failure_reports_registry_log(tmp_path: Path) -> None:
    overrides = {"http": {"tls": {"certificate": "/nonexistent.pem", "key": "/nonexistent.key"}}}
    with (
        pytest.raises(RuntimeError, match=r"(?s)registry did not start.*nonexistent"),
        running_registry(tmp_path, config_overrides=overrides),
    ):
        pass


def test_port_in_use_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_free_port = registry_server._free_port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken: int = blocker.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(
            registry_server, "_free_port", lambda: next(ports, 0) or real_free_port()
        )
        with running_registry(tmp_path) as registry:
            assert registry.host != f"127.0.0.1:{taken}"
    assert "address already in use" in registry.log_path.read_text()


def test_htpasswd_auth(tmp_path: Path) -> None:
    with running_registry(tmp_path, auth="htpasswd") as registry, requests.Session() as session:
        assert registry.username == "tester" and registry.password
        url = f"{registry.url}/v2/"
        with session.get(url, timeout=TIMEOUT) as resp:
            assert resp.status_code == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")
        with session.get(url, auth=("tester", "wrong"), timeout=TIMEOUT) as resp:
            assert resp.status_code == 401
        with session.get(url, auth=registry.auth, timeout=TIMEOUT) as resp:
            assert resp.status_code == 200
    _assert_gone(registry.pid)


def test_tls_needs_the_test_ca(tmp_path: Path) -> None:
    with running_registry(tmp_path, tls=True) as registry, requests.Session() as session:
        assert registry.url.startswith("https://127.0.0.1:")
        assert registry.ca_file is not None and registry.ca_file.is_file()
        with session.get(f"{registry.url}/v2/", verify=registry.verify, timeout=TIMEOUT) as resp:
            assert resp.status_code == 200
        port = registry.host.rpartition(":")[2]
        localhost = f"https://localhost:{port}/v2/"
        with session.get(localhost, verify=str(registry.ca_file), timeout=TIMEOUT) as resp:
            assert resp.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"{registry.url}/v2/", timeout=TIMEOUT)
    _assert_gone(registry.pid)


def test_token_auth_push_and_scope_strictness(tmp_path: Path) -> None:
    repo = "smoke/app"
    with (
        TokenServer() as tokens,
        running_registry(tmp_path, auth="token", token_server=tokens) as registry,
        requests.Session() as session,
    ):
        assert registry.token_server is tokens
        assert registry.auth == (tokens.username, tokens.password)
        base = registry.url

        # 1. The upload POST is challenged for pull+push on the repository.
        with session.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT) as resp:
            assert resp.status_code == 401
            challenge = _challenge(resp)
        assert challenge["realm"] == tokens.realm
        assert challenge["service"] == tokens.service
        # The action order in the challenge varies from request to request (Go map order).
        assert challenge["scope"] in (
            f"repository:{repo}:pull,push",
            f"repository:{repo}:push,pull",
        )

        # 2. With credentials the token grants exactly that; push blobs and a manifest.
        token = _token(session, challenge, challenge["scope"], registry.auth)
        bearer = {"Authorization": f"Bearer {token}"}
        config, layer = b"{}", b"hello layer"
        _upload(session, base, repo, config, bearer)
        _upload(session, base, repo, layer, bearer)
        manifest = _manifest(config, layer)
        with session.put(
            f"{base}/v2/{repo}/manifests/v1",
            data=manifest,
            headers={**bearer, "Content-Type": OCI_MANIFEST},
            timeout=TIMEOUT,
        ) as resp:
            assert resp.status_code == 201, resp.text
            assert resp.headers["Docker-Content-Digest"] == _digest(manifest)
        assert tokens.requested_actions(repo) == [{"pull", "push"}]
        assert tokens.requested_scopes == [challenge["scope"]]
        (granted,) = tokens.requests[-1].granted
        assert granted["name"] == repo
        assert isinstance(granted["actions"], list) and set(granted["actions"]) == {"pull", "push"}

        # 3. Scope-strict: a pull-only token cannot start an upload, nor pull elsewhere.
        pull_token = _token(session, challenge, f"repository:{repo}:pull", registry.auth)
        pull = {"Authorization": f"Bearer {pull_token}"}
        with session.post(f"{base}/v2/{repo}/blobs/uploads/", headers=pull, timeout=TIMEOUT) as r:
            assert r.status_code == 401
            assert _challenge(r).get("error") == "insufficient_scope"
        # distribution 2.8 answers 404 for an OCI manifest unless the client accepts it.
        with session.get(f"{base}/v2/{repo}/manifests/v1", headers=pull, timeout=TIMEOUT) as r:
            assert r.status_code == 404
            assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        pull["Accept"] = OCI_MANIFEST
        with session.get(f"{base}/v2/{repo}/manifests/v1", headers=pull, timeout=TIMEOUT) as r:
            assert r.status_code == 200 and r.content == manifest
        with session.get(f"{base}/v2/other/manifests/v1", headers=pull, timeout=TIMEOUT) as r:
            assert r.status_code == 401

        # 4. Wrong credentials: 401 from the token server itself.
        params = {"service": tokens.service, "scope": f"repository:{repo}:pull"}
        with session.get(
            tokens.realm, params=params, auth=("tester", "wrong"), timeout=TIMEOUT
        ) as resp:
            assert resp.status_code == 401
        assert tokens.requests[-1].status == 401

        # 5. Anonymous: nothing unless anonymous_pull, then pull only.
        anon = _token(session, challenge, f"repository:{repo}:pull,push", None)
        with session.get(
            f"{base}/v2/{repo}/manifests/v1",
            headers={"Authorization": f"Bearer {anon}", "Accept": OCI_MANIFEST},
            timeout=TIMEOUT,
        ) as resp:
            assert resp.status_code == 401
        tokens.anonymous_pull = True
        anon = _token(session, challenge, f"repository:{repo}:pull,push", None)
        assert tokens.requests[-1].granted == (
            {"type": "repository", "name": repo, "actions": ["pull"]},
        )
        with session.get(
            f"{base}/v2/{repo}/manifests/v1",
            headers={"Authorization": f"Bearer {anon}", "Accept": OCI_MANIFEST},
            timeout=TIMEOUT,
        ) as resp:
            assert resp.status_code == 200

        # 6. The libtrust ``kid`` header works too; expired tokens (past the 60 s leeway)
        # and tokens for another audience do not.
        tokens.use_kid = True
        kid_token = _token(session, challenge, f"repository:{repo}:pull", registry.auth)
        access: list[dict[str, object]] = [
            {"type": "repository", "name": repo, "actions": ["pull"]}
        ]
        forged = {
            "kid": kid_token,
            "expired": tokens.make_token("tester", list(access), ttl=-120),
            "foreign": tokens.make_token("tester", list(access), audience="elsewhere"),
        }
        expected = {"kid": 200, "expired": 401, "foreign": 401}
        for name, value in forged.items():
            with session.get(
                f"{base}/v2/{repo}/manifests/v1",
                headers={"Authorization": f"Bearer {value}", "Accept": OCI_MANIFEST},
                timeout=TIMEOUT,
            ) as resp:
                assert resp.status_code == expected[name], name
    _assert_gone(registry.pid)


def test_token_mode_starts_its_own_token_server(tmp_path: Path) -> None:
    with running_registry(tmp_path, auth="token") as registry, requests.Session() as session:
        assert registry.token_server is not None
        with session.get(f"{registry.url}/v2/", timeout=TIMEOUT) as resp:
            assert resp.status_code == 401
            challenge = _challenge(resp)
        token = _token(session, challenge, "registry:catalog:*", registry.auth)
        with session.get(
            f"{registry.url}/v2/_catalog",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        ) as resp:
            assert resp.status_code == 200
            assert resp.json() == {"repositories": []}
        assert registry.token_server.requested_scopes == ["registry:catalog:*"]
    _assert_gone(registry.pid)


# -- fault proxy -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with running_registry(tmp_path_factory.mktemp("proxied")) as server:
        yield server


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as fault_proxy:
        yield fault_proxy
    assert fault_proxy.errors == []


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http_session:
        yield http_session


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_proxy_streams_chunked_upload_and_keeps_locations(
    proxy: FaultProxy, registry: RegistryServer, session: requests.Session
) -> None:
    repo = "proxy/stream"
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = _digest(data)
    with session.post(f"{proxy.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT) as resp:
        assert resp.status_code == 202
        location = resp.headers["Location"]
    # distribution builds Location from the forwarded Host header: it already names the proxy.
    assert location.startswith(f"{proxy.url}/v2/{repo}/blobs/uploads/")
    assert proxy.location_rewrites == 0
    # A client that sends the upstream's Host gets an upstream Location; the proxy fixes it.
    with session.post(
        f"{proxy.url}/v2/{repo}/blobs/uploads/", headers={"Host": registry.host}, timeout=TIMEOUT
    ) as resp:
        assert resp.headers["Location"].startswith(f"{proxy.url}/v2/{repo}/blobs/uploads/")
    assert proxy.location_rewrites == 1

    # A generator body makes requests send Transfer-Encoding: chunked.
    with session.patch(location, data=_pieces(data, 100_000), timeout=TIMEOUT) as resp:
        assert resp.status_code == 202, resp.text
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
        location = resp.headers["Location"]
    with session.put(location, params={"digest": digest}, timeout=TIMEOUT) as resp:
        assert resp.status_code == 201, resp.text

    blob_url = f"{proxy.url}/v2/{repo}/blobs/{digest}"
    with session.head(blob_url, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(len(data))
    with session.get(blob_url, stream=True, timeout=TIMEOUT) as resp:
        received = b"".join(resp.iter_content(1 << 20))
    assert received == data

    # A chunked monolithic PUT works too.
    other = os.urandom(300_000)
    with session.post(f"{proxy.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT) as resp:
        location = resp.headers["Location"]
    with session.put(
        location, params={"digest": _digest(other)}, data=_pieces(other, 65_536), timeout=TIMEOUT
    ) as resp:
        assert resp.status_code == 201, resp.text
    methods = [(seen.method, seen.status) for seen in proxy.requests_seen]
    assert methods == [
        ("POST", 202),
        ("POST", 202),
        ("PATCH", 202),
        ("PUT", 201),
        ("HEAD", 200),
        ("GET", 200),
        ("POST", 202),
        ("PUT", 201),
    ]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_proxy_status_fault(proxy: FaultProxy, session: requests.Session, status: int) -> None:
    fault = proxy.fail(status, retry_after=1, method="POST", path=r"/blobs/uploads/", times=2)
    url = f"{proxy.url}/v2/proxy/status/blobs/uploads/"
    seen = []
    for _ in range(3):
        with session.post(url, data=b"ignored body", timeout=TIMEOUT) as resp:
            seen.append(resp.status_code)
            if resp.status_code == status:
                assert resp.headers["Retry-After"] == "1"
                assert resp.json()["errors"][0]["message"].startswith("injected fault")
    assert seen == [status, status, 202]
    assert fault.hits == 2 and fault.exhausted
    with session.get(f"{proxy.url}/v2/", timeout=TIMEOUT) as resp:
        assert resp.status_code == 200  # method filter: GET is not affected
    assert [s.status for s in proxy.requests_seen] == [status, status, 202, 200]


def test_proxy_drop_during_request_body(
    proxy: FaultProxy, registry: RegistryServer, session: requests.Session
) -> None:
    repo = "proxy/drop"
    data = os.urandom(1024 * 1024)
    digest = _digest(data)
    fault = proxy.drop_mid_body(64 * 1024, method="PUT", path=r"[?&]digest=")
    with session.post(f"{proxy.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT) as resp:
        location = resp.headers["Location"]
    with pytest.raises(requests.ConnectionError):
        session.put(location, params={"digest": digest}, data=data, timeout=TIMEOUT)
    assert fault.hits == 1
    assert proxy.requests_seen[-1] == SeenRequest("PUT", proxy.requests_seen[-1].path, None)
    # The registry saw a broken upload: the blob does not exist.
    with session.head(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=TIMEOUT) as resp:
        assert resp.status_code == 404


def test_proxy_drop_during_response_body(
    proxy: FaultProxy, registry: RegistryServer, session: requests.Session
) -> None:
    data = os.urandom(512 * 1024)
    digest = _upload(session, registry.url, "proxy/dropget", data)
    proxy.drop_mid_body(1000, method="GET", path=r"/blobs/sha256:")
    url = f"{proxy.url}/v2/proxy/dropget/blobs/{digest}"
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        session.get(url, timeout=TIMEOUT)
    assert proxy.requests_seen[-1].status == 200  # the status line went out, then the reset
    with session.get(url, timeout=TIMEOUT) as resp:  # times=1: next one passes
        assert resp.content == data


def test_proxy_truncate(
    proxy: FaultProxy, registry: RegistryServer, session: requests.Session
) -> None:
    data = os.urandom(256 * 1024)
    digest = _upload(session, registry.url, "proxy/truncate", data)
    proxy.truncate(4096, path=r"/blobs/sha256:")
    url = f"{proxy.url}/v2/proxy/truncate/blobs/{digest}"
    with session.get(url, stream=True, timeout=TIMEOUT) as resp:
        assert resp.headers["Content-Length"] == str(len(data))
        received = bytearray()
        with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
            for piece in resp.iter_content(1024):
                received += piece
    assert bytes(received) == data[:4096]


def test_proxy_stall(proxy: FaultProxy, session: requests.Session) -> None:
    fault = proxy.stall(5, path=r"^/v2/$")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(f"{proxy.url}/v2/", timeout=(TIMEOUT, 0.3))
    assert time.monotonic() - started < 2
    assert fault.hits == 1

    proxy.stall(0.3, path=r"^/v2/$", then="forward")
    started = time.monotonic()
    with session.get(f"{proxy.url}/v2/", timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_proxy_clear_disarms_faults(proxy: FaultProxy, session: requests.Session) -> None:
    proxy.fail(503, times=None)
    for _ in range(2):
        with session.get(f"{proxy.url}/v2/", timeout=TIMEOUT) as resp:
            assert resp.status_code == 503
            assert "Retry-After" not in resp.headers
    proxy.clear()
    assert proxy.requests_seen == []
    with session.get(f"{proxy.url}/v2/", timeout=TIMEOUT) as resp:
        assert resp.status_code == 200


def test_proxy_reports_unreachable_upstream(session: requests.Session) -> None:
    with FaultProxy("127.0.0.1:1") as dead:
        with session.get(f"{dead.url}/v2/", timeout=TIMEOUT) as resp:
            assert resp.status_code == 502
        assert dead.requests_seen == [SeenRequest("GET", "/v2/", 502)]
